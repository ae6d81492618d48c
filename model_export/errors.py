"""The one exception type of model_export.

Readers, the vocabulary builder and the writer raise ``ExportError`` with a message of the form
"expected X, got Y" (plus the file it concerns); the CLIs in ``convert`` and ``verify`` print it as a single
stderr line and exit non-zero. Anything else escaping is a bug, not bad input.
"""


class ExportError(Exception):
    """Bad input or an unwritable output: the message is meant for the user as is."""
