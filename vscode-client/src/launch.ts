/**
 * Settings -> the command line that starts the server.
 *
 * In: `codellama.server.*` (command, pythonPath, extraArgs, env), `codellama.nCtx` / `nGpuLayers` (sizes
 * fixed when the model loads) and the process environment.
 * Out: `{command, args, env}` for vscode-languageclient's `Executable`, always talking over stdio.
 * A Python interpreter, when set, wins: `python -m lsp_server --stdio`, so a virtual environment works
 * without putting its `bin` on PATH.
 */
import { type ConfigGetter, loadArgs } from './settings';

export interface LaunchSpec {
  command: string;
  args: string[];
  env: Record<string, string>;
}

export class LaunchError extends Error {}

function stringArray(value: unknown): string[] | undefined {
  if (!Array.isArray(value)) return undefined;
  return value.every((v) => typeof v === 'string') ? (value as string[]) : undefined;
}

export function launchSpec(get: ConfigGetter, baseEnv: NodeJS.ProcessEnv): LaunchSpec {
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
    throw new LaunchError('expected codellama.server.command to name a program, got an empty list');
  }
  const [command, ...args] = parts;
  if (!args.includes('--stdio')) args.push('--stdio');
  return { command, args: [...args, ...extra], env };
}
