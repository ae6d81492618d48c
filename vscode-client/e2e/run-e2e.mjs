// End-to-end test of the packaged extension in a real VS Code (code-server) driven by Chromium.
//
// In: a JSON file (argv[2]) naming the code-server binary, the .vsix, the server command, the model, a
// workspace folder and a file in it, the line to complete (1-based), the text to type there and the text
// the ghost suggestion must show; and an output folder for screenshots and logs.
// Out: on stdout one JSON line {ok, ghostText, savedText, timings, error?}; screenshots ghost.png (ghost
// text on screen) and, when something fails, failure.png, plus the extension's and code-server's logs.
//
// What it does, as a user would: install the .vsix into a fresh, isolated code-server, open the folder,
// open the file, wait for the extension's language client to start and the server to report "ready",
// go to the blanked line, type, wait for ghost text, accept it with Tab, save with Ctrl+S.
// See ../../../shared/VSCODE_E2E.md for why each step looks the way it does.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, readdirSync, readlinkSync, writeFileSync, copyFileSync, existsSync, statSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { chromium } = require('playwright-core');

const cfg = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const outDir = cfg.outDir;
mkdirSync(outDir, { recursive: true });
const t0 = Date.now();
const timings = {};
const mark = (name) => {
  timings[name] = Date.now() - t0;
  console.error(`[e2e ${String(timings[name]).padStart(6)} ms] ${name}`);
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

async function waitFor(what, fn, timeoutMs, intervalMs = 250) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const value = await fn();
    if (value) return value;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(intervalMs);
  }
}

function filesUnder(dir) {
  if (!existsSync(dir)) return [];
  const out = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...filesUnder(p));
    else out.push(p);
  }
  return out;
}

// Everything code-server and Chromium write goes under one temporary root, never $HOME.
const root = mkdtempSync(join(cfg.tmpDir ?? tmpdir(), 'codellama-e2e-'));
const userData = join(root, 'user-data');
const extensions = join(root, 'extensions');
const profile = join(root, 'chromium-profile');
for (const d of [join(userData, 'User'), extensions, profile, join(root, 'xdg-config'), join(root, 'xdg-data'), join(root, 'xdg-cache')]) {
  mkdirSync(d, { recursive: true });
}
const emptyConfig = join(root, 'code-server.yaml');
writeFileSync(emptyConfig, '');
const env = {
  ...process.env,
  XDG_CONFIG_HOME: join(root, 'xdg-config'),
  XDG_DATA_HOME: join(root, 'xdg-data'),
  XDG_CACHE_HOME: join(root, 'xdg-cache'),
};
const userSettings = {
  'workbench.startupEditor': 'none',
  'telemetry.telemetryLevel': 'off',
  'update.mode': 'none',
  'extensions.autoUpdate': false,
  'extensions.autoCheckUpdates': false,
  'security.workspace.trust.enabled': false,
  'workbench.tips.enabled': false,
  'workbench.enableExperiments': false,
  'chat.commandCenter.enabled': false,
  // Nothing but our ghost text may compete for Tab or change what is typed.
  'editor.inlineSuggest.enabled': true,
  'editor.quickSuggestions': { other: 'off', comments: 'off', strings: 'off' },
  'editor.suggestOnTriggerCharacters': false,
  'editor.wordBasedSuggestions': 'off',
  'editor.tabCompletion': 'off',
  'editor.autoClosingBrackets': 'never',
  'editor.autoClosingQuotes': 'never',
  'editor.autoSurround': 'never',
  'editor.formatOnSave': false,
  'files.insertFinalNewline': false,
  'files.trimTrailingWhitespace': false,
  'files.autoSave': 'off',
  ...cfg.settings,
};
writeFileSync(join(userData, 'User', 'settings.json'), JSON.stringify(userSettings, null, 2));
// code-server is a remote setup: settings of scope "machine" / "machine-overridable" (server command,
// model path) come from the remote machine's settings; user settings alone are dropped at the first
// configuration change.
mkdirSync(join(userData, 'Machine'), { recursive: true });
writeFileSync(join(userData, 'Machine', 'settings.json'), JSON.stringify(cfg.settings ?? {}, null, 2));
const csArgs = ['--config', emptyConfig, '--user-data-dir', userData, '--extensions-dir', extensions];

let codeServer;
let browser;
let page;
const result = { ok: false, ghostText: null, savedText: null, timings };
const csLog = [];

function saveLogs() {
  writeFileSync(join(outDir, 'code-server.log'), csLog.join(''));
  for (const f of filesUnder(join(userData, 'logs'))) {
    if (f.includes('codellama') || f.endsWith('exthost.log') || f.includes('Code Llama')) {
      copyFileSync(f, join(outDir, f.slice(join(userData, 'logs').length + 1).replace(/[\\/]/g, '__')));
    }
  }
}

