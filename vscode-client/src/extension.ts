/**
 * The VS Code side of codellama-lsp: starts the server, shows its ghost text, and keeps the user informed.
 *
 * In: the `codeLlama.*` settings (moved from their old `codellama.*` names at start-up, see rename.ts) and the user's
 * commands. Out: a running `codellama-lsp --stdio` (through
 * vscode-languageclient, which registers the inline-completion provider the server advertises), one log
 * channel that also receives the server's stderr, a status item fed by `codellama/status`, and
 * `codellama/event` notifications: shown/accepted for the server's local statistics, and where the cursor rests
 * (`cursor`, ~300 ms after the selection stops moving, at once when an editor becomes active), so that the server evaluates
 * that place's prompt before the first key there.
 *
 * The extension is deliberately thin: all completion logic lives in the server. What it adds is the
 * client-side switch (toggle, per-language enablement, applied before any request is made and sent to the
 * server too), a debounce on top of VS Code's inline-suggestion delay (one model run per pause in typing;
 * the server's `debounceMs` advice may lengthen it), restarts with back-off when the server dies, finding
 * the server, and the model picker.
 *
 * Ghost text is the product: the server's `textDocument/completion` (meant for editors without inline
 * completion) is kept out of VS Code's suggestion list unless `codeLlama.suggestList` is on. With VS Code's
 * default `editor.quickSuggestions` an item there opens the suggest widget on every key, Enter accepts it,
 * and inline requests then ask to continue the selected item instead of showing ghost text.
 */
import * as readline from 'node:readline';
import * as vscode from 'vscode';
import {
  CloseAction,
  DidChangeConfigurationNotification,
  ErrorAction,
  LanguageClient,
  LanguageClientOptions,
  RevealOutputChannelOn,
  ServerOptions,
  TransportKind,
} from 'vscode-languageclient/node';
import { RestartPolicy } from './backoff';
import {
  ACCEPT_COMMAND,
  CompletionEvent,
  CursorDebounce,
  CursorTracker,
  EVENT_METHOD,
  EventCounter,
  ShownTracker,
  acceptedEvent,
  shownEvent,
} from './events';
import { LaunchError, type SearchPlaces, launchSpec } from './launch';
import { StderrLeveler } from './logLevel';
import { MODELS_METHOD, type PickerEntry, parseModels, pickerEntries } from './modelPicker';
import { modelLabel, parseModelSpec } from './modelSpec';
import { OLD_SECTION, SECTION, type SettingsStore, type Target, fallbackGetter, migrateSettings, migrationMessage, renamedKeys } from './rename';
import { RESTART_KEYS, clientSwitches, effectiveDebounceMs, languageEnabled, serverSettings } from './settings';
import { ServerStatus, parseStatus, renderStatus } from './status';

/** How long the cursor must rest before the server is told where (it then prefills that place). */
const CURSOR_REST_MS = 300;
/** The documents the client attaches (its documentSelector's schemes): only they get cursor events. */
const SCHEMES = ['file', 'untitled', 'vscode-notebook-cell'];
const STATUS_METHOD = 'codellama/status';

let manager: ServerManager | undefined;

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  const log = vscode.window.createOutputChannel('Code Llama', { log: true });
  context.subscriptions.push(log);
  // Before the server starts: it is launched with the values found under the old names too.
  await migrateOldSettings(context, log);
  manager = new ServerManager(context, log);
  context.subscriptions.push(
    vscode.commands.registerCommand('codellama.toggle', () => manager?.toggle()),
    vscode.commands.registerCommand('codellama.restart', () => manager?.restart('restart requested')),
    vscode.commands.registerCommand('codellama.selectModel', () => selectModel(log)),
    vscode.commands.registerCommand('codellama.showLogs', () => log.show(true)),
    vscode.commands.registerCommand('codellama.trigger', () => vscode.commands.executeCommand('editor.action.inlineSuggest.trigger')),
    vscode.commands.registerCommand('codellama.statusMenu', () => statusMenu()),
    vscode.commands.registerCommand(ACCEPT_COMMAND, (event: CompletionEvent) => manager?.report(event)),
    vscode.workspace.onDidChangeConfiguration((e) => manager?.configurationChanged(e)),
    // an untrusted workspace's files are left alone; once trusted, its old values move like the others
    vscode.workspace.onDidGrantWorkspaceTrust(() => void migrateOldSettings(context, log)),
    vscode.window.onDidChangeTextEditorSelection((e) => manager?.cursorMoved(e.textEditor)),
    vscode.window.onDidChangeActiveTextEditor((editor) => editor && manager?.cursorMoved(editor, true)),
  );
  await manager.start();
}

