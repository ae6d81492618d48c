/**
 * Shown/accepted events -> the `codellama/event` notifications the server counts locally; where the cursor
 * rests -> `cursor` events, whose place the server prefills.
 *
 * In: the completion items VS Code received for a request, the acceptance command VS Code runs when
 * the user takes one, and the cursor of the active editor. Out: `{kind, languageId, chars, lines, latencyMs?,
 * index?}` payloads (only sizes and the language, never the text, to the local server only), and
 * `{kind: 'cursor', languageId, uri, position}` when the cursor rests on a line it was not on before.
 */
export const EVENT_METHOD = 'codellama/event';
export const ACCEPT_COMMAND = 'codellama.accepted';

export interface CompletionEvent {
  kind: 'shown' | 'accepted';
  languageId: string;
  /** Index of the item among the candidates returned (Invoked requests can return several). */
  index: number;
  candidates: number;
  chars: number;
  lines: number;
  latencyMs?: number;
  uri?: string;
}

/** The cursor rests at `position` of `uri`: the server evaluates that place's prompt before the first key. */
export interface CursorEvent {
  kind: 'cursor';
  languageId: string;
  uri: string;
  position: { line: number; character: number };
}

/**
 * Which resting cursors to tell the server: not the line last told (typing moves the cursor on every key;
 * the server itself ignores places near the last one).
 */
export class CursorTracker {
  private last: { uri: string; line: number } | undefined;

  /** The event for a cursor resting at `line:character` of `uri`, or undefined when it is on the line last told. */
  rests(uri: string, languageId: string, line: number, character: number): CursorEvent | undefined {
    if (this.last !== undefined && this.last.uri === uri && this.last.line === line) return undefined;
    this.last = { uri, line };
    return { kind: 'cursor', languageId, uri, position: { line, character } };
  }

  /** A new server knows no place yet. */
  reset(): void {
    this.last = undefined;
  }
}

/**
 * How long the cursor must rest before the server is told where. An editor that became active is told at once: the
 * person is going to type there, and the server prefills that place meanwhile; the selection events that come with
 * the switch keep that timer (`moved` returns undefined). A move within an editor waits `restMs`.
 */
export class CursorDebounce {
  private switched: string | undefined; // the editor (its document's URI) that became active, not told yet

  constructor(readonly restMs: number) {}

  /** The wait for this move, or undefined: leave the running timer alone. */
  moved(uri: string, becameActive: boolean): number | undefined {
    if (becameActive) {
      this.switched = uri;
      return 0;
    }
    if (this.switched === uri) return undefined;
    this.switched = undefined;
    return this.restMs;
  }

  /** The timer fired (the place was told, or nothing was to tell). */
  fired(): void {
    this.switched = undefined;
  }
}

export function describeText(text: string): { chars: number; lines: number } {
  return { chars: text.length, lines: text === '' ? 0 : text.split(/\r?\n/).length };
}

export function shownEvent(
  languageId: string,
  texts: readonly string[],
  latencyMs: number,
  uri?: string,
): CompletionEvent | undefined {
  const first = texts.find((t) => t.trim() !== '');
  if (first === undefined) return undefined;
  return { kind: 'shown', languageId, index: texts.indexOf(first), candidates: texts.length, ...describeText(first), latencyMs, uri };
}

export function acceptedEvent(shown: CompletionEvent, index: number, text: string): CompletionEvent {
  return { ...shown, kind: 'accepted', index, ...describeText(text), latencyMs: undefined };
}

/** Running totals, shown in the status tooltip and logged. */
export class EventCounter {
  shown = 0;
  accepted = 0;
  record(event: CompletionEvent): void {
    if (event.kind === 'shown') this.shown += 1;
    else this.accepted += 1;
  }
  get acceptanceRate(): number {
    return this.shown === 0 ? 0 : this.accepted / this.shown;
  }
}

/**
 * Whether a result is a suggestion already counted as shown: VS Code asks again after every key that types
 * the ghost text and after every partial accept (Ctrl+Right), and the answer is the rest of the same
 * suggestion. Counting each as "shown" made 1 Tab + 4 Ctrl+Right read "1 of 8".
 */
export class ShownTracker {
  private last: { uri: string; text: string } | undefined;

  /** True when `text` in `uri` is new (count it as shown); false for the rest of the last one. */
  isNew(uri: string, text: string): boolean {
    const continues = this.last !== undefined && this.last.uri === uri && text !== '' && this.last.text.endsWith(text);
    if (!continues) this.last = { uri, text };
    return !continues;
  }
}
