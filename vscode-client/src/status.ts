/**
 * The server's `codellama/status` notification -> what the status item shows.
 *
 * In: the notification's params as they arrive (checked field by field: a newer or older server may send
 * more, fewer or differently typed fields), plus the client's own state (completions toggled off, server
 * not running). Out: the item's text (with a codicon), tooltip, and whether it is drawn as an error or
 * warning. No `vscode` import: unit-tested under plain Node.
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
}

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

export function renderStatus(status: ServerStatus, enabled: boolean): StatusView {
  const model = modelLabel(status.model);
  const parts: string[] = [];
  let text = `${ICONS[status.state]} Code Llama`;
  if (status.state === 'loading' && status.percentage !== undefined) text += ` ${status.percentage}%`;
  if (status.state === 'ready' && status.lastLatencyMs !== undefined) text += ` ${Math.round(status.lastLatencyMs)} ms`;
  if (!enabled) text = '$(circle-slash) Code Llama';

  parts.push(`Server: ${status.state}${status.message ? ` (${status.message})` : ''}`);
  if (status.model) parts.push(`Model: ${status.model}`);
  if (status.lastLatencyMs !== undefined) parts.push(`Last completion: ${Math.round(status.lastLatencyMs)} ms`);
  if (status.cachedTokens !== undefined) parts.push(`Cached tokens: ${status.cachedTokens}`);
  parts.push(enabled ? 'Completions: on' : 'Completions: off');
  parts.push('Click for actions');

  const label = `Code Llama: ${enabled ? status.state : 'disabled'}${model ? `, ${model}` : ''}`;
  const severity = status.state === 'error' ? 'error' : status.state === 'stopped' || !enabled ? 'warning' : 'normal';
  return { text, tooltip: parts.join('\n'), label, severity };
}