/** Where `ConfigurationTarget`s are. */
const TARGETS: Record<Target, vscode.ConfigurationTarget> = {
  global: vscode.ConfigurationTarget.Global,
  workspace: vscode.ConfigurationTarget.Workspace,
  workspaceFolder: vscode.ConfigurationTarget.WorkspaceFolder,
};

/** Each value under an old `codellama.*` name moves to its `codeLlama.*` name in the same scope (rename.ts); one
 *  message says what moved. A value that cannot move (read-only file) is still read under its old name. */
async function migrateOldSettings(context: vscode.ExtensionContext, log: vscode.LogOutputChannel): Promise<void> {
  const scoped = (section: string, folder?: string) => vscode.workspace.getConfiguration(section, folder ? vscode.Uri.parse(folder) : undefined);
  const store: SettingsStore = {
    inspect: (section, key, folder) => scoped(section, folder).inspect(key),
    update: async (section, key, value, target, folder) => {
      await scoped(section, folder).update(key, value, TARGETS[target]);
    },
  };
  const manifest = context.extension.packageJSON as { contributes?: { configuration?: { properties?: Record<string, { scope?: string }> } } };
  // in a single-folder window the folder's settings are the workspace's (moved once, as "workspace")
  const folders = vscode.workspace.workspaceFile ? (vscode.workspace.workspaceFolders ?? []).map((f) => f.uri.toString()) : [];
  const report = await migrateSettings(store, renamedKeys(manifest.contributes?.configuration?.properties ?? {}), {
    trusted: vscode.workspace.isTrusted,
    folders,
  });
  for (const m of report.moved) log.info(`setting ${OLD_SECTION}.${m.key} moved to ${SECTION}.${m.key} (${m.target}${m.folder ? ` ${m.folder}` : ''})`);
  for (const f of report.failed) log.warn(`could not move ${OLD_SECTION}.${f.key} (${f.target}): ${f.error}; its value is still read`);
  const message = migrationMessage(report);
  if (!message) return;
  // said once: a file that cannot be written would otherwise repeat the message at every start
  const said = `renameNotice:${message}`;
  if (context.globalState.get(said)) return;
  await context.globalState.update(said, true);
  void vscode.window.showInformationMessage(message);
}

export async function deactivate(): Promise<void> {
  await manager?.dispose();
  manager = undefined;
}

/** vscode-languageclient shows its own error notification when the server cannot start (with 'force');
 *  ours names the setting that fixes it, so one failed start gives one notification, not two. The message
 *  still goes to the log. */
class CodeLlamaClient extends LanguageClient {
  /** Set when we stop the server (Restart Server, a settings change, closing the window). */
  stopRequested = false;

  override error(message: string, data?: unknown, showNotification: boolean | 'force' = true): void {
    // vscode-languageclient kills a server that has not exited 2 s after `exit` (llama.cpp may take longer
    // to free a model) and logs the signal as an error: after a stop we asked for, that is no error.
    if (this.stopRequested && /^Server process exited with (signal|code)/.test(message)) {
      this.info(`${message} (stopped on request)`, data, false);
      return;
    }
    super.error(message, data, showNotification === 'force' ? false : showNotification);
  }
}

/** Owns the LanguageClient: one per server process; a restart builds a fresh one. */
class ServerManager {
  private client: CodeLlamaClient | undefined;
  private readonly policy = new RestartPolicy();
  private readonly item: vscode.StatusBarItem;
  private status: ServerStatus = { state: 'stopped' };
  private readonly counter = new EventCounter();
  private readonly shownTracker = new ShownTracker();
  private readonly cursorTracker = new CursorTracker();
  private readonly cursorDebounce = new CursorDebounce(CURSOR_REST_MS);
  private cursorTimer: NodeJS.Timeout | undefined;
  private restartTimer: NodeJS.Timeout | undefined;
  private stopping = false;

  constructor(
    context: vscode.ExtensionContext,
    private readonly log: vscode.LogOutputChannel,
  ) {
    this.item = vscode.window.createStatusBarItem('codellama.status', vscode.StatusBarAlignment.Right, 100);
    this.item.name = 'Code Llama';
    this.item.command = 'codellama.statusMenu';
    context.subscriptions.push(this.item);
    this.render();
    this.item.show();
  }

