/**
 * The "Select Model…" list: the server's `codellama/models` answer -> quick-pick entries and warnings.
 *
 * In: whatever the server sent (read leniently: a field of the wrong type drops that entry, never the list).
 * Out: entries for GGUFs on this machine (demo, Hugging Face cache, folders) and known Code Llama files on the
 * Hub, each with its size, quantization, trained context, FIM support, and the memory it needs at the server's
 * context; `warning` is set when it will not fit the memory available now or has no FIM tokens (the picker asks
 * before using such a model). Pure: tested under Node's test runner (src/test/modelPicker.test.ts).
 */

export const MODELS_METHOD = 'codellama/models';

export interface ModelEntry {
  spec: string;
  source: 'demo' | 'huggingface' | 'folder' | 'hub';
  sizeBytes?: number; // on disk, or to download for a Hub file
  quantization?: string;
  nCtxTrain?: number;
  fim: boolean;
  memoryBytes?: number;
  fits?: boolean;
  cached?: boolean;
  error?: string;
}

export interface ModelsList {
  nCtx: number;
  kvType: string;
  memoryBytes?: number;
  entries: ModelEntry[];
}

export interface PickerEntry {
  spec: string;
  label: string;
  description: string;
  detail: string;
  group: 'local' | 'hub';
  /** Asked about before the model is used: too big for this machine, or no FIM tokens. */
  warning?: string;
  /** A file that cannot be used (not a GGUF llama.cpp can load): shown, not selectable. */
  broken: boolean;
}

function num(v: unknown): number | undefined {
  return typeof v === 'number' && Number.isFinite(v) && v >= 0 ? v : undefined;
}

function str(v: unknown): string | undefined {
  return typeof v === 'string' && v !== '' ? v : undefined;
}

function entry(raw: unknown, hub: boolean): ModelEntry | undefined {
  if (raw === null || typeof raw !== 'object') return undefined;
  const r = raw as Record<string, unknown>;
  const spec = str(r.spec);
  if (!spec) return undefined;
  const source = hub ? 'hub' : r.source === 'demo' || r.source === 'huggingface' ? r.source : 'folder';
  const out: ModelEntry = { spec, source, fim: r.fim === true };
  const size = num(hub ? r.downloadBytes : r.sizeBytes);
  if (size !== undefined) out.sizeBytes = size;
  if (str(r.quantization)) out.quantization = str(r.quantization);
  if (num(r.nCtxTrain)) out.nCtxTrain = num(r.nCtxTrain);
  if (num(r.memoryBytes) !== undefined) out.memoryBytes = num(r.memoryBytes);
  if (typeof r.fits === 'boolean') out.fits = r.fits;
  if (typeof r.cached === 'boolean') out.cached = r.cached;
  if (str(r.error)) out.error = str(r.error);
  return out;
}

/** The server's answer, or undefined when it is not one. */
export function parseModels(result: unknown): ModelsList | undefined {
  if (result === null || typeof result !== 'object') return undefined;
  const r = result as Record<string, unknown>;
  const nCtx = num(r.nCtx);
  if (!nCtx || !Array.isArray(r.local) || !Array.isArray(r.known)) return undefined;
  const entries = [
    ...r.local.map((e) => entry(e, false)),
    ...r.known.map((e) => entry(e, true)).filter((e) => e && !e.cached), // a cached one is listed as local already
  ].filter((e): e is ModelEntry => e !== undefined);
  const out: ModelsList = { nCtx, kvType: str(r.kvType) ?? 'f16', entries };
  if (num(r.memoryBytes)) out.memoryBytes = num(r.memoryBytes);
  return out;
}

/** "4.1 GB", "37 MB" (decimal, as download sizes are quoted). */
export function formatBytes(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(1)} GB`;
  if (n >= 1e6) return `${Math.round(n / 1e6)} MB`;
  return `${Math.max(1, Math.round(n / 1e3))} kB`;
}

function name(spec: string): string {
  return spec.split(/[/\\:]/).pop() ?? spec;
}

export function pickerEntries(list: ModelsList): PickerEntry[] {
  return list.entries.map((e) => {
    const facts = [
      e.quantization,
      e.sizeBytes !== undefined ? (e.source === 'hub' ? `${formatBytes(e.sizeBytes)} download` : formatBytes(e.sizeBytes)) : undefined,
      e.nCtxTrain ? `trained ${e.nCtxTrain} tokens` : undefined,
      e.fim ? 'FIM' : 'no FIM',
    ].filter((x) => x);
    const ctx = Math.min(list.nCtx, e.nCtxTrain ?? list.nCtx);
    const memory = e.memoryBytes !== undefined ? `needs about ${formatBytes(e.memoryBytes)} of memory at ${ctx} tokens` : '';
    const warnings: string[] = [];
    if (e.fits === false) {
      const free = list.memoryBytes !== undefined ? `the ${formatBytes(list.memoryBytes)} available now` : 'what is available now';
      warnings.push(`${name(e.spec)} ${memory}, more than ${free}`);
    }
    if (!e.fim && !e.error) warnings.push(`${name(e.spec)} has no fill-in-the-middle tokens: completions will use only the text before the cursor`);
    const where = e.source === 'demo' ? 'shipped demo' : e.source === 'huggingface' ? 'Hugging Face cache' : e.source === 'hub' ? 'Hugging Face Hub' : e.spec;
    const out: PickerEntry = {
      spec: e.spec,
      label: `${e.error ? '$(error)' : e.fits === false ? '$(warning)' : e.source === 'hub' ? '$(cloud-download)' : '$(file-binary)'} ${e.source === 'demo' ? 'demo' : name(e.spec)}`,
      description: facts.join(' · '),
      detail: e.error ? `cannot be used: ${e.error}` : [where, memory].filter((x) => x).join(' — '),
      group: e.source === 'hub' ? 'hub' : 'local',
      broken: e.error !== undefined,
    };
    if (warnings.length) out.warning = warnings.join('. ');
    return out;
  });
}
