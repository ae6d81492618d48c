/**
 * VS Code settings (`codeLlama.*`) -> what the server and the launcher need.
 *
 * In: a getter over the `codeLlama` configuration section (VS Code's `WorkspaceConfiguration.get`, with the old
 * `codellama.*` names as a fallback, see rename.ts; or a plain object in tests). Out: `ServerSettings`, the camelCase object the server receives as
 * `initializationOptions` and again in every `workspace/didChangeConfiguration`, plus the client-side
 * switches (enable, per-language enablement) the extension applies before asking the server at all.
 *
 * This module does not import `vscode`, so the unit tests run under plain Node.
 */

/** Reads one key of the `codeLlama` section; `undefined` when unset. */
export type ConfigGetter = (key: string) => unknown;

/**
 * The settings the server understands, with its wire names (lsp_server/config.py): it reports unknown keys,
 * so nothing else goes in here. `contextWindow` and `gpuLayers` size the llama.cpp context when the model loads;
 * they travel as command-line arguments instead (see launch.ts), and changing them restarts the server.
 */
export interface ServerSettings {
  model: string;
  contextTokens?: number;
  prefixRatio?: number;
  maxTokens?: number;
  temperature?: number;
  maxItems?: number;
  timeBudgetMs?: number;
  fimOrder?: 'spm' | 'psm';
  /** language id (or "*") -> on/off; VS Code's `codeLlama.enabledLanguages`. */
  enable?: Record<string, boolean>;
  /** remote engines (docs/deployment.md); the API key travels in the server's environment, never here */
  engine?: 'llama.cpp' | 'llama-server' | 'openai';
  url?: string;
  apiKeyEnv?: string;
  requestTimeoutMs?: number;
  tlsVerify?: boolean;
  remoteModel?: string;
  /** tokens of chunks from other open files and recent edits (0: off) */
  extraContextTokens?: number;
  coldJumpMs?: number;
  /** glob patterns of files that never reach a prompt, on top of the server's built-in list */
  exclude?: string[];
  /** post-processing rules switched off by name (lsp_server/postprocess.py RULES) */
  rules?: Record<string, boolean>;
}

/** The server's post-processing rules (lsp_server/postprocess.py RULES): anything else is left out. */
export const RULES: readonly string[] = ['mode', 'nodeEnd', 'repetition', 'balance', 'parseCheck'];

export interface ClientSwitches {
  enable: boolean;
  enabledLanguages: Record<string, boolean>;
  /** Extra wait after VS Code's own inline-suggestion delay before a request goes to the server. */
  debounceMs: number;
  /** Whether the server's advised debounce (`codellama/status`) may lengthen `debounceMs`. */
  adaptiveDebounce: boolean;
  /** Also offer the completion in VS Code's suggestion list (textDocument/completion); off by default. */
  suggestList: boolean;
  /** Ghost text by itself after a pause; false: manual mode, only an explicit request (Alt+\\) asks. */
  autoTrigger: boolean;
}

/** VS Code waits 50 ms after a key before asking inline providers; ours waits this much more, so that at
 * typing speeds up to ~5 keys a second (200 ms a key) only the pause after the last key reaches the model. */
export const DEFAULT_DEBOUNCE_MS = 150;

export const DEFAULT_LANGUAGES: Readonly<Record<string, boolean>> = Object.freeze({
  '*': true,
  plaintext: false,
  markdown: false,
  scminput: false,
});

function finiteNumber(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isFinite(value) ? value : undefined;
}

function integer(value: unknown, min: number): number | undefined {
  const n = finiteNumber(value);
  return n !== undefined && Number.isInteger(n) && n >= min ? n : undefined;
}

function languageMap(value: unknown): Record<string, boolean> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    return { ...DEFAULT_LANGUAGES };
  }
  const out: Record<string, boolean> = {};
  for (const [language, on] of Object.entries(value as Record<string, unknown>)) {
    if (typeof on === 'boolean') {
      out[language] = on;
    }
  }
  return out;
}

/**
 * Builds the object sent to the server. Values of the wrong type are left out rather than sent, so the
 * server applies its own default (and VS Code already flags them in the settings editor).
 */