  private config(): vscode.WorkspaceConfiguration {
    return vscode.workspace.getConfiguration(SECTION);
  }

  /** A setting by its key in the section; a value left under the old name (not movable) still counts. */
  private readonly get = settingGetter();

  private get enabled(): boolean {
    return clientSwitches(this.get).enable;
  }

  private setStatus(status: ServerStatus): void {
    this.status = status;
    this.render();
  }

  private render(): void {
    const view = renderStatus(this.status, this.enabled);
    this.item.text = view.text;
    const stats = this.counter.shown > 0 ? `\nThis session: ${this.counter.accepted} of ${this.counter.shown} suggestions accepted` : '';
    this.item.tooltip = view.tooltip + stats;
    this.item.accessibilityInformation = { label: view.label };
    // No background colour: VS Code pads an item that has one, so it grew by 4 px when off or stopped (measured
    // in code-server) and the items beside it moved. The icon says the state; an error is also drawn in red.
    this.item.color = view.severity === 'error' ? new vscode.ThemeColor('errorForeground') : undefined;
  }

  async start(): Promise<void> {
    const get = this.get;
    let spec;
    try {
      spec = launchSpec(get, process.env, await searchPlaces());
    } catch (err) {
      if (!(err instanceof LaunchError)) throw err;
      this.log.error(err.message);
      this.setStatus({ state: 'error', message: err.message });
      void offerSetting(err.message, err.setting);
      return;
    }
    const serverOptions: ServerOptions = {
      command: spec.command,
      args: spec.args,
      transport: TransportKind.stdio,
      options: { env: spec.env, cwd: vscode.workspace.workspaceFolders?.[0]?.uri.fsPath },
    };
    const settings = serverSettings(get);
    const clientOptions: LanguageClientOptions = {
      // Notebook code cells too: each cell is a document of its own to the server, which takes the other
      // open cells as extra context like other open files (and their languageId for the syntax rules).
      documentSelector: SCHEMES.map((scheme) => ({ scheme })),
      initializationOptions: settings,
      outputChannel: this.log,
      traceOutputChannel: this.log,
      revealOutputChannelOn: RevealOutputChannelOn.Never,
      stdioOptions: {
        stdout: () => undefined, // stdout carries JSON-RPC only
        stderr: (input, channel) => {
          const leveler = new StderrLeveler();
          readline
            .createInterface({ input, crlfDelay: Infinity, terminal: false })
            .on('line', (line) => channel[leveler.level(line)](line));
        },
      },
      errorHandler: {
        error: () => ({ action: ErrorAction.Continue }),
        // We restart ourselves, with back-off, instead of languageclient's fixed "5 times in 3 minutes".
        closed: () => {
          if (this.stopping) return { action: CloseAction.DoNotRestart, handled: true };
          setTimeout(() => void this.crashed(), 0);
          return { action: CloseAction.DoNotRestart, handled: true, message: 'connection to the server closed' };
        },
      },
      middleware: {
        provideCompletionItem: (document, position, context, token, next) => {
          const switches = clientSwitches(get);
          if (!switches.suggestList || !switches.enable || !languageEnabled(switches.enabledLanguages, document.languageId)) return undefined;
          return next(document, position, context, token);
        },
        provideInlineCompletionItems: async (document, position, context, token, next) => {
          const switches = clientSwitches(get);
          if (!switches.enable || !languageEnabled(switches.enabledLanguages, document.languageId)) return null;
          // Manual mode: only an explicit request (Alt+\, the command palette) reaches the server.
          if (!switches.autoTrigger && context.triggerKind === vscode.InlineCompletionTriggerKind.Automatic) return null;
          // VS Code cancels the token when the user types on: only the request of a pause gets through.
          // The latest status's advice may lengthen the wait (the server's answers are slower than the typing).
          const debounceMs = effectiveDebounceMs(switches.debounceMs, this.status.debounceMs, switches.adaptiveDebounce);
          if (context.triggerKind === vscode.InlineCompletionTriggerKind.Automatic && debounceMs > 0) {
            await pause(debounceMs, token);
            if (token.isCancellationRequested) return null;
          }
          const t0 = Date.now();
          const result = await next(document, position, context, token);
          if (!result || token.isCancellationRequested) return result;
          const items = Array.isArray(result) ? result : result.items;
          const texts = items.map((i) => (typeof i.insertText === 'string' ? i.insertText : i.insertText.value));
          const shown = shownEvent(document.languageId, texts, Date.now() - t0);
          if (shown) {
            // the rest of a suggestion already shown (typed through, partly accepted) is not shown again
            if (this.shownTracker.isNew(document.uri.toString(), texts[shown.index])) this.report(shown);
            items.forEach((item, index) => {
              // VS Code runs an item's command when the user accepts it: that is our "accepted" signal.
              item.command ??= { title: 'accepted', command: ACCEPT_COMMAND, arguments: [acceptedEvent(shown, index, texts[index])] };
            });
          }
          return result;
        },
      },
    };
    // the id names the trace setting vscode-languageclient reads: `codeLlama.trace.server`
    const client = new CodeLlamaClient('codeLlama', 'Code Llama', serverOptions, clientOptions);
    client.onNotification(STATUS_METHOD, (params: unknown) => this.setStatus(parseStatus(params)));
    this.client = client;
    this.cursorTracker.reset();
    this.stopping = false;
    this.setStatus({ state: 'starting', model: settings.model });
    this.log.info(`starting server: ${spec.command} ${spec.args.join(' ')} (model ${settings.model})`);
    this.policy.started(Date.now());
    try {
      await client.start();
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      this.log.error(`server failed to start: ${message}`);
      this.setStatus({ state: 'error', message: `expected a running codellama-lsp, got: ${message}` });
      void offerSetting(
        `${spec.command} did not start (${message}). Set "codeLlama.server.pythonPath" to a Python that has codellama-lsp installed, or "codeLlama.server.command".`,
        'codeLlama.server.pythonPath',
      );
      return;
    }
    // The end-to-end test waits for this line before typing (keys typed earlier would be lost).
    this.log.info('language client started');
    if (this.status.state === 'starting') this.setStatus({ ...this.status, state: 'loading' });
  }

