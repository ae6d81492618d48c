-- codellama.nvim: Neovim client for the codellama-lsp language server (local Code Llama completions).
--
-- In: `require('codellama').setup(opts)` (see `defaults` below). Out: one `codellama-lsp --stdio` client
-- attached to buffers of the enabled filetypes, offering completions the best way this Neovim can:
--   0.12+       Neovim's built-in inline completion (vim.lsp.inline_completion), accepted with `keymaps.accept`
--   0.10, 0.11  ghost text drawn by this plugin with inline extmarks (logic.lua), same keys
--   0.7 - 0.9   the server's `textDocument/completion` through 'omnifunc' (<C-x><C-o>) and
--               :CodellamaComplete, which inserts the completion at the cursor
-- plus `codellama/status` in `require('codellama').statusline()`, shown/accepted events reported to the
-- local server, and :CodellamaStatus / :CodellamaRestart / :CodellamaToggle / :CodellamaModel [spec] (no spec: a
-- picker) / :CodellamaLog.
--
-- One server per Neovim instance, however often setup() runs; a server that dies is restarted with
-- back-off (1, 2, 4, 8, 16 s; after 5 crashes in a row it stays down and the statusline says so); a server
-- that cannot be started is reported in the statusline and in Neovim's LSP log (:CodellamaLog).
-- The ghost uses the `CodellamaGhost` highlight group (grey and italic in 256-colour terminals too; link
-- or define it to change it). <Tab> accepts only while a ghost is shown, and otherwise does whatever the
-- key did before (the user's mapping, a snippet jump, indentation).
local logic = require('codellama.logic')
local chain_omnifunc -- defined below M.omnifunc, which calls it
local show_menu -- likewise

local M = {}

local defaults = {
  cmd = { 'codellama-lsp', '--stdio' },
  -- Server settings (lsp_server/config.py names): sent as initializationOptions and on change.
  settings = { model = 'demo' },
  filetypes = nil, -- nil: every buffer with a file; or a list of filetypes
  -- Per-filetype switch, '*' for the rest. Applied here before asking the server and sent to it as `enable`.
  enable = { ['*'] = true, markdown = false, text = false, gitcommit = false },
  -- nil: decided by the Neovim version (see the header); true/false forces this plugin's ghost text on/off.
  ghost_text = nil,
  -- false: manual mode, no ghost text while typing; `keymaps.trigger` (<M-\\>) still asks for one.
  auto_trigger = true,
  -- true: the server advertises its `textDocument/completion` items, so completion menus (nvim-cmp,
  -- blink.cmp, vim.lsp.completion) list them too. Off by default, as in VS Code: a menu would ask the model
  -- on every key on top of the ghost text. The plugin's own 'omnifunc' (<C-x><C-o>) works either way.
  completion_items = false,
  -- Typing faster than this (about 7 keys a second) sends no request until the pause after the last key.
  debounce_ms = 150,
  -- Where the cursor rests this long (ms) in a buffer with completions on, the server is told (a `cursor`
  -- event) and evaluates that place's prompt in the background, so the first key there answers sooner.
  -- 0 turns it off.
  cursor_event_ms = 300,
  -- Wait longer than debounce_ms when the server's status advises it (its answers take longer than the
  -- gaps between keys); the advice never shortens debounce_ms.
  adaptive_debounce = true,
  keymaps = {
    accept = '<Tab>',
    accept_word = '<M-Right>',
    accept_line = '<M-Down>',
    dismiss = '<C-]>',
    trigger = '<M-\\>',
    next = '<M-]>',
    prev = '<M-[>',
  },
  n_ctx = nil, -- llama.cpp context (--n-ctx), up to the model's trained length (Code Llama: 16384); nil: the server's choice
  kv_type = nil, -- llama.cpp's KV cache type (--kv-type): 'q8_0' takes 17/32 of 'f16' (the default)
  n_gpu_layers = nil, -- --n-gpu-layers
}

local RESTART_DELAYS_MS = { 1000, 2000, 4000, 8000, 16000 }

local state = {
  opts = nil,
  client_id = nil,
  buffers = {}, -- bufnr -> true for every buffer attached (re-attached after a restart)
  crashes = 0, -- consecutive unexpected exits; reset when the server says it is ready
  restart_timer = nil,
  skip_change = false, -- the next TextChangedI is our own accept: no new request for it
  fallbacks = {}, -- 'bufnr lhs' -> what the key did before our mapping
  status = nil,
  enabled = true,
  ns = nil,
  timer = nil,
  cursor_timer = nil, -- the debounce of `cursor` events
  cursor_entered = nil, -- the buffer just entered whose place is told at once (see logic.cursor_wait)
  last_cursor = nil, -- {uri, row}: the place last told in a `cursor` event
  suggestion = nil, -- {bufnr, s = logic suggestion, items, index, request_seq}
  seq = 0,
  -- requests: completion requests sent to the server; cursor: places told where the cursor rests
  counts = { shown = 0, accepted = 0, requests = 0, cursor = 0 },
}

local function has(version)
  return vim.fn.has('nvim-' .. version) == 1
end

local function log(level, msg)
  vim.schedule(function()
    vim.notify('codellama: ' .. msg, level)
  end)
end

