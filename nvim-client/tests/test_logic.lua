-- Unit tests of lua/codellama/logic.lua: the ghost-text computations Neovim 0.7 cannot draw itself.
package.path = vim.fn.fnamemodify(debug.getinfo(1, 'S').source:sub(2), ':h') .. '/?.lua;' .. package.path
local T = require('run')
local L = require('codellama.logic')

local function pos(line, character)
  return { line = line, character = character }
end

T.test('utf-16 and utf-32 columns to bytes and back', function()
  local line = 'x = "é😀" + y' -- é: 2 bytes / 1 unit; 😀: 4 bytes / 2 UTF-16 units, 1 UTF-32 unit
  T.eq(L.to_byte(line, 5, 'utf-16'), 5, 'before é')
  T.eq(L.to_byte(line, 6, 'utf-16'), 7, 'after é')
  T.eq(L.to_byte(line, 8, 'utf-16'), 11, 'after the emoji (utf-16)')
  T.eq(L.to_byte(line, 7, 'utf-32'), 11, 'after the emoji (utf-32)')
  T.eq(L.to_byte(line, 99, 'utf-16'), #line, 'clamped')
  T.eq(L.to_byte(line, 3, 'utf-8'), 3, 'utf-8 is bytes')
  T.eq(L.to_units(line, 11, 'utf-16'), 8)
  T.eq(L.to_units(line, 11, 'utf-32'), 7)
  T.eq(L.to_units('中文ab', 6, 'utf-16'), 2, 'CJK')
end)

T.test('split lines keeps empty pieces and drops CR', function()
  T.eq(L.split_lines('a\r\nb\n'), { 'a', 'b', '' })
  T.eq(L.split_lines('one'), { 'one' })
end)

T.test('item text from inline and completion items', function()
  T.eq(L.item_text({ insertText = 'abc' }), 'abc')
  T.eq(L.item_text({ insertText = { kind = 'snippet', value = 'x' } }), 'x')
  T.eq(L.item_text({ label = 'lbl', textEdit = { newText = 'full text', range = {} } }), 'full text')
  T.eq(L.item_text({ label = 'lbl' }), 'lbl')
  T.eq(#L.items({ items = { {}, {} } }), 2)
  T.eq(#L.items({ {} }), 1)
  T.eq(#L.items(vim.NIL), 0)
end)

T.test('suggestion at the end of a line: first line inline, rest as virtual lines', function()
  local lines = { 'def add(a, b):', '    ret' }
  local s = L.suggestion({ insertText = 'urn a + b\n\nprint(1)', range = { start = pos(1, 7), ['end'] = pos(1, 7) } }, { 1, 7 }, lines, 'utf-16')
  T.eq(s.first, 'urn a + b')
  T.eq(s.rest, { '', 'print(1)' })
  T.eq({ s.row, s.col, s.start_col, s.end_col }, { 1, 7, 7, 7 })
end)

T.test('a range that starts before the cursor: the ghost is what was not typed yet', function()
  local lines = { '    ret' }
  local s = L.suggestion({ insertText = '    return x', range = { start = pos(0, 0), ['end'] = pos(0, 7) } }, { 0, 7 }, lines, 'utf-16')
  T.eq(s.ghost, 'urn x')
  T.eq(s.start_col, 0)
  -- text that does not continue what was typed is not shown
  T.eq(L.suggestion({ insertText = 'foo', range = { start = pos(0, 0), ['end'] = pos(0, 7) } }, { 0, 7 }, lines, 'utf-16'), nil)
  -- a range on another line, whitespace-only text: nothing
  T.eq(L.suggestion({ insertText = 'x', range = { start = pos(3, 0), ['end'] = pos(3, 0) } }, { 0, 7 }, lines, 'utf-16'), nil)
  T.eq(L.suggestion({ insertText = '  \n ' }, { 0, 7 }, lines, 'utf-16'), nil)
end)

T.test('ranges in UTF-16 after emoji and CJK map to byte columns', function()
  local lines = { 's = "😀中" + na' } -- cursor after "na": bytes 4+1+4+3+1+3+2 = ...
  local col = #lines[1]
  local units = L.to_units(lines[1], col, 'utf-16')
  local s = L.suggestion({ insertText = 'me', range = { start = pos(0, units), ['end'] = pos(0, units) } }, { 0, col }, lines, 'utf-16')
  T.eq(s.col, col)
  T.eq(s.first, 'me')
end)

T.test('accepting all replaces the range and puts the cursor after the text', function()
  local s = L.suggestion({ insertText = 'urn a + b\n    x = 1' }, { 1, 7 }, { '', '    ret' }, 'utf-16')
  local e = L.accept_edit(s, 'all')
  T.eq(e.lines, { 'urn a + b', '    x = 1' })
  T.eq({ e.row, e.start_col, e.end_row, e.end_col }, { 1, 7, 1, 7 })
  T.eq(e.cursor, { 2, 9 })
  T.eq(L.after_accept(s, 'all'), nil)
end)

T.test('accepting a word, then a line, keeps the rest as the new suggestion', function()
  local s = L.suggestion({ insertText = 'urn a + b\nnext' }, { 0, 7 }, { '    ret' }, 'utf-16')
  T.eq(L.portion(s, 'word'), 'urn')
  local rest = L.after_accept(s, 'word')
  T.eq({ rest.row, rest.col, rest.ghost }, { 0, 10, ' a + b\nnext' })
  T.eq(L.portion(rest, 'word'), ' a')
  T.eq(L.portion(rest, 'line'), ' a + b')
  local after_line = L.after_accept(rest, 'line')
  T.eq(after_line.ghost, '\nnext')
  T.eq(L.portion(after_line, 'line'), '\n')
  local e = L.accept_edit(after_line, 'line')
  T.eq(e.lines, { '', '' })
  T.eq(e.cursor, { 1, 0 })
  T.eq(L.portion({ ghost = '(x)' }, 'word'), '(')
end)

T.test('per-filetype enablement and the status line', function()
  T.eq(L.enabled_for({ ['*'] = false, python = true }, 'python'), true)
  T.eq(L.enabled_for({ ['*'] = false, python = true }, 'lua'), false)
  T.eq(L.enabled_for({ markdown = false }, 'rust'), true)
  T.eq(L.enabled_for(false, 'rust'), false)
  T.eq(L.status_text(nil), 'codellama: starting')
  T.eq(L.status_text({ state = 'ready', model = '/m/micro.gguf', lastLatencyMs = 41.6 }), 'codellama: ready | micro | 42 ms')
  T.eq(L.status_text({ state = 'error', message = 'expected a GGUF file', lastLatencyMs = vim.NIL }), 'codellama: error | expected a GGUF file')
  T.eq(L.status_text({ state = 'loading', model = 'demo' }), 'codellama: loading | demo')
  local downloading = 'downloading f.gguf: 12.5 of 36.9 MB, 3.1 MB/s'
  T.eq(L.status_text({ state = 'loading', model = 'o/r:f.gguf', percentage = 34, message = downloading }),
    'codellama: loading 34% | f | ' .. downloading)
  T.eq(L.status_text({ state = 'loading', model = 'demo', percentage = vim.NIL }), 'codellama: loading | demo')
  T.eq(L.status_text({ state = 'loading', model = 'demo', percentage = 0 / 0 }), 'codellama: loading | demo', 'NaN')
  -- answers cut by the time budget: "slow" in words with the server's hint, instead of "ready"
  local slow = { state = 'ready', model = 'demo', lastLatencyMs = 2004, cutAnswers = 3, slow = 'answers cut at 2.0 s', hint = 'try a smaller model' }
  T.eq(L.status_text(slow), 'codellama: slow: answers cut at 2.0 s | demo | try a smaller model')
  T.eq(L.status_text({ state = 'ready', slow = 'answers cut at 0.6 s (adaptive)' }), 'codellama: slow: answers cut at 0.6 s (adaptive)')
  T.eq(L.status_text({ state = 'busy', slow = 'answers cut at 2.0 s' }), 'codellama: busy')
  T.eq(L.status_text({ state = 'ready', slow = vim.NIL, lastLatencyMs = 90 }), 'codellama: ready | 90 ms')
end)

T.test('a long status is cut at its end, so the state stays visible', function()
  local long = L.status_text({ state = 'error', message = ('x'):rep(200) })
  local cut = L.truncate(long, 40)
  T.eq(#cut, 40)
  T.eq(cut:sub(1, 17), 'codellama: error ')
  T.eq(cut:sub(-3), '...')
  T.eq(L.truncate('codellama: ready', 40), 'codellama: ready')
end)

T.test('typing what the ghost shows advances it; anything else ends it', function()
  local s = L.suggestion({ insertText = ' width < 0:\n        raise' }, { 0, 6 }, { '    if' }, 'utf-16')
  local a = L.advance(s, '    if w', 8)
  T.eq(a.first, 'idth < 0:')
  T.eq(a.rest, { '        raise' })
  T.eq(L.advance(a, '    if w', 8), a, 'no move: the same')
  T.eq(L.advance(s, '    if x', 8), nil, 'typed something else')
  T.eq(L.advance(s, '    i', 5), nil, 'moved back')
end)

T.test("the server's advised debounce only lengthens the configured one", function()
  T.eq(L.debounce_ms(150, { state = 'ready', debounceMs = 280 }, true), 280, 'slow server: wait for a pause')
  T.eq(L.debounce_ms(150, { state = 'ready', debounceMs = 0 }, true), 150, 'a fast server never shortens it')
  T.eq(L.debounce_ms(0, { debounceMs = 99.6 }, true), 100, 'rounded')
  T.eq(L.debounce_ms(150, { debounceMs = 280 }, false), 150, 'adaptive_debounce off')
  T.eq(L.debounce_ms(150, nil, true), 150, 'no status yet')
  T.eq(L.debounce_ms(150, { state = 'ready' }, true), 150, 'missing')
  T.eq(L.debounce_ms(150, { debounceMs = vim.NIL }, true), 150, 'JSON null')
  T.eq(L.debounce_ms(150, { debounceMs = -500 }, true), 150, 'negative')
  T.eq(L.debounce_ms(150, { debounceMs = 0 / 0 }, true), 150, 'NaN')
  T.eq(L.debounce_ms(150, { debounceMs = math.huge }, true), 150, 'infinite')
  T.eq(L.debounce_ms(150, { debounceMs = '300' }, true), 150, 'a string')
  T.eq(L.debounce_ms(150, { debounceMs = 1e9 }, true), 2000, 'huge: capped')
end)

T.test('the plugin loads and sets up without a server on PATH', function()
  local cl = require('codellama')
  cl.setup({ cmd = { 'codellama-lsp-that-does-not-exist', '--stdio' }, filetypes = { 'python' } })
  T.eq(vim.fn.exists(':CodellamaStatus'), 2)
  T.eq(vim.fn.exists(':CodellamaComplete'), 2)
  T.eq(cl.statusline(), 'codellama: starting')
  T.eq(cl.mode(), vim.fn.has('nvim-0.10') == 1 and 'ghost' or 'omnifunc')
end)


T.test('typing what the ghost shows keeps the rest of it; anything else drops it', function()
  local lines = { '    ret' }
  local s = L.suggestion({ insertText = 'urn x\n    y' }, { 0, 7 }, lines, 'utf-16')
  local a = L.advance(s, '    retu', 8)
  T.eq(a.ghost, 'rn x\n    y')
  T.eq(a.first, 'rn x')
  T.eq(a.rest, { '    y' })
  T.eq(a.col, 8)
  T.eq(L.advance(a, '    retur', 9).first, 'n x')
  T.eq(L.advance(s, '    retx', 8), nil, 'typed something else')
  T.eq(L.advance(s, '    re', 6), nil, 'deleted')
  T.eq(L.advance(s, '    return x', 12).rest, { '    y' }, 'the first line typed in full: the other lines stay')
  T.eq(L.advance(s, '    ret', 7), s, 'nothing typed')
end)

T.test('menu entries never carry a newline: extra lines go to user_data', function()
  local e = L.menu_entry('if x:\n        y()\n    z', 'if x:')
  T.eq(e.word, 'if x:')
  T.eq(e.user_data, { codellama_lines = { '        y()', '    z' } })
  T.eq(e.word:find('\n'), nil)
  local one = L.menu_entry('return 1', 'return 1')
  T.eq(one.word, 'return 1')
  T.eq(one.user_data, nil)
end)


T.test(':CodellamaModel choices from the server\'s codellama/models answer', function()
  local models = {
    nCtx = 4096,
    kvType = 'f16',
    memoryBytes = 8e9,
    ['local'] = {
      { spec = 'demo', source = 'demo', sizeBytes = 8448128, quantization = 'F16', nCtxTrain = 4096, fim = true, memoryBytes = 3e8, fits = true },
      { spec = '/m/broken.gguf', source = 'folder', sizeBytes = 24, fim = false, error = 'expected a GGUF header' },
      { spec = 7 },
    },
    known = {
      { spec = 'TheBloke/CodeLlama-7B-GGUF:codellama-7b.Q4_K_M.gguf', quantization = 'Q4_K_M', downloadBytes = 4.09e9, memoryBytes = 6.5e9, nCtxTrain = 16384, fim = true, fits = true, cached = false },
      { spec = 'TheBloke/CodeLlama-34B-GGUF:codellama-34b.Q8_0.gguf', quantization = 'Q8_0', downloadBytes = 35.9e9, memoryBytes = 37e9, nCtxTrain = 16384, fim = false, fits = false, cached = false },
      { spec = 'o/r:cached.gguf', fim = true, cached = true },
    },
  }
  local c = L.model_choices(models)
  T.eq(#c, 4, 'the bad entry and the cached Hub file are left out')
  T.eq(c[1].text, 'demo  [shipped]  F16 · 8 MB · trained 4096 · FIM · needs ~300 MB at 4096 tokens')
  T.eq(c[1].warning, nil)
  T.eq(c[2].broken, true)
  T.eq(c[2].text, '(broken) broken.gguf  [file]  expected a GGUF header')
  T.eq(c[3].text, 'codellama-7b.Q4_K_M.gguf  [hub]  Q4_K_M · 4.1 GB download · trained 16384 · FIM · needs ~6.5 GB at 4096 tokens')
  T.eq(c[4].text:sub(1, 10), '(too big) ')
  T.eq(
    c[4].warning,
    'codellama-34b.Q8_0.gguf needs about 37.0 GB of memory at 4096 tokens, more than the 8.0 GB available now. '
      .. 'codellama-34b.Q8_0.gguf has no fill-in-the-middle tokens: completions will use only the text before the cursor'
  )
  T.eq(L.model_choices(vim.NIL), {})
  T.eq(L.format_bytes(36879616), '37 MB')
end)

T.test('a cursor event only when the cursor rests on another row or buffer', function()
  T.eq(L.cursor_moved(nil, 'file:///a.py', 3), true, 'nothing told yet')
  T.eq(L.cursor_moved({ uri = 'file:///a.py', row = 3 }, 'file:///a.py', 3), false, 'the same row')
  T.eq(L.cursor_moved({ uri = 'file:///a.py', row = 3 }, 'file:///a.py', 4), true, 'another row')
  local wait, pending = L.cursor_wait(nil, 5, true, 300)
  T.eq({ wait, pending }, { 0, 5 }, 'entering a buffer: told at once')
  wait, pending = L.cursor_wait(5, 5, false, 300)
  T.eq({ wait, pending }, { nil, 5 }, 'the CursorMoved of that entering keeps the timer')
  wait, pending = L.cursor_wait(nil, 5, false, 300)
  T.eq({ wait, pending }, { 300, nil }, 'a move within the buffer rests first')
  wait, pending = L.cursor_wait(5, 7, false, 300)
  T.eq({ wait, pending }, { 300, nil }, 'a move in another buffer rests first')
  T.eq(L.cursor_moved({ uri = 'file:///a.py', row = 3 }, 'file:///b.py', 3), true, 'another buffer')
end)

T.finish()
