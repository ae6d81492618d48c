-- End-to-end check of the plugin against the real codellama-lsp, run by tests/test_editors_nvim.py.
--
-- In: $CODELLAMA_E2E, a JSON file: {cmd, settings, file, line (1-based, empty in the file), typed, out,
-- ghost (force this plugin's ghost text, also on Neovim < 0.10)}. Out: a JSON report at `out` with what
-- the editor saw: the client, its status, the completion text from textDocument/completion, the ghost
-- text, and the line after accepting it with <Tab> and saving. Assertions live in the Python test.
--
-- It types as a user would: keys go through Neovim's input queue (nvim_feedkeys), so the plugin's
-- autocommands, debounce timer and <Tab> mapping run exactly as in an interactive session.
local cfg = vim.fn.json_decode(table.concat(vim.fn.readfile(os.getenv('CODELLAMA_E2E')), '\n'))
local report = { nvim = tostring(vim.version().major) .. '.' .. vim.version().minor .. '.' .. vim.version().patch, steps = {} }
local t0 = vim.loop.hrtime()

local function finish(err)
  report.error = err
  report.elapsed_ms = (vim.loop.hrtime() - t0) / 1e6
  vim.fn.writefile({ vim.fn.json_encode(report) }, cfg.out)
  vim.cmd(err and 'cquit 1' or 'qall!')
end

local function step(name)
  table.insert(report.steps, { name = name, ms = math.floor((vim.loop.hrtime() - t0) / 1e6) })
end

local co
local function wait(what, cond, timeout_ms)
  local deadline = vim.loop.hrtime() + (timeout_ms or 30000) * 1e6
  while true do
    local ok, value = pcall(cond)
    if ok and value then
      return value
    end
    if vim.loop.hrtime() > deadline then
      error(('timed out waiting for %s'):format(what), 0)
    end
    vim.defer_fn(function()
      assert(coroutine.resume(co))
    end, 50)
    coroutine.yield()
  end
end

local function feed(keys, mode)
  vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes(keys, true, false, true), mode or 'n', false)
end

co = coroutine.create(function()
  local ok, err = pcall(function()
    -- Filetype detection attaches the plugin; indent scripts would re-indent what the test types.
    vim.cmd('filetype on')
    vim.cmd('filetype indent off')
    local cl = require('codellama')
    cl.setup({ cmd = cfg.cmd, settings = cfg.settings, ghost_text = cfg.ghost, debounce_ms = 30 })
    report.mode = cl.mode()
    vim.cmd('edit ' .. vim.fn.fnameescape(cfg.file))
    local bufnr = vim.api.nvim_get_current_buf()
    local client = wait('the client to attach', function()
      local c = cl.client()
      return c and c.initialized and vim.lsp.buf_is_attached(bufnr, c.id) and c
    end)
    step('attached')
    -- the plugin takes 'omnifunc' over in a vim.schedule() callback (after the filetype plugins' own)
    local omnifunc = wait('the plugin to set omnifunc', function()
      return vim.bo[bufnr].omnifunc == 'v:lua.codellama_omnifunc' and vim.bo[bufnr].omnifunc
    end, 10000)
    report.client = { name = client.name, offset_encoding = client.offset_encoding, omnifunc = omnifunc }
    local caps = client.server_capabilities or client.resolved_capabilities
    report.client.inline_provider = caps and caps.inlineCompletionProvider ~= nil
    report.client.completion_provider = caps and (caps.completionProvider ~= nil or caps.completion == true)
    wait('the server to report ready', function()
      local s = cl.status()
      if s and s.state == 'error' then
        error('server status error: ' .. tostring(s.message), 0)
      end
      return s and s.state == 'ready'
    end, 60000)
    report.status_ready = cl.statusline()
    step('ready')
    -- the cursor rests (cursor_event_ms): the server is told where, and prefills that place
    wait('the cursor event', function()
      return cl.counts().cursor >= 1
    end, 10000)

    -- 1. textDocument/completion (the path of Neovim < 0.10): type on the blank line, ask, look; then
    --    the same through 'omnifunc' (<C-x><C-o>), which inserts the single match.
    vim.api.nvim_win_set_cursor(0, { cfg.line, 0 })
    feed('A' .. cfg.typed)
    wait('the typed text', function()
      return vim.api.nvim_get_current_line() == cfg.typed and vim.fn.mode() == 'i'
    end)
    local got = nil
    local done = false
    cl.request_completion(bufnr, function(text, e)
      got, done = text, true
      report.completion_error = e
    end)
    wait('the completion answer', function()
      return done
    end, 30000)
    report.completion = got
    step('completion')
    cl.dismiss()
    feed('<C-x><C-o>')
    report.omnifunc_line = wait('omnifunc to insert the completion', function()
      local line = vim.api.nvim_get_current_line()
      return line ~= cfg.typed and line
    end, 30000)
    feed('<C-y><Esc>')
    wait('normal mode', function()
      return vim.fn.mode() == 'n'
    end)
    step('omnifunc')

    -- 2. Ghost text: re-type the line in insert mode, wait for the suggestion, accept it with <Tab>, save.
    if cfg.ghost ~= false then
      feed('0D') -- clear the line again
      wait('the line to be empty', function()
        return vim.api.nvim_get_current_line() == '' and vim.fn.mode() == 'n'
      end)
      feed('A' .. cfg.typed)
      local s = wait('ghost text', function()
        return cl.current()
      end, 30000)
      report.ghost = s.ghost
      local marks = vim.api.nvim_buf_get_extmarks(bufnr, vim.api.nvim_create_namespace('codellama'), 0, -1, { details = true })
      report.extmarks = #marks
      report.virt_text_pos = marks[1] and marks[1][4].virt_text_pos
      step('ghost shown')
      feed('<Tab>', 'm') -- through the plugin's mapping
      -- (the accepted text changes the buffer, so a new suggestion may follow at once)
      wait('the suggestion to be accepted', function()
        return cl.counts().accepted == 1 and vim.api.nvim_get_current_line() ~= cfg.typed
      end, 10000)
      report.line_after_accept = vim.api.nvim_get_current_line()
      feed('<Esc>:w<CR>')
      wait('the file to be written', function()
        return not vim.bo[bufnr].modified and vim.fn.mode() == 'n'
      end)
      report.saved = vim.fn.readfile(cfg.file)
      report.counts = cl.counts()
      step('accepted and saved')
    end
  end)
  finish(not ok and tostring(err) or nil)
end)

vim.defer_fn(function()
  finish('timed out after ' .. (cfg.timeout_ms or 150000) .. ' ms')
end, cfg.timeout_ms or 150000)
assert(coroutine.resume(co))
