// End-to-end test of the packaged extension in a real VS Code (code-server) driven by Chromium.
//
// In: a JSON file (argv[2]) naming the code-server binary, the .vsix, the extension settings (the model),
// a workspace folder, the trials (each: a file in the workspace with one blanked line, the line (1-based),
// the text to type there, the delay between keys, and the file as it must be saved), and an output folder.
// Out: on stdout one JSON line {ok, trials: [{ok, file, delayMs, ghostText, saved, ghostLatencyMs,
// requests, keys, error?}], timings, error?}; screenshots ghost.png (ghost text on screen) and, when
// something fails, failure.png, plus the extension's and code-server's logs.
//
// What it does, as a user would: install the .vsix into a fresh, isolated code-server with VS Code's
// DEFAULT editor settings (quick suggestions on, word-based suggestions, auto-closing brackets, ...), open
// the folder, and for each trial open the file, go to the blanked line, type at the trial's speed, wait for
// ghost text, accept it with Tab, save with Ctrl+S and read the file back. Then the toggle, a restart and
// a crash of the server.
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
  // No editor.* or files.* setting here: the editor behaves as it does for a new user.
  ...(cfg.userSettings ?? cfg.settings),
};
writeFileSync(join(userData, 'User', 'settings.json'), JSON.stringify(userSettings, null, 2));
// code-server is a remote setup: settings of scope "machine" / "machine-overridable" (server command,
// model path) come from the remote machine's settings; user settings alone are dropped at the first
// configuration change.
mkdirSync(join(userData, 'Machine'), { recursive: true });
writeFileSync(join(userData, 'Machine', 'settings.json'), JSON.stringify(cfg.machineSettings ?? cfg.settings ?? {}, null, 2));
const csArgs = ['--config', emptyConfig, '--user-data-dir', userData, '--extensions-dir', extensions];