--- A message that must not stop the editor: no hit-enter prompt (a crash's restart waited for a key on
--- 0.11); the statusline and :CodellamaLog keep the whole text.
local function echo_quietly(msg)
  vim.schedule(function()
    local width = math.max(vim.o.columns - 12, 20)
    local text = 'codellama: ' .. msg
    if #text > width then
      text = text:sub(1, width - 3) .. '...'
    end
    vim.api.nvim_echo({ { text, 'ErrorMsg' } }, false, {})
  end)
end

--- Neovim's LSP client announces a server that died by a signal with a warning of its own ("Client codellama
--- quit with exit code 0 and signal 9. Check log for errors: /long/path/lsp.log"): on 80 columns it wraps
--- over three lines, and a message of several lines waits at the hit-enter prompt (0.11: the restart sat
--- behind "Press ENTER" until two keys). The plugin says the same in one line, in the statusline and in the
--- LSP log (`fail`); this drops that one warning, and only it, for the crash being handled.
local function drop_exit_warning()
  local notify = vim.notify
  local filter
  local function restore()
    if vim.notify == filter then
      vim.notify = notify
    end
  end
  filter = function(msg, level, opts)
    if type(msg) == 'string' and msg:match('^Client codellama quit with exit code') then
      restore()
      return
    end
    return notify(msg, level, opts)
  end
  vim.notify = filter
  vim.defer_fn(restore, 5000) -- a Neovim that says nothing: leave vim.notify as it was
end

--- Tells statuslines to redraw: 0.11 does not redraw a statusline by itself when only a Lua value it
--- shows changed (the status stayed 'starting' until the next key).
local function status_changed()
  vim.schedule(function()
    vim.api.nvim_exec_autocmds('User', { pattern = 'CodellamaStatus', modeline = false })
    vim.cmd('redrawstatus!')
  end)
end

--- An error for the user: the statusline shows it, and Neovim's LSP log (:CodellamaLog) keeps it.
local function fail(msg)
  state.status = { state = 'error', message = msg }
  local ok, lsp_log = pcall(require, 'vim.lsp.log')
  if ok then
    lsp_log.error('codellama', msg)
  end
  echo_quietly(msg)
  status_changed()
end

--- The ghost's look: grey and italic, in true colour and in 256-colour terminals (where `Comment` of
--- Neovim's default scheme has no colour and would look like real code). `default`: a colour scheme or
--- the user's own definition wins.
local function define_highlight()
  vim.cmd('highlight default CodellamaGhost guifg=#808080 ctermfg=244 gui=italic cterm=italic')
end

--- The running client, or nil.
function M.client()
  if not state.client_id then
    return nil
  end
  local client = vim.lsp.get_client_by_id(state.client_id)
  if not client then
    return nil
  end
  local stopped = has('0.11') and client:is_stopped() or (not has('0.11') and client.is_stopped())
  return not stopped and client or nil
end

-- Client methods became colon-calls in 0.11; the dot form is deprecated there and gone later.
local function request(client, method, params, handler, bufnr)
  if has('0.11') then
    return client:request(method, params, handler, bufnr)
  end
  return client.request(method, params, handler, bufnr)
end

local function notify(client, method, params)
  if has('0.11') then
    return client:notify(method, params)
  end
  return client.notify(method, params)
end

local function server_settings()
  local s = vim.deepcopy(state.opts.settings or {})
  s.enable = state.enabled and (s.enable or state.opts.enable) or { ['*'] = false }
  if s.completionItems == nil then
    s.completionItems = state.opts.completion_items == true
  end
  return s
end


local function wants(bufnr)
  local ft = vim.bo[bufnr].filetype
  if state.opts.filetypes and not vim.tbl_contains(state.opts.filetypes, ft) then
    return false
  end
  return vim.bo[bufnr].buftype == '' and logic.enabled_for(state.opts.enable, ft)
end

--- Which completion path this Neovim gets: 'builtin' | 'ghost' | 'omnifunc'.
function M.mode()
  local g = state.opts and state.opts.ghost_text
  if g == false then
    return 'omnifunc'
  end
  if g == nil and has('0.12') and vim.lsp.inline_completion then
    return 'builtin'
  end
  if g == true or has('0.10') then
    return 'ghost'
  end
  return 'omnifunc'
end

------------------------------------------------------------------------------------------------------------
-- Ghost text (0.10+; forced on older versions it is drawn as an overlay, and only at the end of a line).

local function clear()
  if state.suggestion and vim.api.nvim_buf_is_valid(state.suggestion.bufnr) then
    vim.api.nvim_buf_clear_namespace(state.suggestion.bufnr, state.ns, 0, -1)
  end
  state.suggestion = nil
end

local function render(bufnr, s)
  vim.api.nvim_buf_clear_namespace(bufnr, state.ns, 0, -1)
  local line = vim.api.nvim_buf_get_lines(bufnr, s.row, s.row + 1, false)[1] or ''
  local inline = has('0.10')
  if not inline and s.col < #line then
    return false -- an overlay would hide the text after the cursor
  end
  local opts = {
    virt_text = { { s.first, 'CodellamaGhost' } },
    virt_text_pos = inline and 'inline' or 'overlay',
    hl_mode = 'combine',
  }
  if #s.rest > 0 then
    local vl = {}
    for _, l in ipairs(s.rest) do
      table.insert(vl, { { l, 'CodellamaGhost' } })
    end
    opts.virt_lines = vl
  end
  vim.api.nvim_buf_set_extmark(bufnr, state.ns, s.row, s.col, opts)
  return true
