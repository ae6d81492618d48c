-- End-to-end run of the plugin as a user has it, driven by tests/test_editors_nvim.py.
--
-- Neovim starts with `-u init.lua`, where init.lua is the README's setup snippet (only the plugin path and
-- the model filled in): no --clean, filetype plugins and indent scripts on, the plugin's default debounce,
-- time budget and keys. This file runs after it (`-c luafile`).
-- In: $CODELLAMA_E2E, a JSON file: {trials: [{file, line (1-based, empty), typed, delay_ms, want,
-- type_through (characters of the ghost to type before accepting), accept_line (<M-Down> first), filetype (set
-- after opening), noname (a buffer with no name holding `content` instead of `file`), prefix (text on the
-- line already: typing goes after it)}], out,
-- timeout_ms, manual (auto_trigger = false: wait, then <M-\>), trials_only (skip the checks after the trials)}.
-- Out: a JSON report at `out`: per trial the latency of the completion after the last key,
-- the requests that reached the server, and the file as written; then the highlight group of the ghost,
-- what <Tab> does without a ghost, :CodellamaToggle, the number of servers, and a killed server coming back.
-- Assertions live in the Python test.
--
-- Keys go through Neovim's input queue one at a time on timers (nvim_feedkeys, "typed" mode), so the
-- plugin's autocommands, debounce and mappings run as in an interactive session. Neovim 0.10+ shows ghost
-- text, accepted with <Tab>; 0.7 - 0.9 (and ghost_text = false) get the completion through the menu:
-- <C-x><C-o>, then <C-y>.
local cfg = vim.fn.json_decode(table.concat(vim.fn.readfile(os.getenv('CODELLAMA_E2E')), '\n'))
local v = vim.version()
local report = { nvim = ('%d.%d.%d'):format(v.major, v.minor, v.patch), trials = {}, steps = {} }
local t0 = vim.loop.hrtime()
local function now_ms()
  return (vim.loop.hrtime() - t0) / 1e6
end

local function finish(err)
  report.error = err
  report.elapsed_ms = now_ms()
  vim.fn.writefile({ vim.fn.json_encode(report) }, cfg.out)
  vim.cmd(err and 'cquit 1' or 'qall!')
end

local co
local function resume()
  local ok, err = coroutine.resume(co)
  if not ok then
    finish('driver error: ' .. tostring(err))
  end
end
local function sleep(ms)
  vim.defer_fn(resume, ms)
  coroutine.yield()
end
local function wait(what, cond, timeout_ms, interval)
  local deadline = vim.loop.hrtime() + (timeout_ms or 30000) * 1e6
  while true do
    local ok, value = pcall(cond)
    if ok and value then
      return value
    end
    if vim.loop.hrtime() > deadline then
      error(('timed out waiting for %s'):format(what), 0)
    end
    sleep(interval or 10)
  end
end
local function feed(keys)
  vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes(keys, true, false, true), 'mt', false)
end

-- Completion requests the plugin has sent to the server so far.
local function last_request()
  return require('codellama').counts().requests
end

local function servers()
  local n = 0
  local clients = vim.lsp.get_clients and vim.lsp.get_clients() or vim.lsp.get_active_clients()
  for _, c in ipairs(clients) do
    if c.name == 'codellama' then
      n = n + 1
    end
  end
  return n
end

--- Child processes of this Neovim whose command line names the server.
local function server_pids()
  local me = tostring(vim.fn.getpid())
  local out = {}
  for _, pid in ipairs(vim.fn.readdir('/proc')) do
    if pid:match('^%d+$') then
      local ok, stat = pcall(vim.fn.readfile, '/proc/' .. pid .. '/stat')
      local ppid = ok and stat[1] and stat[1]:match('^%d+ %b() %S+ (%d+)')
      if ppid == me then
        local okc, cmd = pcall(vim.fn.readfile, '/proc/' .. pid .. '/cmdline', 'b')
        if okc and table.concat(cmd, ' '):find('codellama', 1, true) then
          table.insert(out, tonumber(pid))
        end
      end
    end
  end
  return out
end

local cl = require('codellama')
-- The path this configuration gets: ghost text (0.10+ by default) or the menu (0.7 - 0.9, or ghost_text = false).
local inline = cl.mode() == 'ghost'

--- The codellama ghost on screen: its extmark's first virtual text, or nil.
local function ghost_on_screen(bufnr)
  local marks = vim.api.nvim_buf_get_extmarks(bufnr, vim.api.nvim_create_namespace('codellama'), 0, -1, { details = true })
  local d = marks[1] and marks[1][4]
  return d and d.virt_text and d.virt_text[1][1] or nil
