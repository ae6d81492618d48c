-- :CodellamaModel without an argument against the real codellama-lsp, run by tests/test_editors_nvim.py.
--
-- In: $CODELLAMA_E2E, a JSON file: {cmd, settings, file, pick_warned, pick_ok, out}; Neovim's cwd holds GGUFs.
-- Out: a JSON report at `out`: the lines vim.ui.select showed, the confirm() question asked for a model
-- with a warning (answered "Cancel"), the models set (M.set calls), and the status after the chosen model
-- loaded. vim.ui.select and vim.fn.confirm are replaced by recorders that answer as a user would: they are
-- the editor's own dialogs, which a headless Neovim cannot click. Assertions live in the Python test.
local cfg = vim.fn.json_decode(table.concat(vim.fn.readfile(os.getenv('CODELLAMA_E2E')), '\n'))
local report = { shown = {}, asked = {}, set = {} }

local function finish(err)
  report.error = err
  vim.fn.writefile({ vim.fn.json_encode(report) }, cfg.out)
  vim.cmd(err and 'cquit 1' or 'qall!')
end

local co
local function wait(what, cond, timeout_ms)
  local deadline = vim.loop.hrtime() + (timeout_ms or 120000) * 1e6
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

co = coroutine.create(function()
  local ok, err = pcall(function()
    vim.cmd('filetype on')
    local cl = require('codellama')
    cl.setup({ cmd = cfg.cmd, settings = cfg.settings })
    vim.cmd('edit ' .. vim.fn.fnameescape(cfg.file))
    wait('the server to be ready', function()
      local s = cl.status()
      return s and s.state == 'ready'
    end)
    local set = cl.set
    cl.set = function(settings)
      table.insert(report.set, settings.model)
      return set(settings)
    end
    vim.fn.confirm = function(msg)
      table.insert(report.asked, msg)
      return 2 -- "Cancel"
    end
    local function pick(want)
      local done = false
      vim.ui.select = function(items, opts, on_choice)
        report.prompt = opts.prompt
        local chosen
        for _, item in ipairs(items) do
          local line = opts.format_item(item)
          table.insert(report.shown, line)
          if not chosen and line:find(want, 1, true) then
            chosen = item
          end
        end
        on_choice(chosen)
        done = true
      end
      vim.cmd('CodellamaModel')
      wait('the picker', function()
        return done
      end)
    end
    pick(cfg.pick_warned) -- a model without FIM tokens: asked about, cancelled
    report.shown_first = vim.deepcopy(report.shown)
    report.shown = {}
    pick(cfg.pick_ok) -- a small local GGUF: set at once, loaded by the server
    report.status = wait('the chosen model to load', function()
      local s = cl.status()
      return s and s.state == 'ready' and s.model ~= cfg.settings.model and s
    end)
    report.statusline = cl.statusline()
  end)
  finish(not ok and tostring(err) or nil)
end)
assert(coroutine.resume(co))