  private async crashed(): Promise<void> {
    const old = this.client;
    this.client = undefined;
    await old?.dispose().catch(() => undefined);
    const delay = this.policy.crashed(Date.now());
    if (delay === undefined) {
      const message = `server exited ${this.policy.consecutiveCrashes} times in a row; not restarting`;
      this.log.error(message);
      this.setStatus({ state: 'error', message });
      const choice = await vscode.window.showErrorMessage(`Code Llama: ${message}.`, 'Restart', 'Show Logs');
      if (choice === 'Restart') await this.restart('restart requested');
      else if (choice === 'Show Logs') this.log.show(true);
      return;
    }
    this.log.warn(`server exited unexpectedly; restarting in ${delay} ms`);
    this.setStatus({ state: 'stopped', message: `restarting in ${Math.round(delay / 1000)} s` });
    clearTimeout(this.restartTimer);
    this.restartTimer = setTimeout(() => void this.start(), delay);
  }

  async restart(reason: string): Promise<void> {
    this.log.info(reason);
    clearTimeout(this.restartTimer);
    this.policy.reset();
    await this.stop();
    await this.start();
  }

  private async stop(): Promise<void> {
    const old = this.client;
    this.client = undefined;
    if (!old) return;
    this.stopping = true;
    old.stopRequested = true;
    try {
      await old.stop(5000);
    } catch (err) {
      this.log.warn(`server did not stop cleanly: ${err instanceof Error ? err.message : String(err)}`);
    }
    await old.dispose().catch(() => undefined);
    this.setStatus({ state: 'stopped' });
  }

  async toggle(): Promise<void> {
    await this.config().update('enable', !this.enabled, vscode.ConfigurationTarget.Global);
  }

  report(event: CompletionEvent): void {
    this.counter.record(event);
    this.render();
    if (this.client?.isRunning()) {
      this.client.sendNotification(EVENT_METHOD, event).catch(() => undefined);
    }
  }

  /**
   * The cursor moved (or an editor became active): once it rests CURSOR_REST_MS, tell the server where, for a
   * document whose ghost text is on (the server prefills that place; any key stops it).
   */
  cursorMoved(editor: vscode.TextEditor, becameActive = false): void {
    const wait = this.cursorDebounce.moved(editor.document.uri.toString(), becameActive);
    if (wait === undefined) return;
    clearTimeout(this.cursorTimer);
    this.cursorTimer = setTimeout(() => {
      this.cursorDebounce.fired();
      if (vscode.window.activeTextEditor !== editor || !this.client?.isRunning()) return;
      const document = editor.document;
      const switches = clientSwitches(this.get);
      if (!switches.enable || !languageEnabled(switches.enabledLanguages, document.languageId)) return;
      if (!SCHEMES.includes(document.uri.scheme)) return;
      const at = editor.selection.active;
      const event = this.cursorTracker.rests(document.uri.toString(), document.languageId, at.line, at.character);
      if (event) this.client.sendNotification(EVENT_METHOD, event).catch(() => undefined);
    }, wait);
  }

