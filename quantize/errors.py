"""The one exception type of the ``quantize`` package.

Every failure a user can cause (a file that is not a GGUF, an unknown type, an existing output, llama.cpp
refusing a tensor) is raised as :class:`QuantizeError` with a one-line message in the form "expected X,
got Y". The command-line entry points translate it into that line on stderr and a non-zero exit status;
nothing else in the package prints or exits.
"""

from __future__ import annotations


class QuantizeError(Exception):
    """A user-facing failure of quantization, imatrix computation or the quality report."""
