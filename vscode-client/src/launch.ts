/**
 * Settings -> the command line that starts the server.
 *
 * In: `codeLlama.server.*` (command, pythonPath, extraArgs, env), `codeLlama.contextWindow` / `gpuLayers`
 * (sizes fixed when the model loads), the process environment, and where else a user's install may be:
 * the workspace folders (their `.venv`) and the Python interpreter selected in VS Code.
 * Out: `{command, args, env}` for vscode-languageclient's `Executable`, always talking over stdio, or a
 * `LaunchError` that names the setting to fix.
 *
 * A Python interpreter, when set, wins: `python -m lsp_server --stdio`, so a virtual environment works
 * without putting its `bin` on PATH. A bare command name (the default `codellama-lsp`) is looked up on
 * PATH, then in each workspace folder's `.venv`, then beside the selected interpreter: VS Code started
 * from a desktop launcher does not see the PATH of a shell where the venv was activated.
 */
import { existsSync, statSync } from 'node:fs';
import { delimiter, dirname, isAbsolute, join } from 'node:path';
import { type ConfigGetter, loadArgs } from './settings';

export interface LaunchSpec {
  command: string;
  args: string[];
  env: Record<string, string>;
}

export class LaunchError extends Error {
  /** The setting that fixes it (the error message offers to open it). */
  readonly setting = 'codeLlama.server.pythonPath';
}

/** Where to look for a server besides PATH. */
export interface SearchPlaces {
  workspaceFolders?: readonly string[];
  /** The Python interpreter selected in VS Code (Python extension, or `python.defaultInterpreterPath`). */
  interpreter?: string;
  /** Whether a path is an executable file; replaced in tests. */
  isFile?: (path: string) => boolean;
  platform?: NodeJS.Platform;
}

function stringArray(value: unknown): string[] | undefined {
  if (!Array.isArray(value)) return undefined;
  return value.every((v) => typeof v === 'string') ? (value as string[]) : undefined;
}

function fileExists(path: string): boolean {
  try {
    return existsSync(path) && statSync(path).isFile();
  } catch {
    return false;
  }
}

/** The full path of a bare program name, or undefined: PATH, then `<folder>/.venv`, then the interpreter's folder. */
export function findProgram(name: string, env: Record<string, string>, places: SearchPlaces): string | undefined {
  const isFile = places.isFile ?? fileExists;
  const windows = (places.platform ?? process.platform) === 'win32';
  const names = windows ? [`${name}.exe`, `${name}.cmd`, name] : [name];
  const binDir = windows ? 'Scripts' : 'bin';
  const dirs = [
    ...(env.PATH ?? env.Path ?? '').split(windows ? ';' : delimiter).filter((d) => d !== ''),
    ...(places.workspaceFolders ?? []).map((f) => join(f, '.venv', binDir)),
    ...(places.interpreter ? [dirname(places.interpreter)] : []),
  ];
  for (const dir of dirs) {
    for (const n of names) {
      const candidate = join(dir, n);
      if (isFile(candidate)) return candidate;
    }
  }
  return undefined;
}

export function launchSpec(get: ConfigGetter, baseEnv: NodeJS.ProcessEnv, places: SearchPlaces = {}): LaunchSpec {
  const extra = [...loadArgs(get), ...(stringArray(get('server.extraArgs')) ?? [])];
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(baseEnv)) {
    if (v !== undefined) env[k] = v;
  }
  const envSetting = get('server.env');
  if (envSetting && typeof envSetting === 'object' && !Array.isArray(envSetting)) {
    for (const [k, v] of Object.entries(envSetting as Record<string, unknown>)) {
      if (typeof v === 'string') env[k] = v;
    }
  }
  // Python buffers stdout when it is a pipe; JSON-RPC needs every message flushed as it is written.
  env.PYTHONUNBUFFERED = '1';

  const python = get('server.pythonPath');
  if (typeof python === 'string' && python.trim() !== '') {
    return { command: python.trim(), args: ['-m', 'lsp_server', '--stdio', ...extra], env };
  }
  const commandLine = stringArray(get('server.command')) ?? ['codellama-lsp'];
  const parts = commandLine.filter((p) => p.trim() !== '');
  if (parts.length === 0) {
    throw new LaunchError('expected codeLlama.server.command to name a program, got an empty list');
  }
  const [name, ...args] = parts;
  let command = name;
  if (!isAbsolute(name) && !name.includes('/') && !name.includes('\\')) {
    const found = findProgram(name, env, places);
    if (found === undefined) {
      throw new LaunchError(
        `${name} was not found on PATH, in the workspace's .venv or beside the selected Python interpreter. ` +
          'Set "codeLlama.server.pythonPath" to a Python that has codellama-lsp installed ' +
          '(e.g. /path/to/venv/bin/python), or "codeLlama.server.command" to the program.',
      );
    }
    command = found;
  }
  if (!args.includes('--stdio')) args.push('--stdio');
  return { command, args: [...args, ...extra], env };
}
