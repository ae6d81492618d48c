import assert from 'node:assert/strict';
import { test } from 'node:test';
import { RestartPolicy } from '../backoff';
import { CursorDebounce, CursorTracker, EventCounter, ShownTracker, acceptedEvent, describeText, shownEvent } from '../events';
import { modelLabel, parseModelSpec } from '../modelSpec';
import { StderrLeveler } from '../logLevel';
import { latencyWords, parseStatus, renderStatus } from '../status';

test('back-off doubles, caps, gives up, and resets after a stable run', () => {
  const p = new RestartPolicy({ initialMs: 1000, maxMs: 5000, stableMs: 60000, maxAttempts: 4 });
  p.started(0);
  assert.deepEqual([p.crashed(10), p.crashed(20), p.crashed(30), p.crashed(40)], [1000, 2000, 4000, 5000]);
  assert.equal(p.crashed(50), undefined);
  p.started(100);
  assert.equal(p.crashed(100 + 60000), 1000, 'a run that stayed up a minute resets the sequence');
  p.reset();
  assert.equal(p.crashed(100 + 60001), 1000);
});

test('model spec: demo, paths, Hugging Face repo:file', () => {
  assert.deepEqual(parseModelSpec(' demo '), { kind: 'demo', value: 'demo' });
  assert.deepEqual(parseModelSpec('/m/codellama-7b.Q4_K_M.gguf'), { kind: 'path', value: '/m/codellama-7b.Q4_K_M.gguf' });
  assert.deepEqual(parseModelSpec('C:\\models\\x.gguf'), { kind: 'path', value: 'C:\\models\\x.gguf' });
  assert.deepEqual(parseModelSpec('TheBloke/CodeLlama-7B-GGUF:codellama-7b.Q4_K_M.gguf'), {
    kind: 'huggingface',
    value: 'TheBloke/CodeLlama-7B-GGUF:codellama-7b.Q4_K_M.gguf',
    repo: 'TheBloke/CodeLlama-7B-GGUF',
    file: 'codellama-7b.Q4_K_M.gguf',
  });
  assert.match((parseModelSpec('model.bin') as { error: string }).error, /expected a path ending in \.gguf, got "model\.bin"/);
  assert.match((parseModelSpec('noslash:x.gguf') as { error: string }).error, /owner\/name/);
  assert.match((parseModelSpec('a/b:weights.bin') as { error: string }).error, /\.gguf file name/);
  assert.ok('error' in parseModelSpec('  '));
  assert.equal(modelLabel('TheBloke/CodeLlama-7B-GGUF:codellama-7b.Q4_K_M.gguf'), 'codellama-7b.Q4_K_M');
  assert.equal(modelLabel('/a/b/micro.gguf'), 'micro');
  assert.equal(modelLabel('demo'), 'demo');
});

test('status: parses what the server sends, tolerates junk', () => {
  assert.deepEqual(parseStatus({ state: 'ready', model: '/m/x.gguf', lastLatencyMs: 41.6, cachedTokens: 300, extra: 1 }), {
    state: 'ready',
    model: '/m/x.gguf',
    lastLatencyMs: 41.6,
    cachedTokens: 300,
  });
  assert.deepEqual(parseStatus({ state: 'loading', progress: 0.5 }), { state: 'loading', percentage: 50 });
  assert.deepEqual(parseStatus({ state: 'loading', percentage: 73.2 }), { state: 'loading', percentage: 73 });
  assert.equal(parseStatus({ state: 'weird' }).state, 'busy');
  assert.equal(parseStatus(null).state, 'busy');
  assert.deepEqual(parseStatus({ state: 'ERROR', message: 'expected a GGUF file, got text', lastLatencyMs: 'x' }), {
    state: 'error',
    message: 'expected a GGUF file, got text',
  });
});