end

local function report(kind, bufnr, s, items, index, latency)
  local client = M.client()
  state.counts[kind] = state.counts[kind] + 1
  if client then
    local lines = logic.split_lines(s.ghost)
    notify(client, 'codellama/event', {
      kind = kind,
      languageId = vim.bo[bufnr].filetype,
      index = index - 1,
      candidates = #items,
      chars = #s.ghost,
      lines = #lines,
      latencyMs = latency,
    })
  end
end

--- The cursor moved in `bufnr`: once it rests there `cursor_event_ms`, tell the server where (a `cursor` event:
--- the server prefills that place's prompt; any key stops it); on entering the buffer (`entered`) at once. Only for
--- buffers with completions on.
local function cursor_rests(bufnr, entered)
  local rest = state.opts.cursor_event_ms
  if type(rest) ~= 'number' or rest <= 0 then
    return
  end
  local wait, pending = logic.cursor_wait(state.cursor_entered, bufnr, entered, rest)
  if wait == nil then
    return
  end
  state.cursor_entered = pending
  if not state.cursor_timer then
    state.cursor_timer = vim.loop.new_timer()
  end
  state.cursor_timer:stop()
  state.cursor_timer:start(wait, 0, vim.schedule_wrap(function()
    state.cursor_entered = nil
    if not vim.api.nvim_buf_is_valid(bufnr) or vim.api.nvim_get_current_buf() ~= bufnr then
      return
    end
    local client = M.client()
    if not client or not state.enabled or not wants(bufnr) then
      return
    end
    local cur = vim.api.nvim_win_get_cursor(0)
    local uri = vim.uri_from_bufnr(bufnr)
    if not logic.cursor_moved(state.last_cursor, uri, cur[1] - 1) then
      return
    end
    state.last_cursor = { uri = uri, row = cur[1] - 1 }
    state.counts.cursor = state.counts.cursor + 1
    local line = vim.api.nvim_buf_get_lines(bufnr, cur[1] - 1, cur[1], false)[1] or ''
    local character = logic.to_units(line, cur[2], client.offset_encoding or 'utf-16')
    notify(client, 'codellama/event', {
      kind = 'cursor',
      languageId = vim.bo[bufnr].filetype,
      uri = uri,
      position = { line = cur[1] - 1, character = character },
    })
  end))
end

local function show(bufnr, items, index, latency)
  local client = M.client()
  if not client or vim.api.nvim_get_current_buf() ~= bufnr or vim.fn.mode() ~= 'i' then
    return
  end
  local cur = vim.api.nvim_win_get_cursor(0)
  local row, col = cur[1] - 1, cur[2]
  local lines = vim.api.nvim_buf_get_lines(bufnr, row, row + 1, false)
  local padded = {}
  padded[row + 1] = lines[1]
  local s = logic.suggestion(items[index], { row, col }, padded, client.offset_encoding or 'utf-16')
  if not s then
    clear()
    return
  end
  state.suggestion = { bufnr = bufnr, s = s, items = items, index = index }
  if render(bufnr, s) and latency then
    report('shown', bufnr, s, items, index, latency)
  end
end

--- Asks the server for inline completions at the cursor; `invoked` asks for several candidates.
function M.request_inline(bufnr, invoked)
  local client = M.client()
  if not client or not state.enabled or not wants(bufnr) then
    return
  end
  state.seq = state.seq + 1
  local seq = state.seq
  local cur = vim.api.nvim_win_get_cursor(0)
  local line = vim.api.nvim_buf_get_lines(bufnr, cur[1] - 1, cur[1], false)[1] or ''
  local enc = client.offset_encoding or 'utf-16'
  local params = {
    textDocument = { uri = vim.uri_from_bufnr(bufnr) },
    position = { line = cur[1] - 1, character = logic.to_units(line, cur[2], enc) },
    context = { triggerKind = invoked and 1 or 2 },
  }
  local t0 = vim.loop.hrtime()
  state.counts.requests = state.counts.requests + 1
  request(client, 'textDocument/inlineCompletion', params, function(err, result)
    if seq ~= state.seq then
      return -- the user typed on: a newer request owns the screen
    end
    if err then
      log(vim.log.levels.DEBUG, 'inlineCompletion failed: ' .. (err.message or vim.inspect(err)))
      return
    end
    local items = logic.items(result)
    if #items == 0 then
      clear()
      return
    end
    show(bufnr, items, 1, (vim.loop.hrtime() - t0) / 1e6)
  end, bufnr)
end

local function schedule_request(bufnr)
  if state.skip_change then
    state.skip_change = false -- our own accept changed the text; the next ghost waits for the next key
    return
  end
  -- Typing what the ghost shows keeps the rest of it on screen (no blink); anything else removes it.
  local sug = state.suggestion
  local kept = false
  if sug and sug.bufnr == bufnr then
    local cur = vim.api.nvim_win_get_cursor(0)
    local line = vim.api.nvim_buf_get_lines(bufnr, cur[1] - 1, cur[1], false)[1] or ''
    local s = cur[1] - 1 == sug.s.row and logic.advance(sug.s, line, cur[2]) or nil
    if s then
      sug.s = s
      kept = render(bufnr, s)
    end
  end
  if not kept then
    clear()
  end
  state.seq = state.seq + 1 -- answers to older requests are now stale
  if state.opts.auto_trigger == false then
    return -- manual mode: only keymaps.trigger asks
  end
  if not state.timer then
    state.timer = vim.loop.new_timer()
  end
  state.timer:stop()
  local wait = logic.debounce_ms(state.opts.debounce_ms, state.status, state.opts.adaptive_debounce)
  state.timer:start(wait, 0, vim.schedule_wrap(function()
    if vim.api.nvim_buf_is_valid(bufnr) and vim.api.nvim_get_current_buf() == bufnr and vim.fn.mode() == 'i' then
      M.request_inline(bufnr, false)
    end
  end))
end

--- Accepts `how` much ('all' | 'word' | 'line') of the visible suggestion; false when there is none.
function M.accept(how)
  how = how or 'all'
  local sug = state.suggestion
  if not sug or not vim.api.nvim_buf_is_valid(sug.bufnr) then
    return false
  end
  local edit = logic.accept_edit(sug.s, how)
  local rest = logic.after_accept(sug.s, how)
  local bufnr = sug.bufnr
  clear()
  state.skip_change = true
  vim.api.nvim_buf_set_text(bufnr, edit.row, edit.start_col, edit.end_row, edit.end_col, edit.lines)
  vim.api.nvim_win_set_cursor(0, { edit.cursor[1] + 1, edit.cursor[2] })
  if how == 'all' or not rest then
    report('accepted', bufnr, sug.s, sug.items, sug.index)
  end
  if rest then
    state.suggestion = { bufnr = bufnr, s = rest, items = sug.items, index = sug.index }
    render(bufnr, rest)
    state.seq = state.seq + 1
  end
  return true
end

function M.dismiss()
  local had = state.suggestion ~= nil
  clear()
  state.seq = state.seq + 1
  return had
end

function M.cycle(step)
  local sug = state.suggestion
  if not sug or #sug.items < 2 then
    M.request_inline(vim.api.nvim_get_current_buf(), true)
    return
  end
  local n = #sug.items
  show(sug.bufnr, sug.items, (sug.index - 1 + step) % n + 1, nil)
end

--- The visible suggestion (for tests and statuslines): {text, ghost, row, col} or nil.
function M.current()
  return state.suggestion and state.suggestion.s or nil
end

------------------------------------------------------------------------------------------------------------
-- Completion through textDocument/completion (every version; the main path before 0.10).

--- Requests the completion at the cursor; calls `callback(text or nil, err)` with the first item's text.
function M.request_completion(bufnr, callback)
  local client = M.client()
  if not client then
    callback(nil, 'expected a running codellama-lsp client, got none')
    return
  end
  local cur = vim.api.nvim_win_get_cursor(0)
  local line = vim.api.nvim_buf_get_lines(bufnr, cur[1] - 1, cur[1], false)[1] or ''
  local params = {
    textDocument = { uri = vim.uri_from_bufnr(bufnr) },
    position = { line = cur[1] - 1, character = logic.to_units(line, cur[2], client.offset_encoding or 'utf-16') },
    context = { triggerKind = 1 },
  }
  state.counts.requests = state.counts.requests + 1
  request(client, 'textDocument/completion', params, function(err, result)
    if err then
      callback(nil, err.message or vim.inspect(err))
      return
    end
    local item = logic.items(result)[1]
    callback(item and logic.item_text(item) or nil, nil)
  end, bufnr)
end

local function preview_open()
  for _, w in ipairs(vim.api.nvim_tabpage_list_wins(0)) do
    if vim.wo[w].previewwindow then
      return true
    end
  end
  return false
end

-- 'completeopt' is global-local from 0.11 on: there the buffer's own value is set and restored.
local function get_cot()
  return has('0.11') and vim.bo.completeopt or vim.o.completeopt
end
local function set_cot(value)
  if has('0.11') then
    vim.bo.completeopt = value
  else
    vim.o.completeopt = value
  end
end

--- Undoes what show_menu changed, once the completion is over.
local function restore_menu()
  local m = state.menu
  if not m or m.opening then
    return
  end
  state.menu = nil
  if m.completeopt then
    set_cot(m.completeopt)
  end
  if m.close_preview then
    vim.schedule(function()
      vim.cmd('silent! pclose') -- scheduled: windows cannot close while the completion is ending
    end)
  end
end

--- Opens the menu with our entries. Vim inserts a single match at once and shows no menu unless
--- 'completeopt' has "menuone"; <C-y>, the key that accepts from the menu, then copies the character above
--- the cursor into the text. So "menuone" is added until the completion ends: the menu always shows,
--- <C-y> accepts (adding a multi-line entry's other lines), <C-e> cancels. The full text of a multi-line
--- entry shows in the preview window ('completeopt' "preview", 0.7's default) or popup (0.11's), and a
--- preview window opened for it is closed again.
show_menu = function(start, words)
  restore_menu()
  local cot = (has('0.11') and vim.bo.completeopt ~= '') and vim.bo.completeopt or vim.o.completeopt
  local m = { close_preview = cot:find('preview', 1, true) ~= nil and not preview_open() }
  if #words > 0 and not cot:find('menuone', 1, true) then
    m.completeopt = get_cot()
    set_cot(cot .. ',menuone')
  end
  state.menu = m
  -- complete() ends the <C-x><C-o> attempt that is still pending (the omnifunc returned -2), which fires
  -- CompleteDone inside this call: that one must not undo "menuone" before the menu is drawn.
  m.opening = true
  vim.fn.complete(start + 1, words)
  m.opening = false
end

--- 'omnifunc' (<C-x><C-o>): the completion as a menu entry, inserted where the server's range starts.
--- Neovim's own vim.lsp.omnifunc filters entries by the word before the cursor, which a completion
--- that starts at the cursor (the rest of "ret|urn x") never matches; this one uses the range as given.
--- Asynchronous like vim.lsp.omnifunc: returns -2 and fills the menu with complete() when the answer comes.
function M.omnifunc(findstart, _base)
  if findstart ~= 1 then
    return {}
  end
  local bufnr = vim.api.nvim_get_current_buf()
  local client = M.client()
  if not client then
    return -3
  end
  local cur = vim.api.nvim_win_get_cursor(0)
  local row, col = cur[1] - 1, cur[2]
  local line = vim.api.nvim_get_current_line()
  local enc = client.offset_encoding or 'utf-16'
  local params = {
    textDocument = { uri = vim.uri_from_bufnr(bufnr) },
    position = { line = row, character = logic.to_units(line, col, enc) },
    context = { triggerKind = 1 },
  }
  state.counts.requests = state.counts.requests + 1
  request(client, 'textDocument/completion', params, function(err, result)
    if err or vim.fn.mode() ~= 'i' then
      return
    end
    local now = vim.api.nvim_win_get_cursor(0)
    if now[1] - 1 ~= row or now[2] ~= col then
      return -- the cursor moved on: this answer is stale
    end
    local matches, start = {}, col
    for _, item in ipairs(logic.items(result)) do
      local range = type(item.textEdit) == 'table' and (item.textEdit.range or item.textEdit.insert) or nil
      local s = range and logic.to_byte(line, range.start.character, enc) or col
      if s <= col then
        start = math.min(start, s)
        table.insert(matches, { s = s, item = item })
      end
    end
    local words = {}
    for _, m in ipairs(matches) do
      local text = logic.item_text(m.item) or ''
      -- complete() replaces from one column for every entry: re-add what lies between it and the item's start
      table.insert(words, logic.menu_entry(line:sub(start + 1, m.s) .. text, m.item.label))
    end
    if #words == 0 and chain_omnifunc(bufnr, line, col) then
      return
    end
    show_menu(start, words)
  end, bufnr)
  return -2
end

--- The 'omnifunc' a filetype plugin had set before ours (e.g. python3complete#Complete): asked when the
--- server has nothing, so taking 'omnifunc' over loses nothing. True when it filled the menu.
chain_omnifunc = function(bufnr, line, col)
  local prev = vim.b[bufnr].codellama_prev_omnifunc
  if type(prev) ~= 'string' or prev == '' or prev:match('^v:lua%.') then
    return false
  end
  local ok, start = pcall(vim.fn[prev], 1, '')
  if not ok or type(start) ~= 'number' or start < 0 or start > col then
    return false
  end
  local ok2, found = pcall(vim.fn[prev], 0, line:sub(start + 1, col))
  if not ok2 or type(found) ~= 'table' then
    return false
  end
  vim.fn.complete(start + 1, found.words or found)
  return true
end

--- CompleteDone: a multi-line entry went in as its first line; add the other lines as real lines.
local function complete_done()
  restore_menu()
  local item = vim.v.completed_item
  local data = type(item) == 'table' and item.user_data or nil
  local extra = type(data) == 'table' and data.codellama_lines or nil
  if type(extra) ~= 'table' or #extra == 0 then
    return
  end
  -- Here, before the key that ended the completion is inserted: that key then lands after the lines.
  local cur = vim.api.nvim_win_get_cursor(0)
  local lines = { '' }
  vim.list_extend(lines, extra)
  vim.api.nvim_buf_set_text(0, cur[1] - 1, cur[2], cur[1] - 1, cur[2], lines)
  vim.api.nvim_win_set_cursor(0, { cur[1] + #extra, #extra[#extra] })
end

-- 'omnifunc' takes a global function name ('v:lua.name'); Neovim 0.7 has no v:lua.require'...' there.
_G.codellama_omnifunc = function(findstart, base)
  return M.omnifunc(findstart, base)
end

--- :CodellamaComplete: insert the completion at the cursor (normal or insert mode).
function M.complete()
  local bufnr = vim.api.nvim_get_current_buf()
  M.request_completion(bufnr, function(text, err)
    if err then
      log(vim.log.levels.WARN, err)
      return
    end
    if not text or text == '' then
      log(vim.log.levels.INFO, 'no completion here')
      return
    end
    local cur = vim.api.nvim_win_get_cursor(0)
    local lines = logic.split_lines(text)
    vim.api.nvim_buf_set_text(bufnr, cur[1] - 1, cur[2], cur[1] - 1, cur[2], lines)
    local last = lines[#lines]
    vim.api.nvim_win_set_cursor(0, { cur[1] + #lines - 1, (#lines == 1 and cur[2] or 0) + #last })
  end)
end

------------------------------------------------------------------------------------------------------------
-- Client lifecycle.

--- What `lhs` did in insert mode before our mapping (the user's mapping, 0.11's snippet <Tab>, ...), as a
--- function; with none, the key itself.
local function previous_mapping(bufnr, lhs)
  local keys = function(k)
    return vim.api.nvim_replace_termcodes(k, true, false, true)
  end
  local m = vim.api.nvim_buf_call(bufnr, function()
    return vim.fn.maparg(lhs, 'i', false, true)
  end)
  if type(m) ~= 'table' or vim.tbl_isempty(m) or m.desc == 'codellama' then
    return function()
      vim.api.nvim_feedkeys(keys(lhs), 'ni', false) -- 'i': before keys typed after it
    end
  end
  local remap = (m.noremap == 1 and 'n' or 'm') .. 'i'
  return function()
    local rhs = m.rhs
    if m.callback then
      rhs = m.callback()
      if m.expr ~= 1 then
        return
      end
    elseif m.expr == 1 then
      rhs = vim.api.nvim_eval(rhs)
    end
    if type(rhs) == 'string' and rhs ~= '' then
      vim.api.nvim_feedkeys(keys(rhs), remap, false)
    end
  end
end

local function map(bufnr, lhs, fn, fallback)
  if not lhs or lhs == '' then
    return
  end
  -- captured once per buffer: after a restart the mapping found would be our own
  local key = bufnr .. ' ' .. lhs
  if fallback and not state.fallbacks[key] then
    state.fallbacks[key] = previous_mapping(bufnr, lhs)
  end
  local before = fallback and state.fallbacks[key] or nil
  vim.keymap.set('i', lhs, function()
    if not fn() and before then
      before()
    end
  end, { buffer = bufnr, silent = true, desc = 'codellama' })
end

local function on_attach(client, bufnr)
  local mode = M.mode()
  local km = state.opts.keymaps
  if mode == 'builtin' then
    vim.lsp.inline_completion.enable(true, { bufnr = bufnr })
    map(bufnr, km.accept, function()
      return vim.lsp.inline_completion.get()
    end, true)
    map(bufnr, km.next, function()
      vim.lsp.inline_completion.select({ count = 1 })
      return true
    end)
    map(bufnr, km.prev, function()
      vim.lsp.inline_completion.select({ count = -1 })
      return true
    end)
  elseif mode == 'ghost' then
    local group = vim.api.nvim_create_augroup('codellama_ghost_' .. bufnr, { clear = true })
    vim.api.nvim_create_autocmd({ 'TextChangedI', 'TextChangedP' }, {
      group = group,
      buffer = bufnr,
      callback = function()
        schedule_request(bufnr)
      end,
    })
    vim.api.nvim_create_autocmd({ 'InsertLeave', 'BufLeave' }, {
      group = group,
      buffer = bufnr,
      callback = function()
        M.dismiss()
      end,
    })
    vim.api.nvim_create_autocmd('CursorMovedI', {
      group = group,
      buffer = bufnr,
      callback = function()
        local sug = state.suggestion
        if not sug then
          return
        end
        local cur = vim.api.nvim_win_get_cursor(0)
        if cur[1] - 1 == sug.s.row and cur[2] == sug.s.col then
          return
        end
        -- 0.11 runs CursorMovedI before TextChangedI: a key that types what the ghost shows moves the
        -- cursor first. Keep the rest of the ghost on screen (no blink); any other move dismisses it.
        local line = vim.api.nvim_buf_get_lines(bufnr, cur[1] - 1, cur[1], false)[1] or ''
        local rest = cur[1] - 1 == sug.s.row and logic.advance(sug.s, line, cur[2]) or nil
        if rest then
          sug.s = rest
          render(bufnr, rest)
        else
          M.dismiss()
        end
      end,
    })
    map(bufnr, km.accept, function()
      return M.accept('all')
    end, true)
    map(bufnr, km.accept_word, function()
      return M.accept('word')
    end, true)
    map(bufnr, km.accept_line, function()
      return M.accept('line')
    end, true)
    map(bufnr, km.dismiss, M.dismiss, true)
    map(bufnr, km.next, function()
      M.cycle(1)
      return true
    end)
    map(bufnr, km.prev, function()
      M.cycle(-1)
      return true
    end)
    map(bufnr, km.trigger, function()
      M.request_inline(bufnr, true)
      return true
    end)
  end
  -- The completion menu through 'omnifunc'. Before 0.10 that is the main path, so it takes 'omnifunc' over
  -- from a filetype plugin (keeping the old one to ask when the server has nothing); from 0.10 on only an
  -- empty one. Scheduled: filetype plugins set 'omnifunc' in FileType autocommands that run after ours.
  vim.schedule(function()
    if not vim.api.nvim_buf_is_valid(bufnr) then
      return
    end
    local current = vim.bo[bufnr].omnifunc
    if current == 'v:lua.codellama_omnifunc' then
      return
    end
    if current == '' or current == 'v:lua.vim.lsp.omnifunc' or mode == 'omnifunc' then
      vim.b[bufnr].codellama_prev_omnifunc = current
      vim.bo[bufnr].omnifunc = 'v:lua.codellama_omnifunc'
    end
  end)
  -- Where the cursor rests (LSP tells the server nothing about it): the server prefills that place.
  local rgroup = vim.api.nvim_create_augroup('codellama_cursor_' .. bufnr, { clear = true })
  vim.api.nvim_create_autocmd({ 'CursorMoved', 'CursorMovedI', 'BufEnter' }, {
    group = rgroup,
    buffer = bufnr,
    callback = function(ev)
      cursor_rests(bufnr, ev.event == 'BufEnter')
    end,
  })
  cursor_rests(bufnr, true)
  local cgroup = vim.api.nvim_create_augroup('codellama_complete_' .. bufnr, { clear = true })
  vim.api.nvim_create_autocmd('CompleteDone', { group = cgroup, buffer = bufnr, callback = complete_done })
  vim.api.nvim_create_autocmd('InsertLeave', { group = cgroup, buffer = bufnr, callback = restore_menu })
  if mode == 'omnifunc' then
    map(bufnr, km.trigger, function()
      M.complete()
      return true
    end)
  end
  if state.opts.on_attach then
    state.opts.on_attach(client, bufnr)
  end
end

local function client_config()
  local opts = state.opts
  local cmd = vim.deepcopy(opts.cmd)
  if opts.n_ctx then
    vim.list_extend(cmd, { '--n-ctx', tostring(opts.n_ctx) })
  end
  if opts.kv_type then
    vim.list_extend(cmd, { '--kv-type', opts.kv_type })
  end
  if opts.n_gpu_layers then
    vim.list_extend(cmd, { '--n-gpu-layers', tostring(opts.n_gpu_layers) })
  end
  return {
    name = 'codellama',
    cmd = cmd,
    root_dir = opts.root_dir or vim.loop.cwd(),
    -- Settings travel once, as initializationOptions. `settings` stays unset on purpose: Neovim would
    -- repeat them in a didChangeConfiguration right after `initialized`, making the server load twice.
    init_options = server_settings(),
    on_attach = on_attach,
    handlers = {
      ['codellama/status'] = function(_, params)
        state.status = params
        if type(params) == 'table' and params.state == 'ready' then
          state.crashes = 0
        end
        status_changed()
      end,
    },
    on_exit = function(code, signal)
      if state.stopping then
        return
      end
      if code == 0 and signal == 0 then -- it was asked to exit (e.g. Neovim quits): not a crash
        state.status = { state = 'stopped' }
        status_changed()
        return
      end
      drop_exit_warning() -- before Neovim's own (scheduled) warning runs
      state.client_id = nil
      state.crashes = state.crashes + 1
      local delay = RESTART_DELAYS_MS[state.crashes]
      local what = ('server exited (code %d, signal %d)'):format(code or -1, signal or 0)
      vim.schedule(function()
        clear()
        -- what to do first: a statusline too narrow for the whole message still says it
        if not delay then
          fail(('not restarting (:CodellamaRestart): %s %d times in a row'):format(what, state.crashes - 1))
          return
        end
        fail(('restarting in %d s: %s'):format(delay / 1000, what))
        state.restart_timer = vim.defer_fn(function()
          state.restart_timer = nil
          M.restart_now()
        end, delay)
      end)
    end,
  }
end

--- Starts the server if needed and attaches it to `bufnr`.
function M.attach(bufnr)
  bufnr = bufnr or vim.api.nvim_get_current_buf()
  if not wants(bufnr) then
    return
  end
  state.buffers[bufnr] = true
  if not M.client() then
    if state.restart_timer then
      return -- a crashed server comes back after its back-off; it attaches this buffer then
    end
    local program = state.opts.cmd[1]
    if vim.fn.executable(program) ~= 1 then
      if not (state.status and state.status.state == 'error' and state.status.missing) then
        fail(('%s not found (not executable or not on PATH): set cmd in require("codellama").setup()'):format(program))
        state.status.missing = true
      end
      return
    end
    state.stopping = false
    -- vim.lsp.start (0.8+) replaced start_client, which is deprecated from 0.11 on.
    if has('0.10') then
      state.client_id = vim.lsp.start(client_config(), { bufnr = bufnr })
    else
      state.client_id = vim.lsp.start_client(client_config())
    end
    if not state.client_id then
      fail(('expected %s to start, it did not (see :CodellamaLog)'):format(program))
      return
    end
  end
  vim.lsp.buf_attach_client(bufnr, state.client_id)
end

function M.stop()
  local client = M.client()
  clear()
  if client then
    state.stopping = true
    if has('0.11') then
      client:stop()
    else
      client.stop()
    end
  end
  state.client_id = nil
end

--- Starts a server and attaches every buffer the last one had (and the current one).
function M.restart_now()
  state.status = nil
  state.last_cursor = nil -- a new server knows no place yet
  local any = false
  for b in pairs(state.buffers) do
    if vim.api.nvim_buf_is_valid(b) then
      M.attach(b)
      any = true
    else
      state.buffers[b] = nil
    end
  end
  if not any then
    M.attach(vim.api.nvim_get_current_buf())
  end
end

function M.restart()
  if state.restart_timer then
    state.restart_timer:stop()
    state.restart_timer = nil
  end
  state.crashes = 0
  M.stop()
  -- The old process needs a moment to release the model; start the new one after it has gone.
  vim.defer_fn(M.restart_now, 500)
end

--- Changes server settings (e.g. {model = '/path/x.gguf'}) and sends them with workspace/didChangeConfiguration.
function M.set(settings)
  state.opts.settings = vim.tbl_extend('force', state.opts.settings or {}, settings)
  local client = M.client()
  if client and settings.model and (not state.status or state.status.model ~= settings.model) then
    -- the statusline names the model being loaded at once, not the one it replaces
    state.status = { state = 'loading', model = settings.model }
    status_changed()
  end
  if client then
    notify(client, 'workspace/didChangeConfiguration', { settings = { codellama = server_settings() } })
  end
end

--- :CodellamaModel without an argument: the server's list (codellama/models: GGUFs on this machine and known Code
--- Llama files, with size, memory needed at the context and FIM support) in vim.ui.select; a model that will not
--- fit the memory available now, or has no FIM tokens, is confirmed first.
function M.pick_model()
  local client = M.client()
  if not client then
    vim.notify('codellama: the server is not running', vim.log.levels.WARN)
    return
  end
  request(client, 'codellama/models', { folders = { vim.fn.getcwd() } }, function(err, result)
    if err or type(result) ~= 'table' then
      vim.notify('codellama: codellama/models failed: ' .. vim.inspect(err or result), vim.log.levels.ERROR)
      return
    end
    local choices = logic.model_choices(result)
    vim.ui.select(choices, {
      prompt = ('Code Llama model (memory at %d tokens):'):format(result.nCtx),
      format_item = function(c)
        return c.text
      end,
    }, function(choice)
      if not choice then
        return
      end
      if choice.broken then
        vim.notify('codellama: ' .. choice.text, vim.log.levels.ERROR)
        return
      end
      if choice.warning and vim.fn.confirm(choice.warning .. '.', '&Use anyway\n&Cancel', 2) ~= 1 then
        return
      end
      M.set({ model = choice.spec })
    end)
  end)
end

function M.toggle()
  state.enabled = not state.enabled
  if not state.enabled then
    clear()
  end
  -- The server hears it too ({"*": false}), so no request kind (omnifunc, :CodellamaComplete) runs the model.
  local client = M.client()
  if client then
    notify(client, 'workspace/didChangeConfiguration', { settings = { codellama = server_settings() } })
  end
  vim.notify('codellama: completions ' .. (state.enabled and 'on' or 'off'))
end

function M.status()
  return state.status
end

--- For 'statusline': "codellama: ready | micro | 42 ms". At most `max_width` characters (default: half
--- the screen, at least 40), cut at the end: Neovim cuts a statusline that is too long at its start,
--- which hid "codellama: error" and the file name behind a long message.
function M.statusline(max_width)
  local text = state.enabled and logic.status_text(state.status) or 'codellama: off'
  if state.enabled and state.opts and state.opts.auto_trigger == false then
    text = text:gsub('^codellama: ready', 'codellama: ready (manual)')
  end
  return logic.truncate(text, max_width or math.max(40, math.floor(vim.o.columns / 2)))
end

--- The options setup() was given, with the defaults (nil before setup()).
function M.options()
  return state.opts
end

--- What the server is sent as its settings.
function M.server_settings()
  return server_settings()
end

function M.counts()
  return vim.deepcopy(state.counts)
end

function M.setup(opts)
  state.opts = vim.tbl_deep_extend('force', vim.deepcopy(defaults), opts or {})
  state.ns = vim.api.nvim_create_namespace('codellama')
  local group = vim.api.nvim_create_augroup('codellama', { clear = true })
  define_highlight()
  vim.api.nvim_create_autocmd('ColorScheme', { group = group, callback = define_highlight })
  vim.api.nvim_create_autocmd('VimLeavePre', {
    group = group,
    callback = function()
      state.stopping = true
    end,
  })
  vim.api.nvim_create_autocmd('FileType', {
    group = group,
    callback = function(args)
      M.attach(args.buf)
    end,
  })
  local cmd = vim.api.nvim_create_user_command
  cmd('CodellamaStatus', function()
    print(M.statusline())
  end, {})
  cmd('CodellamaRestart', M.restart, {})
  cmd('CodellamaToggle', M.toggle, {})
  cmd('CodellamaComplete', M.complete, {})
  cmd('CodellamaModel', function(a)
    if a.args == '' then
      M.pick_model()
    else
      M.set({ model = a.args })
    end
  end, { nargs = '?', complete = 'file', desc = 'a .gguf path, demo, or a Hugging Face repo:file; none: pick from a list' })
  cmd('CodellamaLog', function()
    vim.cmd('split ' .. vim.fn.fnameescape(vim.lsp.get_log_path()))
  end, {})
  -- Buffers opened before setup() ran.
  for _, b in ipairs(vim.api.nvim_list_bufs()) do
    if vim.api.nvim_buf_is_loaded(b) and vim.bo[b].filetype ~= '' then
      M.attach(b)
    end
  end
end

return M
