"""The package's one exception type: ``ServerError``, whose message is one ``expected ..., got ...`` line for the user.

It is the core package's ``CoreError`` under the server's name, so errors raised by the shared pieces (the GGUF
pre-flight check's ``GGUFCheckError``) are ``ServerError`` too. The stages raise its subclasses (``ModelError``,
``EngineError``, ``ContextError``) so that callers inside the server can tell them apart; the boundaries catch
``ServerError`` alone: the LSP server turns it into a status/showMessage and an empty reply, the command line
(``codellama_core.tool.run_tool``) into ``codellama-lsp: error: ...`` and exit status 1.
"""

from codellama_core.errors import CoreError

ServerError = CoreError

__all__ = ["ServerError"]