test("status: the server's advised debounce is kept when it is a usable number of ms", () => {
  assert.equal(parseStatus({ state: 'ready', debounceMs: 180 }).debounceMs, 180);
  assert.equal(parseStatus({ state: 'ready', debounceMs: 0 }).debounceMs, 0);
  assert.equal(parseStatus({ state: 'ready', debounceMs: 99.6 }).debounceMs, 100);
  assert.equal(parseStatus({ state: 'ready' }).debounceMs, undefined, 'missing');
  assert.equal(parseStatus({ state: 'ready', debounceMs: null }).debounceMs, undefined, 'null');
  assert.equal(parseStatus({ state: 'ready', debounceMs: -5 }).debounceMs, undefined, 'negative');
  assert.equal(parseStatus({ state: 'ready', debounceMs: NaN }).debounceMs, undefined, 'NaN');
  assert.equal(parseStatus({ state: 'ready', debounceMs: Infinity }).debounceMs, undefined, 'infinite');
  assert.equal(parseStatus({ state: 'ready', debounceMs: '200' }).debounceMs, undefined, 'a string');
  assert.equal(parseStatus({ state: 'ready', debounceMs: 1e9 }).debounceMs, 2000, 'huge: capped');
  // The whole status as the server sends it (lsp_server/server.py send_status, pacing figures included).
  assert.deepEqual(
    parseStatus({ state: 'ready', model: 'demo', lastLatencyMs: 90, cachedTokens: 5, recentLatencyMs: 95, typingGapMs: 120, timeBudgetMs: 400, debounceMs: 120 }),
    { state: 'ready', model: 'demo', lastLatencyMs: 90, cachedTokens: 5, debounceMs: 120 },
  );
});

test('status: the same text in every state (the icon tells it), the words leading the tooltip', () => {
  const ready = renderStatus({ state: 'ready', model: '/m/micro.gguf', lastLatencyMs: 41.6, cachedTokens: 12 }, true);
  assert.equal(ready.text, '$(sparkle) Code Llama');
  assert.equal(ready.label, 'Code Llama: ready, micro');
  assert.match(ready.tooltip, /^Code Llama: ready 42 ms\nServer: ready\nModel: \/m\/micro\.gguf\nLast model answer: 42 ms\nCached tokens: 12/);
  assert.equal(ready.severity, 'normal');
  // long answers in seconds, not capped at "9999 ms" (a 17.9 s answer)
  assert.equal(latencyWords(17900), '17.9 s');
  assert.equal(latencyWords(9999.4), '9999 ms');
  assert.equal(latencyWords(123456), '123 s');
  assert.match(renderStatus({ state: 'ready', lastLatencyMs: 17900 }, true).tooltip, /^Code Llama: ready 17\.9 s\n/);
  const loading = renderStatus({ state: 'loading', percentage: 42 }, true);
  assert.equal(loading.text, '$(loading~spin) Code Llama');
  assert.match(loading.tooltip, /^Code Llama: loading 42%\n/);
  const busy = renderStatus({ state: 'busy' }, true);
  assert.equal(busy.text, '$(sync~spin) Code Llama');
  const error = renderStatus({ state: 'error', message: 'expected a GGUF file' }, true);
  assert.equal(error.severity, 'error');
  assert.equal(error.text, '$(error) Code Llama');
  assert.match(error.tooltip, /^Code Llama: error\nServer: error \(expected a GGUF file\)/);
  const off = renderStatus({ state: 'ready' }, false);
  assert.equal(off.text, '$(circle-slash) Code Llama');
  assert.match(off.tooltip, /^Code Llama: off\n/);
  assert.equal(off.label, 'Code Llama: disabled');
  assert.equal(off.severity, 'warning');
  // every state: the same text after the icon (codicons are all one width)
  const texts = [ready, loading, busy, error, off, renderStatus({ state: 'ready', lastLatencyMs: 12345 }, true), renderStatus({ state: 'stopped', message: 'restarting in 1 s' }, true)]
    .map((v) => v.text.slice(v.text.indexOf(' ')));
  assert.equal(new Set(texts).size, 1, `texts ${texts}`);
});

test('status: answers cut by the time budget show as "slow" with the hint, instead of "ready"', () => {
  const wire = { state: 'ready', model: 'demo', lastLatencyMs: 2004, cutAnswers: 3, slow: 'answers cut at 2.0 s', hint: 'try a smaller model' };
  const parsed = parseStatus(wire);
  assert.equal(parsed.slow, 'answers cut at 2.0 s');
  assert.equal(parsed.hint, 'try a smaller model');
  assert.equal(parseStatus({ state: 'ready', slow: 7, hint: '' }).slow, undefined, 'not a string');
  assert.equal(parseStatus({ state: 'ready', slow: '' }).slow, undefined, 'empty');
  const view = renderStatus(parsed, true);
  assert.equal(view.text, '$(watch) Code Llama');
  assert.match(view.tooltip, /^Code Llama: slow: answers cut at 2\.0 s\n/);
  assert.equal(view.severity, 'warning');
  assert.equal(view.label, 'Code Llama: ready, demo, slow: answers cut at 2.0 s');
  assert.match(view.tooltip, /Slow: answers cut at 2\.0 s\nTry: try a smaller model/);
  // "slow" belongs to a ready server: loading, busy, error and "off" keep their own words
  assert.equal(renderStatus({ ...parsed, state: 'busy' }, true).tooltip.split('\n')[0].includes('slow'), false);
  assert.equal(renderStatus(parsed, false).tooltip.split('\n')[0].includes('slow'), false);
  // once the answers come whole again the server leaves the field out: "ready" again
  assert.match(renderStatus(parseStatus({ state: 'ready', lastLatencyMs: 90, cutAnswers: 1 }), true).tooltip, /^Code Llama: ready 90 ms/);
});