  configurationChanged(e: vscode.ConfigurationChangeEvent): void {
    // the old names too: a value the migration could not move is still read (and removing one is a change)
    const affects = (key?: string) => [SECTION, OLD_SECTION].some((s) => e.affectsConfiguration(key ? `${s}.${key}` : s));
    if (!affects()) return;
    if (RESTART_KEYS.some((k) => affects(k))) {
      // said, not only logged: the user who just fixed the server path sees that it is being used
      void vscode.window.showInformationMessage('Code Llama: server settings changed; restarting the server.');
      void this.restart('launch settings changed; restarting the server');
      return;
    }
    this.render();
    const settings = serverSettings(this.get);
    if (settings.model !== this.status.model && this.status.state !== 'error') {
      this.setStatus({ ...this.status, state: 'loading', model: settings.model });
    }
    if (this.client?.isRunning()) {
      this.log.info(`settings changed: ${JSON.stringify(settings)}`);
      void this.client.sendNotification(DidChangeConfigurationNotification.type, { settings });
    }
  }

  async dispose(): Promise<void> {
    clearTimeout(this.restartTimer);
    clearTimeout(this.cursorTimer);
    await this.stop();
  }

  get modelName(): string {
    return modelLabel(this.status.model);
  }

  /** The picker's list from the running server (`codellama/models`), or undefined when it cannot answer now. */
  async listModels(): Promise<PickerEntry[] | undefined> {
    if (!this.client?.isRunning()) return undefined;
    const folders = (vscode.workspace.workspaceFolders ?? []).map((f) => f.uri.fsPath).filter((p) => p);
    try {
      const list = parseModels(await this.client.sendRequest(MODELS_METHOD, { folders }));
      return list ? pickerEntries(list) : undefined;
    } catch (err) {
      this.log.warn(`${MODELS_METHOD} failed: ${err instanceof Error ? err.message : String(err)}`);
      return undefined;
    }
  }
}

/** Reads `codeLlama.<key>`, falling back to `codellama.<key>` (rename.ts). */
function settingGetter(): (key: string) => unknown {
  return fallbackGetter(
    () => vscode.workspace.getConfiguration(SECTION),
    () => vscode.workspace.getConfiguration(OLD_SECTION),
  );
}

/** Resolves after `ms`, or as soon as `token` is cancelled. */
function pause(ms: number, token: vscode.CancellationToken): Promise<void> {
  return new Promise((resolve) => {
    const sub = token.onCancellationRequested(() => done());
    const timer = setTimeout(() => done(), ms);
    function done(): void {
      clearTimeout(timer);
      sub.dispose();
      resolve();
    }
  });
}

/** Where a server may be installed besides PATH: the workspace folders' `.venv` and the selected Python. */
async function searchPlaces(): Promise<SearchPlaces> {
  const workspaceFolders = (vscode.workspace.workspaceFolders ?? []).map((f) => f.uri.fsPath);
  let interpreter: string | undefined;
  try {
    const python = vscode.extensions.getExtension('ms-python.python');
    if (python) {
      const api = (python.isActive ? python.exports : await python.activate()) as
        | { environments?: { getActiveEnvironmentPath?: () => { path?: string } } }
        | undefined;
      interpreter = api?.environments?.getActiveEnvironmentPath?.()?.path;
    }
  } catch {
    // the Python extension's API is optional; fall back to its setting
  }
  if (!interpreter) {
    const configured = vscode.workspace.getConfiguration('python').get<string>('defaultInterpreterPath');
    if (configured && configured !== 'python') interpreter = configured.replace('${workspaceFolder}', workspaceFolders[0] ?? '');
  }
  return { workspaceFolders, interpreter };
}

/** An error message with a button that opens the setting that fixes it. */
async function offerSetting(message: string, setting: string): Promise<void> {
  const open = 'Open Setting';
  const choice = await vscode.window.showErrorMessage(`Code Llama: ${message}`, open, 'Show Logs');
  if (choice === open) await openSettingWhereItApplies(setting);
  else if (choice === 'Show Logs') await vscode.commands.executeCommand('codellama.showLogs');
}