export function serverSettings(get: ConfigGetter): ServerSettings {
  const model = get('model');
  const out: ServerSettings = { model: typeof model === 'string' && model.trim() !== '' ? model.trim() : 'demo' };
  const contextTokens = integer(get('contextTokens'), 16);
  if (contextTokens !== undefined) out.contextTokens = contextTokens;
  const ratio = finiteNumber(get('prefixRatio'));
  if (ratio !== undefined && ratio >= 0 && ratio <= 1) out.prefixRatio = ratio;
  const maxTokens = integer(get('maxTokens'), 1);
  if (maxTokens !== undefined) out.maxTokens = maxTokens;
  const temperature = finiteNumber(get('temperature'));
  if (temperature !== undefined && temperature >= 0) out.temperature = temperature;
  const maxItems = integer(get('maxCandidates'), 1);
  if (maxItems !== undefined) out.maxItems = maxItems;
  const budget = integer(get('timeBudgetMs'), 1);
  if (budget !== undefined) out.timeBudgetMs = budget;
  const order = get('fimOrder');
  if (order === 'spm' || order === 'psm') out.fimOrder = order;
  // The on/off switch travels as the server's per-language map: off is {"*": false}, so the server runs
  // no model for any request kind, whatever reaches it.
  out.enable = get('enable') === false ? { '*': false } : languageMap(get('enabledLanguages'));
  const engine = get('engine');
  if (engine === 'llama.cpp' || engine === 'llama-server' || engine === 'openai') out.engine = engine;
  for (const key of ['url', 'apiKeyEnv', 'remoteModel'] as const) {
    const value = get(key);
    if (typeof value === 'string' && value.trim() !== '') out[key] = value.trim();
  }
  const timeout = integer(get('requestTimeoutMs'), 100);
  if (timeout !== undefined) out.requestTimeoutMs = timeout;
  const verify = get('tlsVerify');
  if (typeof verify === 'boolean') out.tlsVerify = verify;
  const extra = integer(get('extraContextTokens'), 0);
  if (extra !== undefined) out.extraContextTokens = extra;
  const coldJump = integer(get('coldJumpMs'), 0);
  if (coldJump !== undefined) out.coldJumpMs = coldJump;
  const exclude = get('exclude');
  if (Array.isArray(exclude)) {
    const patterns = exclude.filter((p): p is string => typeof p === 'string' && p.trim() !== '').map((p) => p.trim());
    if (patterns.length > 0) out.exclude = patterns;
  }
  const rules = get('rules');
  if (rules !== null && typeof rules === 'object' && !Array.isArray(rules)) {
    const picked = Object.entries(rules as Record<string, unknown>).filter(
      (e): e is [string, boolean] => RULES.includes(e[0]) && typeof e[1] === 'boolean',
    );
    if (picked.length > 0) out.rules = Object.fromEntries(picked);
  }
  return out;
}

/** llama.cpp sizing that only applies when the model loads: command-line arguments for the server. */
export function loadArgs(get: ConfigGetter): string[] {
  const args: string[] = [];
  const nCtx = integer(get('contextWindow'), 1); // 0: the server's own choice
  if (nCtx !== undefined) args.push('--n-ctx', String(nCtx));
  const kv = get('kvType');
  if (kv === 'q8_0') args.push('--kv-type', 'q8_0'); // f16 is the server's default
  const gpu = integer(get('gpuLayers'), -1);
  if (gpu !== undefined && gpu !== 0) args.push('--n-gpu-layers', String(gpu));
  // Where prompts may go and which key goes with them: the server takes these only from its command line
  // (a workspace must not choose them). They are `machine`-scoped settings, which VS Code never reads from a
  // workspace's .vscode/settings.json, so the user's own values are passed on here.
  const url = get('url');
  if (typeof url === 'string' && url.trim() !== '') args.push('--url', url.trim());
  const keyEnv = get('apiKeyEnv');
  if (typeof keyEnv === 'string' && /^[A-Za-z_][A-Za-z0-9_]*$/.test(keyEnv) && keyEnv !== 'CODELLAMA_API_KEY') {
    args.push('--api-key-env', keyEnv);
  }
  if (get('tlsVerify') === false) args.push('--no-tls-verify');
  return args;
}

/** Settings whose change needs a new server process. */
export const RESTART_KEYS = ['server', 'contextWindow', 'kvType', 'gpuLayers', 'url', 'apiKeyEnv', 'tlsVerify'] as const;

export function clientSwitches(get: ConfigGetter): ClientSwitches {
  const debounce = integer(get('debounceMs'), 0);
  return {
    enable: get('enable') !== false,
    enabledLanguages: languageMap(get('enabledLanguages')),
    debounceMs: debounce ?? DEFAULT_DEBOUNCE_MS,
    adaptiveDebounce: get('adaptiveDebounce') !== false,
    suggestList: get('suggestList') === true,
    autoTrigger: get('autoTrigger') !== false,
  };
}

/**
 * The debounce an automatic inline request waits, in ms. In: the `codeLlama.debounceMs` setting, the
 * server's advice from its latest status (undefined before one arrived, or from a server that gives none)
 * and `codeLlama.adaptiveDebounce`. Out: the configured debounce is the floor; the advice may only
 * lengthen it (when the server's answers take longer than the gaps between keys, requests sent during a
 * burst would be superseded before they finish).
 */
export function effectiveDebounceMs(configured: number, advised: number | undefined, adaptive: boolean): number {
  return adaptive ? Math.max(configured, advised ?? 0) : configured;
}

/** Whether completions are wanted in a document of `languageId`: its own entry, else `"*"`, else on. */
export function languageEnabled(languages: Record<string, boolean>, languageId: string): boolean {
  if (languageId in languages) return languages[languageId] === true;
  if ('*' in languages) return languages['*'] === true;
  return true;
}
