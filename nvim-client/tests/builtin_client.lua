-- Neovim's built-in LSP client alone (no plugin) against codellama-lsp: what any Neovim >= 0.7 user gets
-- with a plain vim.lsp.start_client(). Run by tests/test_editors_nvim.py.
--
-- In: $CODELLAMA_E2E, a JSON file {cmd, init_options, file, line (1-based, empty), typed, out}.
-- Out: a JSON report at `out`: {attached, status, completion (the first item's text), error}.
local cfg = vim.fn.json_decode(table.concat(vim.fn.readfile(os.getenv('CODELLAMA_E2E')), '\n'))
local report = {}
local ok, err = pcall(function()
  vim.cmd('edit ' .. vim.fn.fnameescape(cfg.file))
  local status
  local id = vim.lsp.start_client({
    name = 'codellama',
    cmd = cfg.cmd,
    root_dir = vim.fn.fnamemodify(cfg.file, ':h'),
    init_options = cfg.init_options,
    handlers = {
      ['codellama/status'] = function(_, params)
        status = params
      end,
    },
  })
  assert(id, 'expected vim.lsp.start_client to start ' .. cfg.cmd[1])
  report.attached = vim.lsp.buf_attach_client(0, id)
  assert(vim.wait(90000, function()
    return status ~= nil and (status.state == 'ready' or status.state == 'error')
  end, 50), 'timed out waiting for the server to be ready')
  report.status = status
  assert(status.state == 'ready', 'server status: ' .. vim.inspect(status))
  -- Type on the blank line (an ordinary buffer change: Neovim sends didChange).
  vim.api.nvim_buf_set_lines(0, cfg.line - 1, cfg.line, false, { cfg.typed })
  local params = {
    textDocument = { uri = vim.uri_from_bufnr(0) },
    position = { line = cfg.line - 1, character = #cfg.typed }, -- ASCII: bytes = UTF-16 units
  }
  local responses = vim.lsp.buf_request_sync(0, 'textDocument/completion', params, 60000)
  assert(responses and responses[id], 'expected a completion response, got none')
  assert(not responses[id].err, vim.inspect(responses[id].err))
  local result = responses[id].result or {}
  local item = (result.items or result)[1]
  report.completion = item and ((item.textEdit and item.textEdit.newText) or item.insertText or item.label) or vim.NIL
end)
report.error = not ok and tostring(err) or nil
vim.fn.writefile({ vim.fn.json_encode(report) }, cfg.out)
vim.cmd(ok and 'qall!' or 'cquit 1')
