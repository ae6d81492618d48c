import assert from 'node:assert/strict';
import { test } from 'node:test';
import { formatBytes, parseModels, pickerEntries } from '../modelPicker';
import { parseStatus, renderStatus } from '../status';

// What lsp_server's codellama/models answers (tests/test_modelinfo.py checks the server's side).
const answer = {
  nCtx: 4096,
  kvType: 'f16',
  memoryBytes: 8e9,
  local: [
    { spec: 'demo', path: '/p/demo.gguf', source: 'demo', sizeBytes: 8448128, quantization: 'F16', nCtxTrain: 4096, fim: true, fimFamily: 'codellama', memoryBytes: 3e8, fits: true },
    { spec: 'o/r:tiny-nofim.gguf', path: '/hf/x', source: 'huggingface', sizeBytes: 2e6, quantization: 'F16', nCtxTrain: 16384, fim: false, memoryBytes: 3e8, fits: true },
    { spec: '/m/broken.gguf', path: '/m/broken.gguf', source: 'folder', sizeBytes: 24, fim: false, error: 'expected a GGUF header, got 24 bytes' },
    { spec: 42 },
  ],
  known: [
    { spec: 'TheBloke/CodeLlama-7B-GGUF:codellama-7b.Q4_K_M.gguf', size: '7B', quantization: 'Q4_K_M', downloadBytes: 4.09e9, memoryBytes: 6.5e9, nCtxTrain: 16384, fim: true, fits: true, cached: false },
    { spec: 'TheBloke/CodeLlama-34B-GGUF:codellama-34b.Q8_0.gguf', size: '34B', quantization: 'Q8_0', downloadBytes: 35.9e9, memoryBytes: 37e9, nCtxTrain: 16384, fim: false, fits: false, cached: false },
    { spec: 'o/r:tiny-nofim.gguf', downloadBytes: 1, fim: false, cached: true },
  ],
};

test('models answer: read leniently, cached Hub files listed once', () => {
  const list = parseModels(answer);
  assert.ok(list);
  assert.equal(list.nCtx, 4096);
  assert.deepEqual(
    list.entries.map((e) => [e.spec, e.source]),
    [
      ['demo', 'demo'],
      ['o/r:tiny-nofim.gguf', 'huggingface'],
      ['/m/broken.gguf', 'folder'],
      ['TheBloke/CodeLlama-7B-GGUF:codellama-7b.Q4_K_M.gguf', 'hub'],
      ['TheBloke/CodeLlama-34B-GGUF:codellama-34b.Q8_0.gguf', 'hub'],
    ],
  );
  assert.equal(parseModels(null), undefined);
  assert.equal(parseModels({ nCtx: 4096, local: 'x', known: [] }), undefined);
});

test('picker entries: sizes, FIM, memory, and the warnings asked before use', () => {
  const entries = pickerEntries(parseModels(answer)!);
  const by = Object.fromEntries(entries.map((e) => [e.spec, e]));
  assert.equal(by.demo.label, '$(file-binary) demo');
  assert.equal(by.demo.description, 'F16 · 8 MB · trained 4096 tokens · FIM');
  assert.equal(by.demo.warning, undefined);
  assert.match(by.demo.detail, /^shipped demo — needs about 300 MB of memory at 4096 tokens$/);
  const q4 = by['TheBloke/CodeLlama-7B-GGUF:codellama-7b.Q4_K_M.gguf'];
  assert.equal(q4.description, 'Q4_K_M · 4.1 GB download · trained 16384 tokens · FIM');
  assert.equal(q4.group, 'hub');
  assert.equal(q4.warning, undefined);
  const big = by['TheBloke/CodeLlama-34B-GGUF:codellama-34b.Q8_0.gguf'];
  assert.ok(big.label.startsWith('$(warning)'));
  assert.equal(
    big.warning,
    'codellama-34b.Q8_0.gguf needs about 37.0 GB of memory at 4096 tokens, more than the 8.0 GB available now. ' +
      'codellama-34b.Q8_0.gguf has no fill-in-the-middle tokens: completions will use only the text before the cursor',
  );
  assert.match(by['o/r:tiny-nofim.gguf'].warning ?? '', /has no fill-in-the-middle tokens/);
  const broken = by['/m/broken.gguf'];
  assert.ok(broken.broken && broken.warning === undefined);
  assert.match(broken.detail, /^cannot be used: expected a GGUF header/);
});

test('bytes are quoted as downloads are', () => {
  assert.deepEqual([formatBytes(4.08e9), formatBytes(36_879_616), formatBytes(500)], ['4.1 GB', '37 MB', '1 kB']);
});

test('a download in the status item: percentage, size and speed in the tooltip', () => {
  // what lsp_server/models.py reports while huggingface_hub downloads (tests/test_models_hub.py checks the server)
  const message = 'downloading codellama-7b.Q4_K_M.gguf: 1402.0 of 4081.0 MB, 23.4 MB/s';
  const view = renderStatus(parseStatus({ state: 'loading', model: 'TheBloke/CodeLlama-7B-GGUF:codellama-7b.Q4_K_M.gguf', percentage: 34, message }), true);
  assert.match(view.tooltip, /^Code Llama: loading 34%\n/);
  assert.ok(view.tooltip.includes(`Server: loading (${message})`), view.tooltip);
});
