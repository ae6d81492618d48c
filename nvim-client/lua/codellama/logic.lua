-- Pure logic behind the ghost text, kept free of editor state so Neovim 0.7 can unit-test it even though
-- it cannot draw inline virtual text (that needs 0.10).
--
-- In: a completion item as the server sends it (insertText plus an optional LSP range, in the position
-- encoding the client negotiated), the cursor (0-based row, byte column) and the buffer's lines.
-- Out: a "suggestion": where the ghost text goes, what it shows (the first line beside the cursor, the
-- rest as virtual lines), and, for accepting all of it, its next word or its next line, the exact
-- buffer edit and where the cursor ends up.
local M = {}

--- Byte offset of the `units`-th code unit of `line` in `encoding` ('utf-8' | 'utf-16' | 'utf-32').
--- Clamped to the line: a position past the end means the end, as the LSP says.
function M.to_byte(line, units, encoding)
  if encoding == 'utf-8' then
    return math.min(units, #line)
  end
  local byte, count = 0, 0
  while byte < #line and count < units do
    local c = line:byte(byte + 1)
    local len = c < 0x80 and 1 or c < 0xE0 and 2 or c < 0xF0 and 3 or 4
    -- A 4-byte sequence is outside the BMP: two UTF-16 code units (a surrogate pair), one UTF-32 unit.
    count = count + ((len == 4 and encoding == 'utf-16') and 2 or 1)
    byte = byte + len
  end
  return math.min(byte, #line)
end

--- Code units in `encoding` of the first `byte` bytes of `line`.
function M.to_units(line, byte, encoding)
  if encoding == 'utf-8' then
    return math.min(byte, #line)
  end
  local b, count = 0, 0
  while b < byte and b < #line do
    local c = line:byte(b + 1)
    local len = c < 0x80 and 1 or c < 0xE0 and 2 or c < 0xF0 and 3 or 4
    count = count + ((len == 4 and encoding == 'utf-16') and 2 or 1)
    b = b + len
  end
  return count
end

--- Splits on "\n" (dropping a "\r" before it), keeping empty pieces: "a\n" -> {"a", ""}.
function M.split_lines(text)
  local out = {}
  local start = 1
  while true do
    local nl = text:find('\n', start, true)
    if not nl then
      table.insert(out, text:sub(start))
      break
    end
    table.insert(out, (text:sub(start, nl - 1):gsub('\r$', '')))
    start = nl + 1
  end
  return out
end

--- The item's text of an InlineCompletionItem or a CompletionItem (insertText, textEdit.newText or label).
function M.item_text(item)
  if type(item) ~= 'table' then
    return nil
  end
  local text = item.insertText
  if type(text) == 'table' then
    text = text.value -- a StringValue (snippet)
  end
  if type(text) ~= 'string' and type(item.textEdit) == 'table' then
    text = item.textEdit.newText
  end
  if type(text) ~= 'string' then
    text = item.label
  end
  return type(text) == 'string' and text or nil
end

--- Items of an InlineCompletionList, a CompletionList or a bare array.
function M.items(result)
  if type(result) ~= 'table' then
    return {}
  end
  if type(result.items) == 'table' then
    return result.items
  end
  return result
end

--- Builds the suggestion for `item` at `cursor` = {row, col} (0-based row, byte column), or nil when there is
--- nothing to show (empty text, a range on another line, or text that does not continue what is typed).
function M.suggestion(item, cursor, lines, encoding)
  local text = M.item_text(item)
  if not text or text:match('^%s*$') then
    return nil
  end
  local row, col = cursor[1], cursor[2]
  local line = lines[row + 1] or ''
  local start_col, end_col = col, col
  local range = item.range or (type(item.textEdit) == 'table' and item.textEdit.range) or nil
  if range then
    if range.start.line ~= row or range['end'].line ~= row then
      return nil
    end
    start_col = M.to_byte(line, range.start.character, encoding)
    end_col = M.to_byte(line, range['end'].character, encoding)
    if start_col > col or end_col < col then
      return nil
    end
  end
  -- The range may start before the cursor (the server re-sends what was typed): the ghost is the rest.
  local typed = line:sub(start_col + 1, col)
  if text:sub(1, #typed) ~= typed then
    return nil
  end
  local ghost = text:sub(#typed + 1)
  if ghost == '' then
    return nil
  end
  local ghost_lines = M.split_lines(ghost)
  return {
    row = row,
    col = col,
    start_col = start_col,
    end_col = end_col,
    text = text,
    ghost = ghost,
    first = ghost_lines[1],
    rest = { unpack(ghost_lines, 2) },
  }
end

--- The part of the ghost text to accept: 'all', 'word' (up to the end of the next word, with the spaces
--- before it) or 'line' (up to the end of the current ghost line, or the next line break).
function M.portion(s, how)
  if how == 'all' then
    return s.ghost
  elseif how == 'word' then
    local word = s.ghost:match('^%s*[%w_]+') or s.ghost:match('^%s*[^%w_%s]+') or s.ghost:match('^%s+')
    return word or s.ghost
  elseif how == 'line' then
    local nl = s.ghost:find('\n', 1, true)
    if nl == 1 then
      return '\n'
    end
    return nl and s.ghost:sub(1, nl - 1) or s.ghost
  end
  error(("expected 'all', 'word' or 'line', got %q"):format(tostring(how)))
end

--- The buffer edit that accepts `how` much of `s`: {row, start_col, end_row, end_col, lines, cursor}.
--- Accepting everything replaces the item's range; a part is inserted at the cursor (what follows the
--- cursor stays, so the rest of the suggestion can still be taken).
function M.accept_edit(s, how)
  local part = M.portion(s, how)
  local lines = M.split_lines(part)
  local end_col = how == 'all' and s.end_col or s.col
  local last = lines[#lines]
  local cursor_row = s.row + #lines - 1
  local cursor_col = (#lines == 1) and (s.col + #last) or #last
  return {
    row = s.row,
    start_col = s.col,
    end_row = s.row,
    end_col = end_col,
    lines = lines,
    cursor = { cursor_row, cursor_col },
  }
end

--- What stays of the suggestion after accepting `how` much of it (nil when all of it was taken).
function M.after_accept(s, how)
  local part = M.portion(s, how)
  local rest = s.ghost:sub(#part + 1)
  if how == 'all' or rest == '' then
    return nil
  end
  local edit = M.accept_edit(s, how)
  local ghost_lines = M.split_lines(rest)
  return {
    row = edit.cursor[1],
    col = edit.cursor[2],
    start_col = edit.cursor[2],
    end_col = edit.cursor[2] + (s.end_col - s.col),
    text = rest,
    ghost = rest,
    first = ghost_lines[1],
    rest = { unpack(ghost_lines, 2) },
  }
end

--- Whether a completion for this buffer is wanted: `enable` maps filetypes (or '*') to true/false.
--- The suggestion after the user typed on the same line: `line` is the cursor's line now, `col` the cursor.
--- Returns the rest of the same suggestion when what was typed since it was shown is its beginning, else
--- nil (then the ghost goes). Lets the ghost stay on screen, shortened, while the user types it.
function M.advance(s, line, col)
  if col == s.col and line:sub(1, s.col) == line:sub(1, col) then
    return s
  end
  if col < s.col then
    return nil
  end
  local typed = line:sub(s.col + 1, col)
  if typed:find('\n', 1, true) or s.ghost:sub(1, #typed) ~= typed then
    return nil
  end
  local ghost = s.ghost:sub(#typed + 1)
  if ghost == '' then
    return nil
  end
  local ghost_lines = M.split_lines(ghost)
  return {
    row = s.row,
    col = col,
    start_col = col,
    end_col = col + (s.end_col - s.col),
    text = ghost,
    ghost = ghost,
    first = ghost_lines[1],
    rest = { unpack(ghost_lines, 2) },
  }
end

--- A completion-menu entry for `text` (what replaces the line from the entry's start column): Vim's menu
--- inserts a word as one line (a newline in it becomes a NUL byte), so the word is the first line and the
--- other lines travel in `user_data` for the CompleteDone handler to insert as real lines.
function M.menu_entry(text, abbr)
  local lines = M.split_lines(text)
  local entry = { word = lines[1], abbr = abbr, menu = '[Code Llama]', icase = 1, dup = 1, empty = 0 }
  if #lines > 1 then
    entry.user_data = { codellama_lines = { unpack(lines, 2) } }
    entry.info = text
  end
  return entry
end

function M.enabled_for(enable, filetype)
  if type(enable) ~= 'table' then
    return enable ~= false
  end
  if enable[filetype] ~= nil then
    return enable[filetype] == true
  end
  if enable['*'] ~= nil then
    return enable['*'] == true
  end
  return true
end

--- The longest advised debounce taken from a server, in ms.
M.MAX_ADVISED_DEBOUNCE_MS = 2000

--- The debounce (ms) before an automatic request. In: the `debounce_ms` option, the latest
--- `codellama/status` params (nil before one arrived; its `debounceMs` is the server's advice, used only when
--- it is a finite number >= 0, capped at 2000) and the `adaptive_debounce` option. Out: the configured
--- debounce is the floor; the advice may only lengthen it (when the server's answers take longer than the
--- gaps between keys, requests sent during a burst would be superseded before they finish).
function M.debounce_ms(configured, status, adaptive)
  if not adaptive or type(status) ~= 'table' then
    return configured
  end
  local advised = status.debounceMs
  -- NaN fails `>= 0`; infinity is not a usable wait.
  if type(advised) ~= 'number' or not (advised >= 0) or advised == math.huge then
    return configured
  end
  return math.max(configured, math.min(math.floor(advised + 0.5), M.MAX_ADVISED_DEBOUNCE_MS))
end

--- Whether a cursor resting on `row` of `uri` is news for the server (a `cursor` event, whose place it
--- prefills before the first key there). In: the last place told ({uri, row} or nil). Out: false on the row
--- last told (typing moves the cursor on every key; the server itself ignores places near the last one).
function M.cursor_moved(last, uri, row)
  return type(last) ~= 'table' or last.uri ~= uri or last.row ~= row
end

--- How long the cursor must rest in `bufnr` before the server is told where (milliseconds), and the buffer whose
--- entering is still to be told. Entering a buffer (`entered`) is told at once: the person is going to type there,
--- and the server prefills that place meanwhile; the CursorMoved that comes with the entering keeps that timer
--- (nil: leave the running timer alone). A move within a buffer waits `rest_ms`.
function M.cursor_wait(pending, bufnr, entered, rest_ms)
  if entered then
    return 0, bufnr
  end
  if pending == bufnr then
    return nil, pending
  end
  return rest_ms, nil
end

--- `text` cut to `width` characters from the right, with "..." where it was cut (the start, where the
--- state is, always stays).
function M.truncate(text, width)
  local n = vim.fn.strchars(text)
  if not width or n <= width then
    return text
  end
  return vim.fn.strcharpart(text, 0, math.max(width - 3, 1)) .. '...'
end

--- "4.1 GB", "37 MB": sizes as downloads are quoted (decimal).
function M.format_bytes(n)
  if n >= 1e9 then
    return ('%.1f GB'):format(n / 1e9)
  elseif n >= 1e6 then
    return ('%d MB'):format(math.floor(n / 1e6 + 0.5))
  end
  return ('%d kB'):format(math.max(1, math.floor(n / 1e3 + 0.5)))
end

local function num(v)
  return type(v) == 'number' and v == v and v >= 0 and v ~= math.huge and v or nil
end

--- :CodellamaModel's list from the server's `codellama/models` answer: one choice per GGUF on this machine and per
--- known Code Llama file on the Hub not cached yet, each { spec, text, warning?, broken }. `warning` (too big for the
--- memory available now, or no FIM tokens) is asked about before the model is used; `broken` files cannot be.
function M.model_choices(models)
  if type(models) ~= 'table' or not num(models.nCtx) then
    return {}
  end
  local out = {}
  local function add(e, hub)
    if type(e) ~= 'table' or type(e.spec) ~= 'string' or e.spec == '' or (hub and e.cached == true) then
      return
    end
    local name = e.spec == 'demo' and 'demo' or (e.spec:match('[^/\\:]+$') or e.spec)
    local facts = {}
    if type(e.quantization) == 'string' then
      table.insert(facts, e.quantization)
    end
    local size = num(hub and e.downloadBytes or e.sizeBytes)
    if size then
      table.insert(facts, M.format_bytes(size) .. (hub and ' download' or ''))
    end
    if num(e.nCtxTrain) then
      table.insert(facts, ('trained %d'):format(e.nCtxTrain))
    end
    table.insert(facts, e.fim == true and 'FIM' or 'no FIM')
    local ctx = math.min(models.nCtx, num(e.nCtxTrain) or models.nCtx)
    if num(e.memoryBytes) then
      table.insert(facts, ('needs ~%s at %d tokens'):format(M.format_bytes(e.memoryBytes), ctx))
    end
    local where = hub and 'hub' or (e.source == 'huggingface' and 'hf cache' or e.source == 'demo' and 'shipped' or 'file')
    local warnings = {}
    if e.fits == false then
      local free = num(models.memoryBytes) and ('the ' .. M.format_bytes(models.memoryBytes) .. ' available now') or 'what is available now'
      table.insert(warnings, ('%s needs about %s of memory at %d tokens, more than %s'):format(name, M.format_bytes(e.memoryBytes or 0), ctx, free))
    end
    local broken = type(e.error) == 'string' and e.error ~= ''
    if e.fim ~= true and not broken then
      table.insert(warnings, name .. ' has no fill-in-the-middle tokens: completions will use only the text before the cursor')
    end
    local mark = broken and '(broken) ' or e.fits == false and '(too big) ' or ''
    local text = ('%s%s  [%s]  %s'):format(mark, name, where, broken and e.error or table.concat(facts, ' · '))
    table.insert(out, { spec = e.spec, text = text, warning = #warnings > 0 and table.concat(warnings, '. ') or nil, broken = broken })
  end
  for _, e in ipairs(type(models['local']) == 'table' and models['local'] or {}) do
    add(e, false)
  end
  for _, e in ipairs(type(models.known) == 'table' and models.known or {}) do
    add(e, true)
  end
  return out
end

--- One status line from a `codellama/status` notification's params.
function M.status_text(status)
  if type(status) ~= 'table' or type(status.state) ~= 'string' then
    return 'codellama: starting'
  end
  -- answers cut by the time budget: the server's words ("answers cut at 2.0 s") instead of "ready", and its hint
  local slow = status.state == 'ready' and type(status.slow) == 'string' and status.slow ~= ''
  local parts = { 'codellama: ' .. (slow and ('slow: ' .. status.slow) or status.state) }
  -- a download or a load: its percentage, and the server's words ("downloading f.gguf: 12.5 of 36.9 MB, 3.1 MB/s")
  local pct = status.percentage
  if status.state == 'loading' and type(pct) == 'number' and pct == pct then
    parts[1] = ('codellama: loading %d%%'):format(math.max(0, math.min(100, math.floor(pct + 0.5))))
  end
  if type(status.model) == 'string' and status.model ~= '' then
    table.insert(parts, ((status.model:match('[^/\\:]+$') or status.model):gsub('%.gguf$', '')))
  end
  if slow and type(status.hint) == 'string' and status.hint ~= '' then
    table.insert(parts, status.hint)
  elseif status.state == 'ready' and type(status.lastLatencyMs) == 'number' then
    table.insert(parts, ('%d ms'):format(math.floor(status.lastLatencyMs + 0.5)))
  end
  if (status.state == 'error' or status.state == 'loading') and type(status.message) == 'string' and status.message ~= '' then
    table.insert(parts, status.message)
  end
  return table.concat(parts, ' | ')
end

return M