test('events: shown carries sizes only; accepted keeps the request, counts add up', () => {
  assert.deepEqual(describeText('a\nb\r\nc'), { chars: 6, lines: 3 });
  assert.equal(shownEvent('python', ['', '  '], 5), undefined);
  const shown = shownEvent('python', ['', 'return x\n'], 12, 'file:///a.py');
  assert.deepEqual(shown, { kind: 'shown', languageId: 'python', index: 1, candidates: 2, chars: 9, lines: 2, latencyMs: 12, uri: 'file:///a.py' });
  const accepted = acceptedEvent(shown!, 1, 'return x\n');
  assert.equal(accepted.kind, 'accepted');
  assert.equal(accepted.latencyMs, undefined);
  const counter = new EventCounter();
  counter.record(shown!);
  counter.record(shown!);
  counter.record(accepted);
  assert.equal(counter.shown, 2);
  assert.equal(counter.accepted, 1);
  assert.equal(counter.acceptanceRate, 0.5);
});

test('stderr lines keep the level the server logged them at', () => {
  const l = new StderrLeveler();
  assert.equal(l.level('2026-11-22 04:36:45 INFO lsp_server.server: model loaded in 120 ms'), 'info');
  assert.equal(l.level('2026-11-22 04:36:45 WARNING lsp_server.config: unknown setting'), 'warn');
  assert.equal(l.level('  continued message'), 'warn');
  assert.equal(l.level('Traceback (most recent call last):'), 'error');
  assert.equal(l.level('  File "x.py", line 1'), 'error');
  assert.equal(l.level('DEBUG:pygls.protocol:Sending data'), 'debug');
  assert.equal(l.level(`INFO ${'x'.repeat(100)} ERROR late in the message`), 'info');
});

test('events: the rest of a suggestion (typed through, partly accepted) is not counted as shown again', () => {
  const t = new ShownTracker();
  assert.equal(t.isNew('file:///a.py', ' width < 0:\n    raise'), true);
  assert.equal(t.isNew('file:///a.py', ' < 0:\n    raise'), false, 'after Ctrl+Right');
  assert.equal(t.isNew('file:///a.py', '\n    raise'), false, 'after another');
  assert.equal(t.isNew('file:///b.py', '\n    raise'), true, 'another file');
  assert.equal(t.isNew('file:///b.py', 'x = 1'), true, 'another suggestion');
});

test('a cursor event when the cursor rests on a line not told before', () => {
  const t = new CursorTracker();
  assert.deepEqual(t.rests('file:///a.py', 'python', 3, 4), {
    kind: 'cursor',
    languageId: 'python',
    uri: 'file:///a.py',
    position: { line: 3, character: 4 },
  });
  assert.equal(t.rests('file:///a.py', 'python', 3, 9), undefined, 'typing on the same line');
  assert.equal(t.rests('file:///a.py', 'python', 90, 0)?.position.line, 90, 'another line');
  assert.equal(t.rests('file:///b.py', 'python', 90, 0)?.uri, 'file:///b.py', 'another file');
  t.reset();
  assert.notEqual(t.rests('file:///b.py', 'python', 90, 0), undefined, 'a new server is told again');
});

test('an editor that became active is told at once; its own selection events keep that timer', () => {
  const d = new CursorDebounce(300);
  assert.equal(d.moved('file:///a.py', true), 0);
  assert.equal(d.moved('file:///a.py', false), undefined, 'the selection event that comes with the switch');
  d.fired();
  assert.equal(d.moved('file:///a.py', false), 300, 'a move once the switch was told rests first');
  assert.equal(d.moved('file:///b.py', true), 0);
  assert.equal(d.moved('file:///a.py', false), 300, 'a move in another editor rests first');
  assert.equal(d.moved('file:///b.py', false), 300, 'and the switch it replaced is no longer pending');
});
