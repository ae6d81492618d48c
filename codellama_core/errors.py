"""``CoreError``: a problem the user can act on, whose message is one ``expected ..., got ...`` line.

The language server's ``ServerError`` is this class (``lsp_server.errors``), so the pre-flight check's
``GGUFCheckError`` reaches the server's boundaries unchanged and the tools can catch it without importing the server.
"""


class CoreError(Exception):
    """A request, model or engine problem the user can act on; the message says what was expected and what came."""
