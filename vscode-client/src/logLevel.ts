/**
 * One line of the server's stderr -> the level it is logged at in the "Code Llama" output channel.
 *
 * The server logs with Python's `logging` (level names in each line); vscode-languageclient would log every
 * stderr line as an error. Tracebacks and lines without a level name keep the level of the line before,
 * so a multi-line warning stays a warning.
 */
export type Level = 'trace' | 'debug' | 'info' | 'warn' | 'error';

const NAMES: Record<string, Level> = {
  TRACE: 'trace',
  DEBUG: 'debug',
  INFO: 'info',
  WARN: 'warn',
  WARNING: 'warn',
  ERROR: 'error',
  CRITICAL: 'error',
  FATAL: 'error',
};
const LEVEL = /\b(TRACE|DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL)\b/;

export class StderrLeveler {
  private last: Level = 'info';

  level(line: string): Level {
    const m = LEVEL.exec(line.slice(0, 80)); // the level sits in the record's header, not in its message
    if (m) this.last = NAMES[m[1]];
    else if (line.startsWith('Traceback (most recent call last)')) this.last = 'error';
    return this.last;
  }
}
