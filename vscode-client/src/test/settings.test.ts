import assert from 'node:assert/strict';
import { test } from 'node:test';
import { findProgram, launchSpec, LaunchError } from '../launch';
import { DEFAULT_DEBOUNCE_MS, clientSwitches, effectiveDebounceMs, languageEnabled, serverSettings } from '../settings';

const getter = (values: Record<string, unknown>) => (key: string) => values[key];

test('server settings: defaults leave the choice to the server', () => {
  const s = serverSettings(getter({}));
  assert.equal(s.model, 'demo');
  assert.equal(s.contextTokens, undefined);
  assert.deepEqual(s.enable, { '*': true, plaintext: false, markdown: false, scminput: false });
});

test('server settings: every setting is sent camelCase and typed', () => {
  const s = serverSettings(
    getter({
      model: ' /models/codellama-7b.Q4_K_M.gguf ',
      contextWindow: 4096,
      contextTokens: 1024,
      prefixRatio: 0.5,
      maxTokens: 32,
      temperature: 0.2,
      maxCandidates: 4,
      timeBudgetMs: 800,
      fimOrder: 'psm',
      enabledLanguages: { '*': false, python: true },
      gpuLayers: -1,
    }),
  );
  // The server's wire names (lsp_server/config.py); load-time sizes are not among them.
  assert.deepEqual(s, {
    model: '/models/codellama-7b.Q4_K_M.gguf',
    contextTokens: 1024,
    prefixRatio: 0.5,
    maxTokens: 32,
    temperature: 0.2,
    maxItems: 4,
    timeBudgetMs: 800,
    fimOrder: 'psm',
    enable: { '*': false, python: true },
  });
});

test('server settings: wrongly typed values are dropped, not sent', () => {
  const s = serverSettings(getter({ contextTokens: 8, prefixRatio: 2, maxTokens: 'many', temperature: -1, fimOrder: 'mps', enabledLanguages: { python: 'yes', go: true } }));
  assert.deepEqual(s, { model: 'demo', enable: { go: true } });
});

test('server settings: remote engine settings go to the server; the API key never does', () => {
  const s = serverSettings(
    getter({ engine: 'llama-server', url: ' https://gpu-box:8080 ', apiKeyEnv: 'TEAM_KEY', requestTimeoutMs: 2500, tlsVerify: false, remoteModel: '' }),
  );
  assert.equal(s.engine, 'llama-server');
  assert.equal(s.url, 'https://gpu-box:8080');
  assert.equal(s.apiKeyEnv, 'TEAM_KEY');
  assert.equal(s.requestTimeoutMs, 2500);
  assert.equal(s.tlsVerify, false);
  assert.equal(s.remoteModel, undefined);
  assert.equal(serverSettings(getter({ engine: 'vllm', requestTimeoutMs: 5 })).engine, undefined);
});

test('server settings: extra context, exclusions and rules go to the server under its names', () => {
  const s = serverSettings(getter({ extraContextTokens: 0, exclude: [' *.secret ', '', 3, 'build/*.py'], rules: { parseCheck: false, balance: true, bogus: false, mode: 'no' } }));
  assert.equal(s.extraContextTokens, 0);
  assert.deepEqual(s.exclude, ['*.secret', 'build/*.py']);
  assert.deepEqual(s.rules, { parseCheck: false, balance: true });
  const none = serverSettings(getter({ extraContextTokens: -1, exclude: 'x', rules: ['parseCheck'] }));
  assert.equal(none.extraContextTokens, undefined);
  assert.equal(none.exclude, undefined);
  assert.equal(none.rules, undefined);
});

test('per-language enablement: own entry, then "*", then on', () => {
  assert.equal(languageEnabled({ '*': false, python: true }, 'python'), true);
  assert.equal(languageEnabled({ '*': false, python: true }, 'rust'), false);
  assert.equal(languageEnabled({ markdown: false }, 'markdown'), false);
  assert.equal(languageEnabled({}, 'go'), true);
  assert.equal(clientSwitches(getter({ enable: false })).enable, false);
  assert.equal(clientSwitches(getter({})).enable, true);
});

test('the on/off switch reaches the server as its per-language map', () => {
  assert.deepEqual(serverSettings(getter({ enable: false, enabledLanguages: { python: true } })).enable, { '*': false });
  assert.deepEqual(serverSettings(getter({ enable: true, enabledLanguages: { python: false } })).enable, { python: false });
});

test('client switches: debounce and the suggestion list default to what VS Code users expect', () => {
  assert.deepEqual(clientSwitches(getter({})), {
    enable: true,
    enabledLanguages: { '*': true, plaintext: false, markdown: false, scminput: false },
    debounceMs: DEFAULT_DEBOUNCE_MS,
    adaptiveDebounce: true,
    suggestList: false,
    autoTrigger: true,
  });
  assert.equal(clientSwitches(getter({ autoTrigger: false })).autoTrigger, false, 'manual mode');
  assert.equal(clientSwitches(getter({ debounceMs: 0 })).debounceMs, 0);
  assert.equal(clientSwitches(getter({ debounceMs: -5 })).debounceMs, DEFAULT_DEBOUNCE_MS);
  assert.equal(clientSwitches(getter({ suggestList: true })).suggestList, true);
  assert.equal(clientSwitches(getter({ adaptiveDebounce: false })).adaptiveDebounce, false);
  assert.equal(clientSwitches(getter({ adaptiveDebounce: 'no' })).adaptiveDebounce, true, 'only false turns it off');
});

