-- A tiny test runner for headless Neovim (0.7 has no busted, and the plugin must not need one).
-- Usage: nvim --headless --clean -u NONE --cmd 'set rtp^=nvim-client' -c 'luafile nvim-client/tests/test_logic.lua'
-- Each test file calls `T.test(name, fn)` and then `T.finish()`, which writes one line per test to
-- $CODELLAMA_TEST_OUT (or stderr) and quits with status 1 if any failed.
local T = { results = {}, failed = 0 }

function T.eq(actual, expected, what)
  if not vim.deep_equal(actual, expected) then
    error(('%s: expected %s, got %s'):format(what or 'value', vim.inspect(expected), vim.inspect(actual)), 2)
  end
end

function T.test(name, fn)
  local ok, err = pcall(fn)
  table.insert(T.results, (ok and 'ok ' or 'FAIL ') .. name .. (ok and '' or (': ' .. tostring(err))))
  if not ok then
    T.failed = T.failed + 1
  end
end

function T.finish()
  local out = table.concat(T.results, '\n') .. '\n'
  local path = os.getenv('CODELLAMA_TEST_OUT')
  if path then
    local f = assert(io.open(path, 'w'))
    f:write(out)
    f:close()
  else
    io.stderr:write(out)
  end
  vim.cmd(T.failed > 0 and 'cquit 1' or 'qall!')
end

return T