end

local function preview_windows()
  local n = 0
  for _, w in ipairs(vim.api.nvim_list_wins()) do
    if vim.wo[w].previewwindow then
      n = n + 1
    end
  end
  return n
end

local function run_trial(trial, index)
  local r = { file = trial.file, delay_ms = trial.delay_ms, ok = false }
  table.insert(report.trials, r)
  if trial.noname then
    -- a buffer with no name (no file, no extension) holding `content`
    vim.cmd('enew')
    vim.api.nvim_buf_set_lines(0, 0, -1, false, vim.split(trial.content, '\n', { plain = true }))
  else
    vim.cmd('edit ' .. vim.fn.fnameescape(trial.file))
  end
  local bufnr = vim.api.nvim_get_current_buf()
  if trial.filetype then
    vim.bo[bufnr].filetype = trial.filetype -- as `:set filetype=...`: the plugin attaches on FileType
  end
  r.filetype = vim.bo[bufnr].filetype
  wait('the client to attach', function()
    local c = cl.client()
    return c and vim.lsp.buf_is_attached(bufnr, c.id)
  end, 60000)
  if index == 1 then
    wait('the server to report ready', function()
      return cl.status() and cl.status().state == 'ready'
    end, 90000)
    report.omnifunc = vim.bo[bufnr].omnifunc
    report.status_ready = cl.statusline()
  end
  -- `prefix`: text already on the line (the cursor goes after it); otherwise the line is empty
  local head = trial.prefix or ''
  vim.api.nvim_win_set_cursor(0, { trial.line, 0 })
  feed(head == '' and 'i' or 'A')
  wait('insert mode', function()
    return vim.fn.mode() == 'i'
  end)
  sleep(200)
  local r0 = last_request()
  for i = 1, #trial.typed do
    feed(trial.typed:sub(i, i))
    if i < #trial.typed then
      sleep(trial.delay_ms)
    end
  end
  local last_key = now_ms()
  wait('the typed text', function()
    return vim.api.nvim_get_current_line() == head .. trial.typed
  end, 5000, 5)
  local want_lines = vim.split(head .. trial.typed .. trial.want, '\n', { plain = true })
  local want = trial.want
  if inline then
    if cfg.manual then
      -- manual mode: no ghost and no request by itself, however long the pause; <M-\> asks
      sleep(1500)
      r.auto_requests = last_request() - r0
      r.auto_ghost = cl.current() ~= nil or ghost_on_screen(bufnr) ~= nil
      feed('<M-\\>')
    end
    local s = wait('ghost text', function()
      local cur = cl.current()
      r.last_ghost_seen = cur and cur.ghost or r.last_ghost_seen
      return cur and cur.ghost == want and cur
    end, 20000, 5)
    r.latency_ms = now_ms() - last_key
    r.ghost = s.ghost
    local marks = vim.api.nvim_buf_get_extmarks(bufnr, vim.api.nvim_create_namespace('codellama'), 0, -1, { details = true })
    r.ghost_hl = marks[1] and marks[1][4].virt_text and marks[1][4].virt_text[1][2]
    r.requests = last_request() - r0
    -- Typing what the ghost shows keeps the rest of it on screen, shortened, from the key on (no blink):
    -- looked at as soon as each key is in the buffer, before any new answer could come.
    r.type_through = {}
    for i = 1, (trial.type_through or 0) do
      local before = vim.api.nvim_get_current_line()
      feed(want:sub(1, 1))
      wait('the typed character', function()
        return vim.api.nvim_get_current_line() ~= before
      end, 5000, 1)
      want = want:sub(2)
      local shown = ghost_on_screen(bufnr)
      table.insert(r.type_through, { shown = shown, want = vim.split(want, '\n', { plain = true })[1] })
      if i < trial.type_through then
        sleep(trial.delay_ms)
      end
    end
    if trial.accept_line then
      -- <M-Down>: the ghost's first line goes in, the rest stays as ghost
      sleep(200)
      feed('<M-Down>')
      wait('the first line accepted', function()
        return vim.api.nvim_get_current_line() == want_lines[1]
      end, 5000, 5)
      local rest = cl.current()
      r.after_line_accept = rest and rest.ghost or vim.NIL
      r.line_accepted = vim.api.nvim_get_current_line()
    end
    sleep(200) -- a person's reaction time
    feed('<Tab>')
  else
    -- The menu: it always opens (a single entry too), its first line in the text; <C-y> accepts, which
    -- adds the other lines; then <Esc>.
    feed('<C-x><C-o>')
    wait('the completion menu', function()
      return vim.fn.pumvisible() == 1
    end, 20000, 5)
    r.latency_ms = now_ms() - last_key
    r.requests = last_request() - r0
    r.menu_items = #vim.fn.complete_info({ 'items' }).items
    r.menu_line = vim.api.nvim_get_current_line()
    sleep(200)
    feed('<C-y>')
    wait('the menu to close', function()
      return vim.fn.pumvisible() == 0
    end, 5000, 5)
    feed('<Esc>')
  end
  wait('the completion in the buffer', function()
    return vim.deep_equal(vim.api.nvim_buf_get_lines(bufnr, trial.line - 1, trial.line - 1 + #want_lines, false), want_lines)
  end, 10000)
  if trial.noname then
    feed('<Esc>')
    wait('normal mode', function()
      return vim.fn.mode() == 'n'
    end)
    r.saved = table.concat(vim.api.nvim_buf_get_lines(bufnr, 0, -1, false), '\n') .. '\n' -- as :w would write it
  else
    feed('<Esc>:w<CR>')
    wait('the file to be written', function()
      return not vim.bo[bufnr].modified and vim.fn.mode() == 'n'
    end)
    local f = assert(io.open(trial.file, 'rb'))
    r.saved = f:read('*a')
    f:close()
  end
  r.preview_windows = preview_windows()
  r.ok = true
end

co = coroutine.create(function()
  local ok, err = pcall(function()
    report.mode = cl.mode()
    for i, trial in ipairs(cfg.trials) do
      local tok, terr = pcall(run_trial, trial, i)
      if not tok then
        report.trials[#report.trials].error = tostring(terr)
        feed('<Esc>')
        sleep(100)
        vim.cmd('silent! write')
      end
    end
    report.servers = servers()
    report.counts = cl.counts()
    local caps = cl.client() and cl.client().server_capabilities or {}
    report.completion_provider = caps.completionProvider ~= nil
    if cfg.trials_only then
      return
    end

    -- :checkhealth codellama, as the user reads it
    vim.cmd('checkhealth codellama')
    report.health = table.concat(vim.api.nvim_buf_get_lines(0, 0, -1, false), '\n')
    vim.cmd('bwipeout!')

    -- The ghost's highlight group, as a terminal without true colour draws it.
    local hl = vim.api.nvim_get_hl_by_name('CodellamaGhost', false)
    report.ghost_cterm = { fg = hl.foreground, italic = hl.italic == true }

    -- <Tab> with no ghost on screen does what it did before the plugin (here: inserts a tab or indent).
    vim.cmd('enew')
    vim.bo.filetype = 'python'
    wait('the scratch buffer to attach', function()
      local c = cl.client()
      return c and vim.lsp.buf_is_attached(0, c.id)
    end)
    vim.cmd('CodellamaToggle') -- off: no ghost can come, and the server runs no model
    feed('ix<Tab>y')
    wait('the keys to arrive', function()
      return vim.api.nvim_get_current_line():sub(-1) == 'y'
    end, 5000)
    report.tab_line = vim.api.nvim_get_current_line()
    local done = false
    cl.request_completion(vim.api.nvim_get_current_buf(), function(text)
      report.completion_while_off = text or ''
      done = true
    end)
    wait('the completion answer while off', function()
      return done
    end)
    report.status_while_off = cl.status()
    feed('<Esc>')
    vim.cmd('CodellamaToggle')
    vim.cmd('silent! bwipeout!')

    -- A server killed by a signal: the statusline says so, and a new one comes after the back-off.
    local pids = server_pids()
    report.server_pids = #pids
    if #pids == 1 then
      vim.loop.kill(pids[1], 'sigkill')
      report.status_after_kill = wait('the error in the statusline', function()
        local line = cl.statusline()
        return line:find('error', 1, true) and line
      end, 10000)
      wait('a new server', function()
        local now = server_pids()
        return #now == 1 and now[1] ~= pids[1] and cl.status() and cl.status().state == 'ready'
      end, 60000)
      report.restarted = true
    end

    -- Another model: the statusline names it at once and while it loads (the server's loading status too).
    local before = cl.status() and cl.status().model
    vim.cmd('CodellamaModel demo')
    report.status_new_model = cl.statusline()
    local s = wait('the server loading the new model', function()
      local st = cl.status()
      return st and st.state == 'loading' and st.message == 'loading demo' and st
    end, 30000)
    report.server_loading_model = s.model
    report.model_before = before
  end)
  finish(not ok and tostring(err) or nil)
end)

vim.defer_fn(function()
  finish('timed out after ' .. (cfg.timeout_ms or 240000) .. ' ms')
end, cfg.timeout_ms or 240000)
resume()