function extensionLog() {
  return filesUnder(join(userData, 'logs'))
    .filter((f) => f.includes('codellama-lsp.codellama-lsp') && f.endsWith('.log'))
    .map((f) => readFileSync(f, 'utf8'))
    .join('\n');
}

// Text of the ghost suggestion on screen. VS Code renders its first line as decorations inside the
// cursor's view line (one span per token) and further lines in a view zone of view lines; spaces come
// as no-break spaces. Spans of one view line are joined as they are, view lines with newlines.
async function ghostText() {
  return page.evaluate(() => {
    const nodes = [...document.querySelectorAll('.monaco-editor [class*="ghost-text"]')];
    const top = nodes.filter((n) => !nodes.some((m) => m !== n && m.contains(n)));
    const lines = [];
    let lastLine = null;
    for (const n of top) {
      const line = n.closest('.view-line');
      const inner = line ? [] : [...n.querySelectorAll('.view-line')];
      if (inner.length > 0) {
        lines.push(...inner.map((v) => v.textContent ?? ''));
        lastLine = null;
      } else if (line !== null && line === lastLine) {
        lines[lines.length - 1] += n.textContent ?? '';
      } else {
        lines.push(n.textContent ?? '');
        lastLine = line;
      }
    }
    return lines.join('\n').replace(/\u00a0/g, ' ');
  });
}

async function runCommand(title) {
  await page.keyboard.press('F1');
  const input = page.locator('.quick-input-box input');
  await input.waitFor({ state: 'visible', timeout: 10000 });
  await input.fill(`>${title}`);
  await page.locator('.quick-input-list .monaco-list-row').first().waitFor({ timeout: 10000 });
  await sleep(300);
  await page.keyboard.press('Enter');
}

