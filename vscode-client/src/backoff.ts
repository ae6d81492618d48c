/**
 * When to restart a server that exited on its own.
 *
 * In: the times at which the server started and crashed. Out: the delay before the next start, or
 * `undefined` to give up (the user then restarts by hand). Delays double from `initialMs` up to `maxMs`;
 * a run that stayed up for `stableMs` counts as healthy and resets the sequence, so a server that crashes
 * once a day is always restarted quickly while one that dies at start-up is not restarted forever.
 */
export interface BackoffOptions {
  initialMs: number;
  maxMs: number;
  stableMs: number;
  maxAttempts: number;
}

export const DEFAULT_BACKOFF: BackoffOptions = { initialMs: 1000, maxMs: 30000, stableMs: 60000, maxAttempts: 6 };

export class RestartPolicy {
  private attempts = 0;
  private startedAt = 0;

  constructor(private readonly options: BackoffOptions = DEFAULT_BACKOFF) {}

  /** Call when the server (re)starts. */
  started(now: number): void {
    this.startedAt = now;
  }

  /** Call when the server exited unexpectedly; returns the delay before restarting, or undefined to stop. */
  crashed(now: number): number | undefined {
    if (now - this.startedAt >= this.options.stableMs) this.attempts = 0;
    if (this.attempts >= this.options.maxAttempts) return undefined;
    const delay = Math.min(this.options.maxMs, this.options.initialMs * 2 ** this.attempts);
    this.attempts += 1;
    return delay;
  }

  /** A restart the user asked for starts a fresh sequence. */
  reset(): void {
    this.attempts = 0;
  }

  get consecutiveCrashes(): number {
    return this.attempts;
  }
}
