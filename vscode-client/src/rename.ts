/**
 * The settings' rename from `codellama.*` to `codeLlama.*`: moving users' values, and reading an old value that
 * could not be moved.
 *
 * Why the rename: VS Code's Settings editor titles a setting from its key (`codellama.server.pythonPath` read
 * "Codellama › Server: Python Path"; `codeLlama.…` reads "Code Llama › Server: Python Path"); the extension's
 * display name cannot change that. The command ids (`codellama.toggle`, ...) keep their names: they are never
 * shown (the palette shows "Code Llama: Toggle Completions"), and users' keybindings.json name them.
 *
 * In: a `SettingsStore` (VS Code's configuration seen through `inspect`/`update`, or a plain object in the tests),
 * the contributed properties (key -> scope) and the restricted keys from package.json, and whether the workspace
 * is trusted. Out: each old value written under the new key in the SAME scope (User stays User, a workspace's value
 * stays in that workspace, never lifted into User settings), the old key removed there, and a report of what moved
 * and what could not (a read-only settings file), for the one message the user gets.
 *
 * The trust boundary holds as before: the old keys stay registered in package.json (hidden, deprecated) with the
 * scopes and the restrictions of the new ones, so VS Code itself ignores a workspace's old `machine` values and an
 * untrusted workspace's old restricted values. On top of that the migration never reads nor writes a workspace
 * value of a `machine`/`application` setting, and touches no workspace file at all while the workspace is untrusted
 * (it runs again when trust is granted). No `vscode` import: unit-tested under plain Node.
 */

export const SECTION = 'codeLlama';
export const OLD_SECTION = 'codellama';

export type Target = 'global' | 'workspace' | 'workspaceFolder';

/** `WorkspaceConfiguration.inspect`'s values per scope (undefined: not set there). */
export interface Inspected {
  globalValue?: unknown;
  workspaceValue?: unknown;
  workspaceFolderValue?: unknown;
}

export interface SettingsStore {
  /** `key` without its section (`server.command`); `folder` names one workspace folder for the folder scope. */
  inspect(section: string, key: string, folder?: string): Inspected | undefined;
  /** Writes (`value` undefined: removes) `key` in `target`; rejects when the file cannot be written. */
  update(section: string, key: string, value: unknown, target: Target, folder?: string): Promise<void>;
}

export interface Move {
  key: string;
  target: Target;
  folder?: string;
  /** false: the new key already had a value there (the user's newer choice wins; only the old key goes) */
  moved: boolean;
}

export interface MigrationReport {
  moved: Move[];
  failed: { key: string; target: Target; folder?: string; error: string }[];
}

/** Scopes whose workspace values VS Code ignores: a workspace never sets them, so they are never moved from one. */
const NOT_FROM_WORKSPACE = new Set(['machine', 'application']);

const VALUE_OF: Record<Target, keyof Inspected> = {
  global: 'globalValue',
  workspace: 'workspaceValue',
  workspaceFolder: 'workspaceFolderValue',
};

/** The keys (without section) of the contributed `codeLlama.*` settings, with their scopes. */
export function renamedKeys(properties: Record<string, { scope?: string }>): { key: string; scope: string }[] {
  return Object.entries(properties)
    .filter(([k]) => k.startsWith(`${SECTION}.`))
    .map(([k, v]) => ({ key: k.slice(SECTION.length + 1), scope: v.scope ?? 'window' }));
}

/**
 * Moves every old value found. `folders`: the workspace folders of a multi-root workspace (in a single-folder
 * window the folder's settings are the workspace's, handled as `workspace`). `restricted`: full keys VS Code
 * ignores in an untrusted workspace.
 */
export async function migrateSettings(
  store: SettingsStore,
  keys: { key: string; scope: string }[],
  options: { trusted: boolean; folders?: string[] },
): Promise<MigrationReport> {
  const report: MigrationReport = { moved: [], failed: [] };
  for (const { key, scope } of keys) {
    const places: { target: Target; folder?: string }[] = [{ target: 'global' }];
    if (options.trusted && !NOT_FROM_WORKSPACE.has(scope)) {
      places.push({ target: 'workspace' });
      for (const folder of options.folders ?? []) places.push({ target: 'workspaceFolder', folder });
    }
    for (const { target, folder } of places) {
      const field = VALUE_OF[target];
      const old = store.inspect(OLD_SECTION, key, folder)?.[field];
      if (old === undefined) continue;
      const current = store.inspect(SECTION, key, folder)?.[field];
      try {
        if (current === undefined) await store.update(SECTION, key, old, target, folder);
        await store.update(OLD_SECTION, key, undefined, target, folder);
        report.moved.push({ key, target, folder, moved: current === undefined });
      } catch (err) {
        report.failed.push({ key, target, folder, error: err instanceof Error ? err.message : String(err) });
      }
    }
  }
  return report;
}

/** The one message about the rename, or undefined when nothing was found under the old names. */
export function migrationMessage(report: MigrationReport): string | undefined {
  if (report.moved.length === 0 && report.failed.length === 0) return undefined;
  const where = (t: Target): string => ({ global: 'User', workspace: 'Workspace', workspaceFolder: 'Folder' })[t];
  const names = (list: { key: string; target: Target }[]): string =>
    [...new Set(list.map((m) => `${OLD_SECTION}.${m.key} (${where(m.target)})`))].join(', ');
  let text = `Code Llama: settings are now named ${SECTION}.* (was ${OLD_SECTION}.*).`;
  if (report.moved.length > 0) text += ` Moved, each in its own settings file: ${names(report.moved)}.`;
  if (report.failed.length > 0) {
    text += ` Could not move ${names(report.failed)} (the settings file could not be written); their old values are still used.`;
  }
  return text;
}

/** What `WorkspaceConfiguration` offers a getter: `get` and `inspect` of a key without its section. */
export interface ConfigView {
  get(key: string): unknown;
  inspect(key: string): Inspected | undefined;
}

/**
 * A setting's value: the new key's where it is set anywhere, else the old key's (a value the migration could not
 * move: a read-only settings file), else the new key's default. VS Code applies the scope and trust rules to
 * the old keys as to the new ones (they are registered alike), so a value a workspace may not set is undefined here too.
 */
export function fallbackGetter(current: () => ConfigView, old: () => ConfigView): (key: string) => unknown {
  return (key: string) => {
    const now = current();
    const i = now.inspect(key);
    if (i && (i.globalValue !== undefined || i.workspaceValue !== undefined || i.workspaceFolderValue !== undefined)) {
      return now.get(key);
    }
    const before = old().get(key);
    return before !== undefined ? before : now.get(key);
  };
}
