/**
 * The server's `codellama/status` notification -> what the status item shows.
 *
 * In: the notification's params as they arrive (checked field by field: a newer or older server may send
 * more, fewer or differently typed fields), plus the client's own state (completions toggled off, server
 * not running). Out: the item's text (a codicon and "Code Llama", the same width in every state), its tooltip
 * (the state in words first), its accessible label, and whether it is drawn as an error or warning. No `vscode` import: unit-tested under plain Node.
 */
import { modelLabel } from './modelSpec';

export type ServerState = 'starting' | 'loading' | 'ready' | 'busy' | 'error' | 'stopped';

export interface ServerStatus {
  state: ServerState;
  model?: string;
  message?: string;
  lastLatencyMs?: number;
  cachedTokens?: number;
  /** 0..100 while a model loads or downloads, when the server says. */
  percentage?: number;
  /** The server's advised debounce in ms (its pacing: 0 while its answers beat the typing gaps), 0..2000. */
  debounceMs?: number;
  /** While the time budget cuts answers: the server's words ("answers cut at 2.0 s"), shown instead of "ready". */
  slow?: string;
  /** With `slow`: what the user can do (smaller model, fewer context tokens, threads). */
  hint?: string;
}

/** The longest advised debounce taken from a server: what the `codeLlama.debounceMs` setting allows too. */
export const MAX_ADVISED_DEBOUNCE_MS = 2000;

const STATES: readonly ServerState[] = ['starting', 'loading', 'ready', 'busy', 'error', 'stopped'];

/** Accepts whatever the server sent; unknown states read as "busy" so the item never lies about "ready". */
export function parseStatus(params: unknown): ServerStatus {
  const p = (params !== null && typeof params === 'object' ? params : {}) as Record<string, unknown>;
  const raw = typeof p.state === 'string' ? p.state.toLowerCase() : '';
  const state: ServerState = (STATES as readonly string[]).includes(raw) ? (raw as ServerState) : 'busy';
  const out: ServerStatus = { state };
  if (typeof p.model === 'string' && p.model !== '') out.model = p.model;
  if (typeof p.message === 'string' && p.message !== '') out.message = p.message;
  const latency = p.lastLatencyMs ?? p.last_latency_ms;
  if (typeof latency === 'number' && Number.isFinite(latency)) out.lastLatencyMs = latency;
  const cached = p.cachedTokens ?? p.cached_tokens;
  if (typeof cached === 'number' && Number.isFinite(cached)) out.cachedTokens = cached;
  let pct = p.percentage ?? p.progress;
  if (typeof pct === 'number' && Number.isFinite(pct)) {
    if (pct <= 1 && p.percentage === undefined) pct *= 100; // a 0..1 fraction
    out.percentage = Math.max(0, Math.min(100, Math.round(pct)));
  }
  const debounce = p.debounceMs;
  if (typeof debounce === 'number' && Number.isFinite(debounce) && debounce >= 0) {
    out.debounceMs = Math.min(MAX_ADVISED_DEBOUNCE_MS, Math.round(debounce));
  }
  if (typeof p.slow === 'string' && p.slow !== '') out.slow = p.slow;
  if (typeof p.hint === 'string' && p.hint !== '') out.hint = p.hint;
  return out;
}

export interface StatusView {
  text: string;
  tooltip: string;
  /** Accessible label; also what the end-to-end test waits for ("Code Llama: ready"). */
  label: string;
  severity: 'normal' | 'warning' | 'error';
}

const ICONS: Record<ServerState, string> = {
  starting: '$(loading~spin)',
  loading: '$(loading~spin)',
  ready: '$(sparkle)',
  busy: '$(sync~spin)',
  error: '$(error)',
  stopped: '$(circle-slash)',
};

/** A latency in words: "118 ms" below 10 s, then seconds ("17.9 s", "123 s"): a 17.9 s answer read "9999 ms"
 *  when milliseconds were capped at four digits. */
export function latencyWords(ms: number): string {
  const rounded = Math.round(ms);
  return rounded < 10000 ? `${rounded} ms` : ms < 99950 ? `${(ms / 1000).toFixed(1)} s` : `${Math.min(99999, Math.round(ms / 1000))} s`;
}

/** The state in words: "loading 42%", "ready 118 ms", "slow: answers cut at 2.0 s", "busy", "error", "off", ... */
export function stateWords(status: ServerStatus, enabled: boolean): string {
  if (!enabled) return 'off';
  if (status.state === 'ready' && status.slow) return `slow: ${status.slow}`;
  switch (status.state) {
    case 'loading':
      return status.percentage !== undefined ? `loading ${status.percentage}%` : 'loading';
    case 'ready': {
      if (status.lastLatencyMs === undefined) return 'ready';
      return `ready ${latencyWords(status.lastLatencyMs)}`;
    }
    default:
      return status.state;
  }
}

/**
 * The item's text is the same in every state, an icon and "Code Llama": the status bar's proportional font drew
 * each state's words at another width (193-206 px, padding or not), and the items beside it moved. The icon
 * tells the state at a glance (spinning: starting, loading, busy; sparkle: ready; watch: slow; error; slashed
 * circle: off or stopped), errors and warnings colour the item, and the words ("ready 118 ms", "loading 42%")
 * lead the tooltip and the accessible label.
 */
export function renderStatus(status: ServerStatus, enabled: boolean): StatusView {
  const model = modelLabel(status.model);
  const parts: string[] = [];
  const icon = !enabled ? ICONS.stopped : status.state === 'ready' && status.slow ? '$(watch)' : ICONS[status.state];
  const text = `${icon} Code Llama`;

  parts.push(`Code Llama: ${stateWords(status, enabled)}`);
  parts.push(`Server: ${status.state}${status.message ? ` (${status.message})` : ''}`);
  if (status.slow) parts.push(`Slow: ${status.slow}${status.hint ? `\nTry: ${status.hint}` : ''}`);
  if (status.model) parts.push(`Model: ${status.model}`);
  if (status.lastLatencyMs !== undefined) parts.push(`Last model answer: ${Math.round(status.lastLatencyMs)} ms`);
  if (status.cachedTokens !== undefined) parts.push(`Cached tokens: ${status.cachedTokens}`);
  parts.push(enabled ? 'Completions: on' : 'Completions: off');
  parts.push('Click for actions');

  const slow = enabled && status.state === 'ready' && status.slow !== undefined;
  const label = `Code Llama: ${enabled ? status.state : 'disabled'}${model ? `, ${model}` : ''}${slow ? `, slow: ${status.slow}` : ''}`;
  const severity =
    status.state === 'error' ? 'error' : status.state === 'stopped' || !enabled || slow ? 'warning' : 'normal';
  return { text, tooltip: parts.join('\n'), label, severity };
}