test('effective debounce: the configured one is the floor, the advice may only lengthen it', () => {
  assert.equal(effectiveDebounceMs(150, 280, true), 280, 'slow server: wait for the user to slow down');
  assert.equal(effectiveDebounceMs(150, 0, true), 150, 'a fast server never shortens the setting');
  assert.equal(effectiveDebounceMs(150, 100, true), 150);
  assert.equal(effectiveDebounceMs(150, undefined, true), 150, 'no advice yet');
  assert.equal(effectiveDebounceMs(0, 120, true), 120);
  assert.equal(effectiveDebounceMs(150, 280, false), 150, 'adaptiveDebounce off: the setting alone');
  assert.equal(effectiveDebounceMs(0, 280, false), 0);
});

test('launch: default command gets --stdio and extra args', () => {
  const onPath = { isFile: (p: string) => p === '/bin/codellama-lsp', platform: 'linux' as const };
  const spec = launchSpec(getter({ 'server.extraArgs': ['--kv-type', 'q8_0'], 'server.env': { HF_HUB_OFFLINE: '1', BAD: 3 } }), { PATH: '/bin', UNSET: undefined }, onPath);
  assert.equal(spec.command, '/bin/codellama-lsp');
  assert.deepEqual(spec.args, ['--stdio', '--kv-type', 'q8_0']);
  assert.equal(spec.env.HF_HUB_OFFLINE, '1');
  assert.equal(spec.env.PATH, '/bin');
  assert.equal(spec.env.PYTHONUNBUFFERED, '1');
  assert.equal('BAD' in spec.env, false);
  assert.equal('UNSET' in spec.env, false);
});

test('launch: context size and GPU layers become server arguments', () => {
  const cmd = { 'server.command': ['/opt/codellama-lsp'] };
  assert.deepEqual(launchSpec(getter({ ...cmd, contextWindow: 8192, gpuLayers: -1, 'server.extraArgs': ['-v'] }), {}).args, ['--stdio', '--n-ctx', '8192', '--n-gpu-layers', '-1', '-v']);
  assert.deepEqual(launchSpec(getter({ ...cmd, contextWindow: 0, gpuLayers: 0 }), {}).args, ['--stdio'], '0 leaves the choice to the server');
  assert.deepEqual(launchSpec(getter({ ...cmd, contextWindow: 16384, kvType: 'q8_0' }), {}).args, ['--stdio', '--n-ctx', '16384', '--kv-type', 'q8_0']);
  assert.deepEqual(launchSpec(getter({ ...cmd, kvType: 'f16' }), {}).args, ['--stdio'], 'f16 is the default');
});

test('launch: remote server, key variable and TLS choice from user settings go on the command line (the server trusts only that)', () => {
  const cmd = { 'server.command': ['/opt/codellama-lsp'] };
  assert.deepEqual(
    launchSpec(getter({ ...cmd, url: ' https://gpu-box:8080 ', apiKeyEnv: 'TEAM_KEY', tlsVerify: false }), {}).args,
    ['--stdio', '--url', 'https://gpu-box:8080', '--api-key-env', 'TEAM_KEY', '--no-tls-verify'],
  );
  assert.deepEqual(launchSpec(getter({ ...cmd, url: '', apiKeyEnv: 'CODELLAMA_API_KEY', tlsVerify: true }), {}).args, ['--stdio']);
  assert.deepEqual(launchSpec(getter({ ...cmd, apiKeyEnv: 'BAD NAME; rm' }), {}).args, ['--stdio'], 'not a variable name');
});

test('launch: a Python interpreter wins over the command', () => {
  const spec = launchSpec(getter({ 'server.pythonPath': '/venv/bin/python', 'server.command': ['x'] }), {});
  assert.equal(spec.command, '/venv/bin/python');
  assert.deepEqual(spec.args, ['-m', 'lsp_server', '--stdio']);
});

test('launch: a command that already says --stdio is not doubled; an empty one is an error', () => {
  assert.deepEqual(launchSpec(getter({ 'server.command': ['/opt/bin/codellama-lsp', '--stdio', '-v'] }), {}).args, ['--stdio', '-v']);
  assert.throws(() => launchSpec(getter({ 'server.command': ['  '] }), {}), LaunchError);
});

test('launch: the server is found in the workspace .venv, then beside the selected interpreter', () => {
  const files = new Set(['/ws/b/.venv/bin/codellama-lsp', '/home/u/envs/x/bin/codellama-lsp']);
  const isFile = (p: string) => files.has(p);
  assert.equal(findProgram('codellama-lsp', { PATH: '/usr/bin' }, { workspaceFolders: ['/ws/a', '/ws/b'], isFile, platform: 'linux' }), '/ws/b/.venv/bin/codellama-lsp');
  assert.equal(findProgram('codellama-lsp', { PATH: '/usr/bin' }, { interpreter: '/home/u/envs/x/bin/python3', isFile, platform: 'linux' }), '/home/u/envs/x/bin/codellama-lsp');
  assert.equal(findProgram('codellama-lsp', { PATH: '/usr/bin' }, { isFile, platform: 'linux' }), undefined);
});

test('launch: a server found nowhere is an error that names the setting to fix', () => {
  const err = (() => {
    try {
      launchSpec(getter({}), { PATH: '/nowhere' }, { isFile: () => false, platform: 'linux' });
    } catch (e) {
      return e;
    }
    return undefined;
  })();
  assert.ok(err instanceof LaunchError);
  assert.match(err.message, /codellama-lsp was not found on PATH, in the workspace's \.venv or beside the selected Python interpreter/);
  assert.match(err.message, /codeLlama\.server\.pythonPath/);
  assert.equal(err.setting, 'codeLlama.server.pythonPath');
});
