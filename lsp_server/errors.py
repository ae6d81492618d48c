"""The package's one exception type: ``ServerError``, whose message is one ``expected ..., got ...`` line for the user.

The stages raise its subclasses (``ModelError``, ``EngineError``, ``ContextError``, ``GGUFCheckError``) so that
callers inside the server can tell them apart; the boundaries catch ``ServerError`` alone: the LSP server turns
it into a status/showMessage and an empty reply, the command line (``lsp_server.tool.run_tool``) into
``codellama-lsp: error: ...`` and exit status 1.
"""


class ServerError(Exception):
    """A request, model or engine problem the user can act on; the message says what was expected and what came."""