let codeServer;
let browser;
let page;
const result = { ok: false, trials: [], timings };
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
// cursor's view line (one span per token) and further lines in a view zone of view lines, which comes
// earlier in the DOM; spaces come as no-break spaces. Pieces are put in screen order (top, then left):
// pieces on one row are joined as they are, rows with newlines.
async function ghostText() {
  return page.evaluate(() => {
    const nodes = [...document.querySelectorAll('.monaco-editor [class*="ghost-text"]')];
    const top = nodes.filter((n) => !nodes.some((m) => m !== n && m.contains(n)));
    const pieces = [];
    for (const n of top) {
      const inner = n.closest('.view-line') ? [] : [...n.querySelectorAll('.view-line')];
      for (const el of inner.length > 0 ? inner : [n]) {
        const r = el.getBoundingClientRect();
        pieces.push({ top: Math.round(r.top), left: r.left, text: el.textContent ?? '' });
      }
    }
    if (pieces.length === 0) return '';
    pieces.sort((a, b) => a.top - b.top || a.left - b.left);
    // rows by position: a blank line of the suggestion draws nothing, but takes a line's height
    const anyLine = document.querySelector('.monaco-editor .view-lines .view-line');
    const lineHeight = anyLine ? anyLine.getBoundingClientRect().height : 19;
    const rows = [];
    for (const p of pieces) {
      const row = Math.round((p.top - pieces[0].top) / lineHeight);
      while (rows.length <= row) rows.push('');
      rows[row] += p.text;
    }
    return rows.join('\n').replace(/\u00a0/g, ' ');
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

async function openFile(name) {
  await page.keyboard.press('Control+P');
  const quick = page.locator('.quick-input-box input');
  await quick.waitFor({ state: 'visible', timeout: 15000 });
  await quick.fill(name);
  await page.locator('.quick-input-list .monaco-list-row').first().waitFor({ timeout: 15000 });
  await sleep(300);
  await page.keyboard.press('Enter');
  await page.locator('.tab.active', { hasText: name }).first().waitFor({ timeout: 15000 });
  await page.locator('.monaco-editor .view-lines').first().waitFor({ timeout: 15000 });
}

// Open `file` and put the cursor at the start of `line` as a user does (Ctrl+G, the line number, Enter, Home),
// then wait for the inline requests of the cursor move to come and go before the first key.
async function openAtLineStart(file, line) {
  await openFile(file);
  await page.locator('.monaco-editor .view-lines').first().click();
  await page.keyboard.press('Control+G');
  const quick = page.locator('.quick-input-box input');
  await quick.waitFor({ state: 'visible', timeout: 10000 });
  await quick.fill(`:${line}`);
  await sleep(200);
  await page.keyboard.press('Enter');
  await sleep(300);
  await page.keyboard.press('Home');
  await page.keyboard.press('Home'); // twice: the first may stop at the indentation
  await sleep(500);
}


/** The highest server request number (r17 -> 17) in the extension's log: the server numbers every
 *  completion request it receives, so the difference counts the requests that reached it. */
function lastRequestNumber() {
  let max = 0;
  for (const m of extensionLog().matchAll(/\br(\d+)[ :]/g)) max = Math.max(max, Number(m[1]));
  return max;
}

async function runTrial(trial, t, index) {
  const path = join(cfg.workspace, trial.file);
  const blank = readFileSync(path, 'utf8').split('\n')[trial.line - 1];
  if (blank === undefined || blank.replace(/\r$/, '') !== '') {
    throw new Error(`expected line ${trial.line} of ${trial.file} to be empty, got ${JSON.stringify(blank)}`);
  }
  const before = readFileSync(path, 'utf8');
  await openAtLineStart(trial.file, trial.line);
  const r0 = lastRequestNumber();
  // VS Code's word suggestions and the ghost (issue 24 item 13): `extra` (e.g. " w", which opens the word
  // widget on "width") typed before the ghost came ("widget-first") or after it was shown ("ghost-first").
  const extra = trial.extra ?? '';
  await page.keyboard.type(trial.typed + (trial.extraWhen === 'widget-first' ? extra : ''), { delay: trial.delayMs });
  let lastKey = Date.now();
  t.keys = trial.typed.length;
  const widgetVisible = () => page.evaluate(() => !!document.querySelector('.editor-widget.suggest-widget.visible'));
  let want = trial.expectedGhost;
  if (trial.extraWhen === 'ghost-first') {
    await waitFor('ghost text before the extra keys', async () => (await ghostText()).replace(/\s+$/, '') === want.replace(/\s+$/, ''), cfg.ghostTimeoutMs ?? 20000, 20);
    await sleep(200);
    for (const ch of extra) {
      await page.keyboard.type(ch);
      await sleep(trial.delayMs);
    }
    lastKey = Date.now();
    // looked at as soon as the keys are in: the ghost stays (shortened) with the widget open
    t.ghostRightAfterExtra = await ghostText();
    t.widgetRightAfterExtra = await widgetVisible();
  }
  if (extra) want = want.slice(extra.length);
  // Ghost text must come by itself, at rest, with the default settings: no manual trigger.
  const ghost = await waitFor(
    `ghost text ${JSON.stringify(want)}`,
    async () => {
      const g = await ghostText();
      if (g.trim() !== '') t.lastGhostSeen = g;
      return g.trim() !== '' && g.replace(/\s+$/, '') === want.replace(/\s+$/, '') ? g : false;
    },
    cfg.ghostTimeoutMs ?? 20000,
    20,
  );
  t.ghostLatencyMs = Date.now() - lastKey;
  t.ghostText = ghost;
  t.widgetWithGhost = await widgetVisible();
  t.requests = lastRequestNumber() - r0;
  await page.screenshot({ path: join(outDir, index === 0 ? 'ghost.png' : `ghost-trial${index + 1}.png`) });
  await sleep(200); // a person's reaction time between seeing the ghost text and pressing Tab
  if (trial.acceptLine) {
    // Ctrl+Down: the ghost's first line goes in, the rest stays as ghost text; Tab then takes the rest.
    await page.keyboard.press('Control+ArrowDown');
    const first = want.split('\n')[0];
    const rest = want.slice(first.length);
    t.afterLineAccept = await waitFor(
      'the rest of the ghost after Ctrl+Down',
      async () => {
        const g = await ghostText();
        // the rest starts with a line break: its first row is the empty end of the cursor's line
        const norm = (x) => x.replace(/^\n+/, '').replace(/\s+$/, '');
        return g.trim() !== '' && norm(g) === norm(rest) ? g : false;
      },
      5000,
      20,
    );
    // and the other lines, one Ctrl+Down each, until no ghost text is left
    t.lineAccepts = 1;
    while (t.lineAccepts < 8 && (await ghostText()).trim() !== '') {
      await sleep(200);
      await page.keyboard.press('Control+ArrowDown');
      t.lineAccepts += 1;
      await sleep(300);
    }
  }
  if (!trial.acceptLine || (await ghostText()).trim() !== '') await page.keyboard.press('Tab');
  await sleep(300);
  await page.keyboard.press('Control+S');
  t.saved = await waitFor('the saved file to change', () => {
    const now = readFileSync(path, 'utf8');
    return now !== before ? now : false;
  }, 15000);
  // On a loaded machine the file was seen written twice: first as typed, then with the accepted text (the
  // editor shows the whole text, saved). What counts is the file once the save has settled.
  if (t.saved !== trial.expectedSaved) {
    await sleep(3000);
    t.firstSaved = t.saved;
    t.saved = readFileSync(path, 'utf8');
  }
  if (t.saved !== trial.expectedSaved) {
    throw new Error(`expected the saved file to be the original, got ${JSON.stringify(t.saved.split('\n').slice(trial.line - 2, trial.line + 4))}`);
  }
}

/** The status item's accessible label (its state) and its width on screen in pixels, kept in result.statusWidths:
 *  the width must not change with the state (issue 24 item 11). */
async function statusSample(tag) {
  const s = await page.evaluate(() => {
    const el = document.querySelector('[aria-label^="Code Llama:"]');
    const item = el?.closest('.statusbar-item') ?? el;
    return item ? { label: el.getAttribute('aria-label'), text: item.textContent, width: item.getBoundingClientRect().width } : null;
  });
  if (s) (result.statusWidths ??= []).push({ tag, ...s });
}

/** The texts of the notification toasts on screen. */
async function toasts() {
  return page.evaluate(() => [...document.querySelectorAll('.notification-toast .notification-list-item-message')].map((e) => e.textContent ?? ''));
}

// The server is found nowhere (no .venv, not on PATH, no setting): one error notification naming the
// setting; its "Open Setting" opens the settings editor where that (machine) setting takes effect -
// code-server is a remote window, so the Remote tab, not "No Settings Found" in the User tab; setting it
// there restarts the server, says so, and the server gets ready.
async function missingServer() {
  const m = { ok: false };
  result.missing = m;
  await page.locator('.monaco-workbench').click({ position: { x: 640, y: 300 } });
  await openFile(cfg.openFile);
  await waitFor('the "not found" notification', async () => (await toasts()).some((t) => /not found|did not start/.test(t)), 60000);
  await sleep(3000); // a second notification for the same failure would be on screen by now
  m.errorToasts = (await toasts()).filter((t) => t.includes('Code Llama') || /codellama/i.test(t));
  await statusSample('error');
  const toast = page.locator('.notification-toast', { hasText: 'Code Llama' }).first();
  await toast.hover();
  await toast.locator('a.monaco-button, .monaco-button', { hasText: 'Open Setting' }).first().click();
  await page.locator('.settings-editor').first().waitFor({ timeout: 15000 });
  await sleep(1500);
  m.settingsEditor = await page.evaluate(() => {
    const ed = document.querySelector('.settings-editor');
    const tab = ed?.querySelector('.settings-tabs-widget .action-item.checked, .settings-tabs-widget .checked');
    const noResults = ed?.querySelector('.no-results-message');
    return {
      tab: tab?.textContent ?? '',
      noResults: noResults && noResults.offsetParent !== null ? noResults.textContent ?? '' : '',
      items: [...(ed?.querySelectorAll('.setting-item-label') ?? [])].map((e) => e.textContent ?? ''),
      // each setting's title as shown: its category ("Code Llama › Server: ") and its label
      titles: [...(ed?.querySelectorAll('.setting-item-title') ?? [])].map((e) => e.textContent ?? ''),
      search: ed?.querySelector('.settings-header-widget textarea, .suggest-input-container textarea')?.value ?? '',
    };
  });
  await page.screenshot({ path: join(outDir, 'open-setting.png') });
  // the extension's own section of the Settings editor, as "@ext:" (the gear on the extension) shows it
  await page.locator('.settings-editor').first().click({ position: { x: 300, y: 26 } }); // the search box
  await page.keyboard.press('Control+A');
  await page.keyboard.type('@ext:codellama-lsp.codellama-lsp', { delay: 20 });
  await sleep(2500);
  m.extensionSection = await page.evaluate(() => {
    const ed = document.querySelector('.settings-editor');
    return {
      groups: [...(ed?.querySelectorAll('.settings-group-title-label') ?? [])].map((e) => e.textContent ?? ''),
      titles: [...(ed?.querySelectorAll('.setting-item-title') ?? [])].map((e) => e.textContent ?? ''),
    };
  });
  await page.screenshot({ path: join(outDir, 'extension-settings.png') });
  // the user sets it where the editor showed it: the Remote (machine) settings
  const machine = join(userData, 'Machine', 'settings.json');
  writeFileSync(machine, JSON.stringify({ ...cfg.settings, 'codeLlama.server.pythonPath': cfg.pythonPath }, null, 2));
  await waitFor('the restart notification', async () => (await toasts()).some((t) => t.includes('restarting the server')), 30000);
  m.restartToast = true;
  await page.locator('[aria-label^="Code Llama: ready"]').first().waitFor({ timeout: cfg.readyTimeoutMs ?? 90000 });
  await statusSample('ready');
  m.ready = true;
  m.ok = true;
}

/** The Settings editor's rows on screen: each setting's title as shown ("Code Llama › Server: " and its label). */
async function settingsTitles() {
  return page.evaluate(() => [...document.querySelectorAll('.settings-editor .setting-item-title')].map((e) => e.textContent ?? ''));
}

// Settings under their old names (issue 24 item 11): the User file has `codellama.enable: false`, the Remote
// (machine) file `codellama.model` and `codellama.server.extraArgs`, the workspace's .vscode/settings.json a
// resource setting (`codellama.maxTokens`) and, as a hostile repository would ship them, machine settings under
// the old names (a server command, a URL). After start-up: one message about the rename; the old User value has
// taken effect (the status item says "disabled") and sits under the new name in the User file; the Remote file
// and the workspace file have their own values under the new names; the hostile values are left where they
// were, not moved, not in effect (the server started is the one found in the .venv, the hostile command never
// ran). Turning completions on loads the model the migrated Remote setting names. The Settings editor titles the
// settings "Code Llama › ...".
async function renamedSettings() {
  const r = { ok: false };
  result.rename = r;
  const files = {
    user: join(userData, 'User', 'settings.json'),
    machine: join(userData, 'Machine', 'settings.json'),
    workspace: join(cfg.workspace, '.vscode', 'settings.json'),
  };
  await page.locator('.monaco-workbench').click({ position: { x: 640, y: 300 } });
  await openFile(cfg.openFile);
  await waitFor('the extension to log "language client started"', () => extensionLog().includes('language client started'), 60000);
  await waitFor('the rename message', async () => (await toasts()).some((t) => t.includes('settings are now named')), 30000);
  await sleep(2000); // a second message would be on screen by now
  r.toasts = (await toasts()).filter((t) => t.includes('Code Llama'));
  await page.locator('[aria-label^="Code Llama: disabled"]').first().waitFor({ timeout: 30000 });
  r.disabledAtStart = true;
  r.files = Object.fromEntries(Object.entries(files).map(([k, f]) => [k, JSON.parse(readFileSync(f, 'utf8'))]));
  r.startLines = extensionLog().split('\n').filter((l) => l.includes('starting server:') || l.includes('moved to'));
  // the Settings editor, searched for one setting, as a user types it
  await runCommand('Preferences: Open Remote Settings');
  await page.locator('.settings-editor').first().waitFor({ timeout: 15000 });
  await sleep(1000);
  await page.locator('.settings-editor').first().click({ position: { x: 300, y: 26 } }); // the search box
  await page.keyboard.press('Control+A');
  await page.keyboard.type('codeLlama.server.pythonPath', { delay: 20 });
  await sleep(2500);
  r.searchTitles = await settingsTitles();
  await page.screenshot({ path: join(outDir, 'settings-titles.png') });
  await page.keyboard.press('Control+A');
  await page.keyboard.type('@ext:codellama-lsp.codellama-lsp', { delay: 20 });
  await sleep(2500);
  r.extensionTitles = await settingsTitles();
  await page.screenshot({ path: join(outDir, 'extension-settings.png') });
  // completions on: the model named by the migrated Remote setting loads
  await runCommand('Code Llama: Toggle Completions');
  await page.locator('[aria-label^="Code Llama: ready"]').first().waitFor({ timeout: cfg.readyTimeoutMs ?? 90000 });
  r.readyLabel = await page.evaluate(() => document.querySelector('[aria-label^="Code Llama: ready"]')?.getAttribute('aria-label') ?? '');
  r.filesAfterToggle = Object.fromEntries(Object.entries(files).map(([k, f]) => [k, JSON.parse(readFileSync(f, 'utf8'))]));
  r.ok = true;
}

// An `untitled:` buffer (issue 24 item 15): File: New Untitled File, its language set to Python (Change Language
// Mode, as a user does), the trial's text typed at human speed; the server chooses the syntax rules from the
// languageId (there is no file name to go by), so after `def add(a` typing `, b` shows the one-line ghost the
// Python rules give. Then Tab and Save As to a path: the saved bytes. A control buffer left as plain text
// (plaintext completions switched on for the test) gets the model's text with no Python rule applied.
async function untitledBuffers() {
  const u = { ok: false, buffers: [] };
  result.untitled = u;
  await page.locator('.monaco-workbench').click({ position: { x: 640, y: 300 } });
  await openFile(cfg.openFile);
  await waitFor('the extension to log "language client started"', () => extensionLog().includes('language client started'), 60000);
  await page.locator('[aria-label^="Code Llama: ready"]').first().waitFor({ timeout: cfg.readyTimeoutMs ?? 90000 });
  mark('server ready');
  for (const b of cfg.untitled) {
    const t = { language: b.language, ok: false };
    u.buffers.push(t);
    try {
      // the row named exactly so ("File: Compare New Untitled Text Files" may come first in the list)
      await page.keyboard.press('F1');
      const palette = page.locator('.quick-input-box input');
      await palette.waitFor({ state: 'visible', timeout: 10000 });
      await palette.fill('>File: New Untitled Text File');
      await page.locator('.quick-input-list .monaco-list-row[aria-label^="File: New Untitled Text File"]').first().click({ timeout: 10000 });
      await page.locator('.tab.active', { hasText: 'Untitled' }).first().waitFor({ timeout: 15000 });
      await sleep(500);
      if (b.language !== 'plaintext') {
        await runCommand('Change Language Mode');
        const input = page.locator('.quick-input-box input');
        await input.waitFor({ state: 'visible', timeout: 10000 });
        await sleep(300);
        await input.fill(b.languageName);
        await page.locator('.quick-input-list .monaco-list-row', { hasText: b.languageName }).first().waitFor({ timeout: 10000 });
        await sleep(300);
        await page.keyboard.press('Enter');
        await page.locator('.statusbar-item', { hasText: b.languageName }).first().waitFor({ timeout: 10000 });
      }
      t.languageShown = await page.evaluate(() => document.querySelector('[id="status.editor.mode"]')?.textContent ?? '');
      await page.locator('.monaco-editor .view-lines').first().click();
      await sleep(300);
      // the text pasted in (Ctrl+V: VS Code does not re-indent a paste by default), the cursor put at the end of
      // the trial's line (Ctrl+G, the line, End), then the keys typed at the trial's speed
      await page.evaluate((text) => navigator.clipboard.writeText(text), b.text);
      await page.keyboard.press('Control+V');
      await waitFor('the pasted text', async () => (await page.evaluate(() => document.querySelectorAll('.monaco-editor .view-line').length)) > 3, 10000);
      await sleep(500);
      await page.keyboard.press('Control+G');
      const go = page.locator('.quick-input-box input');
      await go.waitFor({ state: 'visible', timeout: 10000 });
      await go.fill(`:${b.line}`);
      await sleep(200);
      await page.keyboard.press('Enter');
      await sleep(300);
      await page.keyboard.press('End');
      await sleep(1000); // the requests of the cursor's move come and go
      await page.keyboard.type(b.typed, { delay: b.delayMs });
      t.ghostText = await waitFor(
        `ghost text ${JSON.stringify(b.expectedGhost)}`,
        async () => {
          const g = await ghostText();
          if (g.trim() !== '') t.lastGhostSeen = g;
          return g.trim() !== '' && g.replace(/\s+$/, '') === b.expectedGhost.replace(/\s+$/, '') ? g : false;
        },
        cfg.ghostTimeoutMs ?? 20000,
        20,
      );
      t.uri = await page.evaluate(() => document.querySelector('.tab.active')?.getAttribute('data-resource-name') ?? '');
      await page.screenshot({ path: join(outDir, `untitled-${b.language}.png`) });
      await sleep(200);
      await page.keyboard.press('Tab');
      await sleep(300);
      // Save As: Ctrl+S on an untitled buffer asks where; VS Code's simple file dialog (code-server) takes a path
      await page.keyboard.press('Control+S');
      const input = page.locator('.quick-input-box input');
      await input.waitFor({ state: 'visible', timeout: 10000 });
      await sleep(300);
      await input.fill(join(cfg.workspace, b.saveAs));
      await sleep(300);
      await page.keyboard.press('Enter');
      const path = join(cfg.workspace, b.saveAs);
      t.saved = await waitFor('the saved file', () => (existsSync(path) ? readFileSync(path, 'utf8') : false), 15000);
      await sleep(1000); // the save settling (see runTrial)
      t.saved = readFileSync(path, 'utf8');
      t.savedTab = await page.evaluate(() => document.querySelector('.tab.active')?.textContent ?? '');
      // what the user sees after saving: no error (the buffer was closed and the saved file opened)
      await sleep(1000);
      t.toasts = await toasts();
      t.ok = true;
    } catch (err) {
      t.error = err instanceof Error ? err.message : String(err);
      await page.screenshot({ path: join(outDir, `failure-untitled-${b.language}.png`) }).catch(() => undefined);
      await page.keyboard.press('Escape').catch(() => undefined);
    }
    mark(`untitled ${b.language}: ${t.ok ? 'ok' : t.error}`);
  }
  u.requestLines = extensionLog().split('\n').filter((l) => l.includes('untitled:'));
  u.ok = u.buffers.every((t) => t.ok);
}

// A Jupyter notebook (VS Code's built-in ipynb support; no Jupyter extension, no kernel): the extension's
// server gets the notebook through LSP notebook sync and completes in a code cell with the other cells as
// context. As a user: open the .ipynb, click into the cell, go to its blank line, type at the trial's speed,
// the ghost text comes by itself, Tab, Ctrl+S; the saved notebook's cell has the text.
async function notebook() {
  const trial = cfg.notebook;
  const n = { ok: false };
  result.notebook = n;
  const path = join(cfg.workspace, trial.file);
  const before = readFileSync(path, 'utf8');
  await page.locator('.monaco-workbench').click({ position: { x: 640, y: 300 } });
  await openFile(trial.file);
  await page.locator('.notebook-editor .code-cell-row .monaco-editor').first().waitFor({ timeout: 30000 });
  await waitFor('the extension to log "language client started"', () => extensionLog().includes('language client started'), 60000);
  await page.locator('[aria-label^="Code Llama: ready"]').first().waitFor({ timeout: cfg.readyTimeoutMs ?? 60000 });
  mark('notebook open, server ready');
  // the code cell's editor (markdown cells render as previews, not editors)
  const cell = page.locator('.notebook-editor .code-cell-row').nth(trial.codeCell);
  await cell.locator('.monaco-editor .view-lines').first().click();
  await sleep(300);
  await page.keyboard.press('Control+Home');
  for (let i = 1; i < trial.line; i += 1) await page.keyboard.press('ArrowDown');
  await page.keyboard.press('Home');
  await page.keyboard.press('Home');
  await sleep(500);
  const r0 = lastRequestNumber();
  await page.keyboard.type(trial.typed, { delay: trial.delayMs });
  const lastKey = Date.now();
  n.ghostText = await waitFor(
    `ghost text ${JSON.stringify(trial.expectedGhost)} in the cell`,
    async () => {
      const g = await ghostText();
      if (g.trim() !== '') n.lastGhostSeen = g;
      return g.trim() !== '' && g.replace(/\s+$/, '') === trial.expectedGhost.replace(/\s+$/, '') ? g : false;
    },
    cfg.ghostTimeoutMs ?? 20000,
    20,
  );
  n.ghostLatencyMs = Date.now() - lastKey;
  n.requests = lastRequestNumber() - r0;
  // the ghost is in the cell's editor, not in another cell's
  n.ghostInCell = await cell.evaluate((el) => el.querySelector('[class*="ghost-text"]') !== null);
  await page.screenshot({ path: join(outDir, 'notebook-ghost.png') });
  await sleep(200);
  await page.keyboard.press('Tab');
  await sleep(300);
  await page.keyboard.press('Control+S');
  n.saved = await waitFor('the saved notebook to change', () => {
    const now = readFileSync(path, 'utf8');
    return now !== before ? now : false;
  }, 15000);
  await sleep(1000); // the save settling (see runTrial)
  n.saved = readFileSync(path, 'utf8');
  // the server's log lines of the cell's requests: the notebook's other cells were around it
  n.cellLogLines = extensionLog().split('\n').filter((l) => l.includes('notebook cells around'));
  n.ok = true;
}

try {
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
  // the clipboard, for a scenario that pastes text as a user does
  await browser.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: base });
  await page.goto(`${base}/?folder=${encodeURIComponent(cfg.workspace)}`);
  await page.locator('.monaco-workbench').waitFor({ timeout: 90000 });
  mark('workbench loaded');

  // scenarios of their own, instead of the typing trials below: [what runs, the key of `result` it fills]
  const scenarios = {
    notebook: [notebook, 'notebook'],
    rename: [renamedSettings, 'rename'],
    untitled: [untitledBuffers, 'untitled'],
    'missing-server': [missingServer, 'missing'],
  };
  if (Object.hasOwn(scenarios, cfg.scenario ?? '')) {
    const [run, key] = scenarios[cfg.scenario];
    await run();
    result.ok = result[key]?.ok === true;
    throw null; // done: skip the trials (caught below, not an error)
  }

  // 4. Keys typed before the language client has started are lost to didOpen: open a file, wait for the
  //    client, then for the server to say it is ready (model loaded).
  await page.locator('.monaco-workbench').click({ position: { x: 640, y: 300 } });
  await openFile(cfg.trials[0].file);
  await waitFor('the extension to log "language client started"', () => extensionLog().includes('language client started'), 60000);
  mark('language client started');
  await statusSample('client started');
  const ready = page.locator('[aria-label^="Code Llama: ready"]');
  await ready.first().waitFor({ timeout: cfg.readyTimeoutMs ?? 60000 });
  mark('server ready');
  await statusSample('ready');

  // 5. The trials: type, see ghost text, Tab, save, compare. One failing trial does not stop the others.
  for (const [index, trial] of cfg.trials.entries()) {
    const t = { file: trial.file, delayMs: trial.delayMs, ok: false };
    result.trials.push(t);
    try {
      await runTrial(trial, t, index);
      t.ok = true;
    } catch (err) {
      t.error = err instanceof Error ? err.message : String(err);
      await page.screenshot({ path: join(outDir, `failure-trial${index + 1}.png`) }).catch(() => undefined);
      await page.keyboard.press('Escape').catch(() => undefined);
    }
    mark(`trial ${index + 1} (${trial.delayMs} ms/key): ${t.ok ? 'ok' : t.error}`);
  }

  // 8. Manual mode (codellama.autoTrigger: false): no ghost text by itself, however long the pause; the
  //    explicit request (Code Llama: Suggest Completions, Alt+\) still completes. Then back to automatic.
  if (cfg.manualTrial) {
    // the Remote (machine) settings file: code-server picks up its changes from disk (the User file's it did not)
    const settingsFile = join(userData, 'Machine', 'settings.json');
    const changes = () => (extensionLog().match(/settings changed/g) ?? []).length;
    const setAuto = async (on) => {
      const before = changes();
      // (with a long time budget: Suggest Completions asks for several candidates, which a loaded machine
      // cut short within the default 2 s)
      const manual = on ? {} : { 'codeLlama.autoTrigger': false, 'codeLlama.timeBudgetMs': 20000 };
      writeFileSync(settingsFile, JSON.stringify({ ...(cfg.settings ?? {}), ...manual }, null, 2));
      await waitFor('the settings change to reach the extension', () => changes() > before, 15000);
    };
    await setAuto(false);
    const trial = cfg.manualTrial;
    const m = { file: trial.file, delayMs: trial.delayMs, ok: false };
    result.manual = m;
    try {
      const path = join(cfg.workspace, trial.file);
      const before = readFileSync(path, 'utf8');
      await openAtLineStart(trial.file, trial.line);
      const r0 = lastRequestNumber();
      await page.keyboard.type(trial.typed, { delay: trial.delayMs });
      await sleep(2000); // a long pause: automatic ghost text would have come by now
      m.ghostWithoutAsking = await ghostText();
      m.requestsWithoutAsking = lastRequestNumber() - r0;
      await runCommand('Code Llama: Suggest Completions');
      m.ghostText = await waitFor(
        'ghost text after Suggest Completions',
        async () => {
          const g = await ghostText();
          if (g.trim() !== '') m.lastGhostSeen = g;
          return g.replace(/\s+$/, '') === trial.expectedGhost.replace(/\s+$/, '') ? g : false;
        },
        cfg.ghostTimeoutMs ?? 20000,
        20,
      );
      await sleep(200);
      await page.keyboard.press('Tab');
      await sleep(300);
      await page.keyboard.press('Control+S');
      m.saved = await waitFor('the saved file to change', () => {
        const now = readFileSync(path, 'utf8');
        return now !== before ? now : false;
      }, 15000);
      if (m.saved !== trial.expectedSaved) {
        await sleep(3000); // the save settling (see runTrial)
        m.saved = readFileSync(path, 'utf8');
      }
      m.ok = true;
    } catch (err) {
      m.error = err instanceof Error ? err.message : String(err);
      await page.screenshot({ path: join(outDir, 'failure-manual.png') }).catch(() => undefined);
      await page.keyboard.press('Escape').catch(() => undefined);
    }
    mark(`manual mode: ${m.ok ? 'ok' : m.error}`);
    await setAuto(true);
  }

  // 9. The toggle command flips completions off and on; the status item says so.
  await statusSample('ready after the trials');
  await runCommand('Code Llama: Toggle Completions');
  await page.locator('[aria-label^="Code Llama: disabled"]').first().waitFor({ timeout: 15000 });
  await statusSample('off');
  await runCommand('Code Llama: Toggle Completions');
  await page.locator('[aria-label^="Code Llama: ready"]').first().waitFor({ timeout: 15000 });
  result.toggled = true;
  mark('toggled off and on');

  // 10. Restart: a new server process, the model loaded again, "ready" again.
  const starts = () => (extensionLog().match(/language client started/g) ?? []).length;
  const before2 = starts();
  await runCommand('Code Llama: Restart Server');
  await statusSample('restarting');
  await waitFor('the restarted client', () => starts() > before2, 30000);
  await page.locator('[aria-label^="Code Llama: ready"]').first().waitFor({ timeout: 60000 });
  result.restarted = true;
  mark('restarted');
  // Normal typing and a requested restart leave no warnings or errors in the output channel (issue 24
  // items 10, 11): cancelled requests are debug-level, a server stopped on request is no error.
  await sleep(3000); // languageclient kills a server still there 2 s after `exit`
  const logLines = extensionLog().split('\n');
  result.cancelWarnings = logLines.filter((l) => /\[warning\]/.test(l) && /cancel/i.test(l));
  result.restartErrors = logLines.filter((l) => /\[error\]/.test(l));

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
  await statusSample('crashed');
  await waitFor('the client restarted after the crash', () => starts() > before3, 60000);
  await page.locator('[aria-label^="Code Llama: ready"]').first().waitFor({ timeout: 60000 });
  result.recoveredFromCrash = true;
  await statusSample('recovered');
  mark('recovered from a crash');
  result.ok = result.trials.every((t) => t.ok) && (!cfg.manualTrial || result.manual?.ok === true);
} catch (err) {
  if (err !== null) result.error = err instanceof Error ? `${err.message}\n${err.stack ?? ''}` : String(err);
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
