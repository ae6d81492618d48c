"""lsp_server."""