/**
 * Opens the settings editor where `setting` takes effect. The server settings are machine-scoped: in a
 * remote window (Remote-SSH, WSL, dev containers) and in code-server VS Code reads them from the Remote
 * settings, and the User tab shows "No Settings Found" for them.
 */
async function openSettingWhereItApplies(setting: string): Promise<void> {
  const remote = vscode.env.remoteName !== undefined || vscode.env.uiKind === vscode.UIKind.Web;
  if (remote) {
    try {
      await vscode.commands.executeCommand('workbench.action.openRemoteSettings', { query: setting });
      return;
    } catch {
      // no remote settings here after all: the user settings below
    }
  }
  await vscode.commands.executeCommand('workbench.action.openSettings', setting);
}

async function statusMenu(): Promise<void> {
  const enabled = settingGetter()('enable') !== false;
  const items: (vscode.QuickPickItem & { command: string })[] = [
    { label: enabled ? '$(circle-slash) Disable completions' : '$(check) Enable completions', command: 'codellama.toggle' },
    { label: '$(debug-restart) Restart server', command: 'codellama.restart' },
    { label: '$(file-binary) Select model…', description: manager?.modelName, command: 'codellama.selectModel' },
    { label: '$(output) Show logs', command: 'codellama.showLogs' },
  ];
  const pick = await vscode.window.showQuickPick(items, { title: 'Code Llama' });
  if (pick) await vscode.commands.executeCommand(pick.command);
}

async function selectModel(log: vscode.LogOutputChannel): Promise<void> {
  type Item = vscode.QuickPickItem & { id: string; entry?: PickerEntry };
  // GGUFs the server found (demo, Hugging Face cache, workspace folders) and known Code Llama files, with sizes,
  // memory needed at the server's context, and FIM support; then the ways to name any other model.
  const entries = (await manager?.listModels()) ?? [];
  const group = (g: PickerEntry['group'], title: string): Item[] => {
    const items = entries.filter((e) => e.group === g).map((e): Item => ({ label: e.label, description: e.description, detail: e.detail, id: 'entry', entry: e }));
    return items.length ? [{ label: title, kind: vscode.QuickPickItemKind.Separator, id: '' }, ...items] : [];
  };
  const pick = await vscode.window.showQuickPick<Item>(
    [
      ...group('local', 'On this machine'),
      ...group('hub', 'Code Llama on the Hugging Face Hub (downloaded once)'),
      { label: 'Other', kind: vscode.QuickPickItemKind.Separator, id: '' },
      { label: '$(file) Choose a .gguf file…', id: 'file' },
      { label: '$(cloud-download) Hugging Face repo:file…', id: 'hf', description: 'downloaded once into the Hugging Face cache' },
      { label: '$(beaker) Demo model', id: 'demo', description: 'tiny, shipped with the server' },
    ],
    { title: 'Code Llama: select model', matchOnDescription: true, matchOnDetail: true },
  );
  if (!pick) return;
  let value: string | undefined;
  if (pick.entry) {
    if (pick.entry.broken) {
      void vscode.window.showErrorMessage(`Code Llama: ${pick.entry.detail}`);
      return;
    }
    if (pick.entry.warning) {
      const go = await vscode.window.showWarningMessage(`Code Llama: ${pick.entry.warning}.`, { modal: true }, 'Use Anyway');
      if (go !== 'Use Anyway') return;
    }
    value = pick.entry.spec;
  } else if (pick.id === 'demo') value = 'demo';
  else if (pick.id === 'file') {
    const uris = await vscode.window.showOpenDialog({ canSelectMany: false, filters: { 'GGUF model': ['gguf'] }, openLabel: 'Use model' });
    value = uris?.[0]?.fsPath;
  } else {
    value = await vscode.window.showInputBox({
      title: 'Hugging Face model',
      prompt: 'owner/repo:file.gguf',
      placeHolder: 'TheBloke/CodeLlama-7B-GGUF:codellama-7b.Q4_K_M.gguf',
      validateInput: (v) => {
        const spec = parseModelSpec(v);
        return 'error' in spec ? spec.error : spec.kind === 'huggingface' ? undefined : 'expected owner/repo:file.gguf';
      },
    });
  }
  if (value === undefined) return;
  const spec = parseModelSpec(value);
  if ('error' in spec) {
    void vscode.window.showErrorMessage(`Code Llama: ${spec.error}`);
    return;
  }
  log.info(`model set to ${spec.value}`);
  await vscode.workspace.getConfiguration(SECTION).update('model', spec.value, vscode.ConfigurationTarget.Global);
}
