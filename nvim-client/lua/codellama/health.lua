-- :checkhealth codellama - what a user checks when completions do not come.
--
-- In: the plugin's state (options, client, last status). Out: one report: the Neovim version and the
-- completion path it gets, the server command found (and the version the running server told), the
-- model's state, the settings sent, and keys or plugins that compete with ours (<Tab> mappings, nvim-cmp,
-- blink.cmp, 'completeopt' for the menu path).
local M = {}

-- 0.10+ has vim.health.start/ok/...; 0.7 - 0.9 the `health` module's report_* functions.
local h = vim.health or require('health')
local start = h.start or h.report_start
local ok = h.ok or h.report_ok
local warn = h.warn or h.report_warn
local err = h.error or h.report_error
local info = h.info or h.report_info

function M.check()
  local cl = require('codellama')
  local opts = cl.options and cl.options() or nil
  start('codellama: setup')
  if not opts then
    err("setup() has not run: call require('codellama').setup({...}) in init.lua")
    return
  end
  local v = vim.version()
  ok(('Neovim %d.%d.%d: completions through %s'):format(v.major, v.minor, v.patch, ({
    builtin = 'the built-in inline completion',
    ghost = "the plugin's ghost text",
    omnifunc = 'the menu (<C-x><C-o>, <C-y> accepts)',
  })[cl.mode()]))
  if opts.auto_trigger == false then
    info('manual mode (auto_trigger = false): ' .. tostring(opts.keymaps.trigger) .. ' asks for a completion')
  end

  start('codellama: server')
  local program = opts.cmd[1]
  local path = vim.fn.exepath(program)
  if path == '' then
    err(('%s not found (not executable or not on PATH)'):format(program), { 'set cmd in setup(), e.g. { "/path/to/.venv/bin/codellama-lsp", "--stdio" }' })
  else
    ok(('server command: %s (%s)'):format(table.concat(opts.cmd, ' '), path))
  end
  local client = cl.client()
  if client then
    local si = client.server_info -- 0.8+ keeps the server's name and version from `initialize`
    if si then
      ok(('running: %s %s (pid %s)'):format(si.name or '?', si.version or '', tostring(client.rpc and client.rpc.pid or '?')))
    else
      ok('running: codellama-lsp (this Neovim does not keep the version the server told)')
    end
  else
    warn('no server running (it starts with the first buffer of an enabled filetype)')
  end
  local status = cl.status()
  local line = cl.statusline(200)
  if status and status.state == 'error' then
    err(line, { ':CodellamaLog shows the server log' })
  elseif status and status.state == 'ready' then
    ok(line)
  else
    info(line)
  end

  start('codellama: settings')
  info('sent to the server: ' .. vim.inspect(cl.server_settings(), { newline = ' ', indent = '' }))

  start('codellama: other plugins and keys')
  local tab = vim.fn.maparg('<Tab>', 'i', false, true)
  if type(tab) == 'table' and not vim.tbl_isempty(tab) and tab.desc ~= 'codellama' then
    info(('a global insert-mode <Tab> mapping exists (%s): ours runs first in attached buffers and calls it when no ghost is shown'):format(tab.rhs or 'a Lua function'))
  end
  for _, name in ipairs({ 'cmp', 'blink.cmp', 'copilot', 'codeium', 'supermaven-nvim' }) do
    if package.loaded[name] then
      if name == 'cmp' or name == 'blink.cmp' then
        if opts.completion_items then
          warn(name .. ' is loaded and completion_items = true: it asks the model on every key on top of the ghost text')
        else
          ok(name .. ' is loaded; our items stay out of its menu (completion_items = false)')
        end
      else
        warn(name .. ' is loaded: two sources of ghost text compete for <Tab>')
      end
    end
  end
  if cl.mode() == 'omnifunc' then
    info("'completeopt' is " .. vim.o.completeopt .. ": the plugin adds menuone while its menu is open, so <C-y> always accepts")
  end
end

return M