try {
  // The line to type on must be empty: typing goes to its start, and leftovers would stay in the file.
  const blank = readFileSync(join(cfg.workspace, cfg.file), 'utf8').split('\n')[cfg.line - 1];
  if (blank === undefined || blank.replace(/\r$/, '') !== '') {
    throw new Error(`expected line ${cfg.line} of ${cfg.file} to be empty, got ${JSON.stringify(blank)}`);
  }

  // 1. Install the packaged extension, offline, into the isolated extensions folder.
  const install = spawnSync(cfg.codeServer, [...csArgs, '--install-extension', cfg.vsix], { env, encoding: 'utf8', timeout: 120000 });
  if (install.status !== 0) throw new Error(`expected --install-extension to succeed, got exit ${install.status}: ${install.stderr}${install.stdout}`);
  const installed = readdirSync(extensions).filter((n) => n.startsWith('codellama-lsp.codellama-lsp-'));
  if (installed.length === 0) throw new Error(`expected the extension in ${extensions}, got ${readdirSync(extensions).join(', ')}`);
  mark('extension installed');

  // 2. Serve the workbench.
  const port = await freePort();
  codeServer = spawn(
    cfg.codeServer,
    [...csArgs, '--bind-addr', `127.0.0.1:${port}`, '--auth', 'none', '--disable-telemetry', '--disable-update-check', '--disable-workspace-trust', cfg.workspace],
    { env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  codeServer.stdout.on('data', (d) => csLog.push(d.toString()));
  codeServer.stderr.on('data', (d) => csLog.push(d.toString()));
  const base = `http://127.0.0.1:${port}`;
  await waitFor('code-server to answer', async () => {
    try {
      return (await fetch(`${base}/healthz`)).ok;
    } catch {
      return false;
    }
  }, 60000);
  mark('code-server up');

  // 3. A browser on the workbench.
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: cfg.chromium ?? '/usr/bin/chromium',
    headless: true,
    env,
    viewport: { width: 1280, height: 760 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  page = browser.pages()[0] ?? (await browser.newPage());
  await page.goto(`${base}/?folder=${encodeURIComponent(cfg.workspace)}`);
  await page.locator('.monaco-workbench').waitFor({ timeout: 90000 });
  mark('workbench loaded');

  // 4. Open the file through Quick Open.
  await page.locator('.monaco-workbench').click({ position: { x: 640, y: 300 } });
  await page.keyboard.press('Control+P');
  const quick = page.locator('.quick-input-box input');
  await quick.waitFor({ state: 'visible', timeout: 15000 });
  await quick.fill(cfg.file);
  await page.locator('.quick-input-list .monaco-list-row').first().waitFor({ timeout: 15000 });
  await sleep(300);
  await page.keyboard.press('Enter');
  await page.locator('.monaco-editor .view-lines').first().waitFor({ timeout: 15000 });
  mark('file open');

  // 5. Keys typed before the language client has started are lost to didOpen: wait for the client,
  //    then for the server to say it is ready (model loaded).
  await waitFor('the extension to log "language client started"', () => extensionLog().includes('language client started'), 60000);
  mark('language client started');
  const ready = page.locator('[aria-label^="Code Llama: ready"]');
  await ready.first().waitFor({ timeout: cfg.readyTimeoutMs ?? 60000 });
  mark('server ready');

  // 6. Go to the blanked line and type its beginning.
  await page.locator('.monaco-editor .view-lines').first().click();
  await page.keyboard.press('Control+G');
  await quick.waitFor({ state: 'visible', timeout: 10000 });
  await quick.fill(`:${cfg.line}`);
  await sleep(200);
  await page.keyboard.press('Enter');
  await sleep(300);
  await page.keyboard.press('Home');
  await page.keyboard.press('Home'); // twice: the first may stop at the indentation
  await page.keyboard.type(cfg.typed, { delay: 40 });
  mark('typed');

  // 7. Ghost text: automatic first; if it does not come, trigger it as a user would (command palette).
  let ghost = '';
  try {
    ghost = await waitFor('ghost text', async () => (await ghostText()).trim() !== '' && (await ghostText()), cfg.ghostTimeoutMs ?? 20000);
  } catch {
    console.error('[e2e] no automatic ghost text; triggering "Trigger Inline Suggestion"');
    await runCommand('Trigger Inline Suggestion');
    ghost = await waitFor('ghost text after manual trigger', async () => (await ghostText()).trim() !== '' && (await ghostText()), cfg.ghostTimeoutMs ?? 20000);
  }
  // Let the suggestion settle (a later keystroke-free request may refine it), then read it again.
  await sleep(500);
  ghost = (await ghostText()) || ghost;
  result.ghostText = ghost;
  mark('ghost text shown');
  await page.screenshot({ path: join(outDir, 'ghost.png') });

  // 8. Accept with Tab, save, and read the file back from disk.
  const path = join(cfg.workspace, cfg.file);
  const before = readFileSync(path, 'utf8');

  await page.keyboard.press('Tab');
  await sleep(300);
  await page.keyboard.press('Control+S');
  result.savedText = await waitFor('the saved file to change', () => {
    const now = readFileSync(path, 'utf8');
    return now !== before ? now : false;
  }, 15000);
  mark('accepted and saved');
  await page.screenshot({ path: join(outDir, 'accepted.png') });

  // 9. The toggle command flips completions off and on; the status item says so.
  await runCommand('Code Llama: Toggle Completions');
  await page.locator('[aria-label^="Code Llama: disabled"]').first().waitFor({ timeout: 15000 });
  await runCommand('Code Llama: Toggle Completions');
  await page.locator('[aria-label^="Code Llama: ready"]').first().waitFor({ timeout: 15000 });
  result.toggled = true;
  mark('toggled off and on');

  // 10. Restart: a new server process, the model loaded again, "ready" again.
  const starts = () => (extensionLog().match(/language client started/g) ?? []).length;
  const before2 = starts();
  await runCommand('Code Llama: Restart Server');
  await waitFor('the restarted client', () => starts() > before2, 30000);
  await page.locator('[aria-label^="Code Llama: ready"]').first().waitFor({ timeout: 60000 });
  result.restarted = true;
  mark('restarted');

  // 11. A crash: kill the server (the process whose working directory is our workspace); the extension
  //     must start a new one after its back-off delay and get back to "ready".
  const servers = readdirSync('/proc').filter((pid) => /^\d+$/.test(pid)).filter((pid) => {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      return readlinkSync(`/proc/${pid}/cwd`) === cfg.workspace && /lsp_server|codellama-lsp/.test(cmd) && cmd.includes('--stdio');
    } catch {
      return false;
    }
  });
  if (servers.length !== 1) throw new Error(`expected one server process in ${cfg.workspace}, got ${servers.length}`);
  const before3 = starts();
  process.kill(Number(servers[0]), 'SIGKILL');
  await waitFor('the extension to notice the crash', () => /server exited unexpectedly; restarting in \d+ ms/.test(extensionLog()), 30000);
  await waitFor('the client restarted after the crash', () => starts() > before3, 60000);
  await page.locator('[aria-label^="Code Llama: ready"]').first().waitFor({ timeout: 60000 });
  result.recoveredFromCrash = true;
  mark('recovered from a crash');
  result.ok = true;
} catch (err) {
  result.error = err instanceof Error ? `${err.message}\n${err.stack ?? ''}` : String(err);
  if (page) await page.screenshot({ path: join(outDir, 'failure.png') }).catch(() => undefined);
} finally {
  saveLogs();
  if (browser) await browser.close().catch(() => undefined);
  if (codeServer?.pid) {
    try {
      process.kill(-codeServer.pid, 'SIGTERM');
    } catch {
      // already gone
    }
  }
  mark('done');
  process.stdout.write(JSON.stringify(result) + '\n');
}
process.exit(result.ok ? 0 : 1);
