/**
 * What the user typed or picked as a model -> a validated `codeLlama.model` value.
 *
 * Accepted: `demo`; a path to a `.gguf` file (absolute, `~/...`, or relative to the workspace is left to
 * the server); a Hugging Face `owner/repo:file.gguf` (the server downloads it into the Hugging Face cache).
 * Anything else is rejected with a message that says what was expected.
 */
export type ModelSpec =
  | { kind: 'demo'; value: 'demo' }
  | { kind: 'path'; value: string }
  | { kind: 'huggingface'; value: string; repo: string; file: string };

const HF_REPO = /^[A-Za-z0-9][\w.-]*\/[\w.-]+$/;

export function parseModelSpec(input: string): ModelSpec | { error: string } {
  const value = input.trim();
  if (value === '') return { error: 'expected a .gguf path, "demo" or a Hugging Face repo:file, got nothing' };
  if (value === 'demo') return { kind: 'demo', value: 'demo' };
  const looksLikePath = value.startsWith('/') || value.startsWith('~') || value.startsWith('.') || /^[A-Za-z]:[\\/]/.test(value);
  const colon = value.lastIndexOf(':');
  if (!looksLikePath && colon > 0) {
    const repo = value.slice(0, colon);
    const file = value.slice(colon + 1);
    if (!HF_REPO.test(repo)) {
      return { error: `expected a Hugging Face repo as owner/name before ":", got "${repo}"` };
    }
    if (!file.toLowerCase().endsWith('.gguf')) {
      return { error: `expected a .gguf file name after ":", got "${file}"` };
    }
    return { kind: 'huggingface', value, repo, file };
  }
  if (!value.toLowerCase().endsWith('.gguf')) {
    return { error: `expected a path ending in .gguf, got "${value}"` };
  }
  return { kind: 'path', value };
}

/** Short label for the status item: the file name of a path, the file of a repo:file, or "demo". */
export function modelLabel(model: string | undefined): string {
  if (!model) return '';
  const last = model.split(/[\\/:]/).filter((p) => p !== '').pop() ?? model;
  return last.replace(/\.gguf$/i, '');
}
