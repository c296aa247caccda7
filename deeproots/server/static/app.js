// The chat page: conversations from /api/conversations (kept on the server), answers streamed from
// /v1/chat/completions. Messages form a tree; the page shows the branch ending at the conversation's current leaf.

import { ApiError, call, onKeyNeeded, streamChat } from './api.js';
import { renderMarkdown, splitReasoning } from './markdown.js';

const $ = (id) => document.getElementById(id);
const PRESETS = {
  precise: { temperature: 0.2, top_p: 0.9 },
  balanced: { temperature: 0.7, top_p: 0.95 },
  creative: { temperature: 1.0, top_p: 1.0 },
};
const SETTINGS_ITEM = 'deeproots.settings';
const THEME_ITEM = 'deeproots.theme';

const state = {
  models: [],           // /v1/models' entries: what the server can answer with, its default first
  model: null,          // the one chatting: {id, max_model_len}
  conversation: null,   // {id, title, current_leaf, messages: [...]} as the server keeps it
  streaming: null,      // {parentId, content, controller} while an answer streams
  search: '',
};

// ---- small DOM helpers

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function button(label, onClick, className) {
  const node = el('button', className, label);
  node.type = 'button';
  node.addEventListener('click', onClick);
  return node;
}

function showError(message) {
  $('error').textContent = message || '';
  $('error').hidden = !message;
}

async function guarded(action) {
  try {
    showError('');
    await action();
  } catch (error) {
    showError(error instanceof ApiError ? error.message : `error: ${error.message}`);
  }
}

// A send, an edit or a regenerate: body[data-busy] from the key press until the answer is stored.
function working(action) {
  return guarded(async () => {
    document.body.dataset.busy = 'true';
    try {
      await action();
    } finally {
      delete document.body.dataset.busy;
    }
  });
}

// ---- the message tree

function messageById(id) {
  return state.conversation?.messages.find((message) => message.id === id) ?? null;
}

function childrenOf(parentId) {
  return (state.conversation?.messages ?? []).filter((message) => message.parent_id === parentId);
}

// Root ... leafId, following parents.
function pathTo(leafId) {
  const path = [];
  for (let message = messageById(leafId); message; message = messageById(message.parent_id)) path.unshift(message);
  return path;
}

// The newest leaf under `id`: where switching to a branch lands.
function newestLeafUnder(id) {
  let leaf = id;
  for (let children = childrenOf(leaf); children.length; children = childrenOf(leaf)) {
    leaf = children[children.length - 1].id;
  }
  return leaf;
}

// ---- settings (kept in this browser)

function readSettings() {
  const saved = JSON.parse(localStorage.getItem(SETTINGS_ITEM) || '{}');
  return { system: '', preset: 'balanced', ...PRESETS.balanced, max_tokens: 512, json: false, ...saved };
}

function showSettings(settings) {
  $('system-prompt').value = settings.system;
  $('preset').value = settings.preset;
  $('temperature').value = settings.temperature;
  $('top-p').value = settings.top_p;
  $('max-tokens').value = settings.max_tokens;
  $('json-mode').checked = settings.json;
}

function saveSettings() {
  localStorage.setItem(SETTINGS_ITEM, JSON.stringify({
    system: $('system-prompt').value, preset: $('preset').value, temperature: Number($('temperature').value),
    top_p: Number($('top-p').value), max_tokens: Number($('max-tokens').value), json: $('json-mode').checked,
  }));
}

function choosePreset() {
  const preset = PRESETS[$('preset').value];
  if (preset) {
    $('temperature').value = preset.temperature;
    $('top-p').value = preset.top_p;
  }
  saveSettings();
}

// ---- rendering

function renderAnswer(body, text, streaming) {
  const { reasoning, answer, thinking } = splitReasoning(text);
  body.replaceChildren();
  if (reasoning !== null) {
    const details = body.appendChild(el('details', 'reasoning'));
    details.open = thinking;
    details.append(el('summary', null, thinking && streaming ? 'Reasoning…' : 'Reasoning'));
    details.append(renderMarkdown(reasoning));
  }
  body.append(renderMarkdown(answer));
}

function statsText(meta) {
  const parts = [];
  if (meta.ttft_ms !== undefined) parts.push(`first token ${Math.round(meta.ttft_ms)} ms`);
  if (meta.tokens_per_s) parts.push(`${meta.tokens_per_s.toFixed(1)} tok/s`);
  if (meta.prompt_tokens !== undefined) parts.push(`${meta.prompt_tokens} prompt tokens`);
  if (meta.cached_tokens) parts.push(`${meta.cached_tokens} reused from the prefix cache`);
  if (meta.stopped) parts.push('stopped');
  return parts.join(' · ');
}

function branchSwitcher(message) {
  const siblings = childrenOf(message.parent_id);
  const index = siblings.findIndex((sibling) => sibling.id === message.id);
  const box = el('span', 'branches');
  if (siblings.length < 2) return box;
  const go = (step) => guarded(() => showLeaf(newestLeafUnder(siblings[index + step].id)));
  const previous = box.appendChild(button('‹', () => go(-1), 'previous-branch'));
  box.append(el('span', 'branch-count', ` ${index + 1}/${siblings.length} `));
  const next = box.appendChild(button('›', () => go(1), 'next-branch'));
  previous.disabled = index === 0 || Boolean(state.streaming);
  next.disabled = index === siblings.length - 1 || Boolean(state.streaming);
  previous.setAttribute('aria-label', 'previous version');
  next.setAttribute('aria-label', 'next version');
  return box;
}

function messageView(message) {
  const view = el('article', `message ${message.role}`);
  view.dataset.id = message.id;
  view.append(el('div', 'who', message.role === 'user' ? 'You' : message.role));
  const body = view.appendChild(el('div', 'body'));
  if (message.role === 'assistant') renderAnswer(body, message.content, false);
  else body.textContent = message.content;  // the user's own text, shown exactly as typed
  const tools = view.appendChild(el('div', 'tools'));
  tools.append(branchSwitcher(message));
  const busy = Boolean(state.streaming);
  tools.append(button('Copy', () => navigator.clipboard.writeText(message.content), 'copy'));
  if (message.role === 'user') {
    tools.appendChild(button('Edit', () => startEdit(view, message), 'edit-message')).disabled = busy;
  }
  if (message.role === 'assistant') {
    const regenerate = () => working(() => generate(message.parent_id));
    tools.appendChild(button('Regenerate', regenerate, 'regenerate')).disabled = busy;
    tools.append(el('span', 'stats', statsText(message.meta || {})));
  }
  return view;
}

function streamingView() {
  const view = el('article', 'message assistant streaming');
  view.append(el('div', 'who', 'assistant'));
  renderAnswer(view.appendChild(el('div', 'body')), state.streaming.content, true);
  return view;
}

function renderMessages() {
  const box = $('messages');
  const conversation = state.conversation;
  const leaf = state.streaming ? state.streaming.parentId : conversation?.current_leaf;
  const path = leaf ? pathTo(leaf) : [];
  box.replaceChildren(...path.map(messageView));
  if (state.streaming) box.append(streamingView());
  if (!path.length && !state.streaming) {
    box.append(el('p', 'empty', state.model ? `Ask ${state.model.id} anything.` : ''));
  }
  box.scrollTop = box.scrollHeight;
  $('title').textContent = conversation?.title ?? 'New chat';
  $('export').disabled = !conversation;
  $('send').hidden = Boolean(state.streaming);
  $('stop').hidden = !state.streaming;
}

let repaint = 0;

// At most once a frame: the whole answer is re-rendered (an unclosed code fence or table changes as it grows).
function updateStreaming() {
  repaint ||= requestAnimationFrame(() => {
    repaint = 0;
    const view = $('messages').querySelector('.message.streaming .body');
    if (!view || !state.streaming) return;
    renderAnswer(view, state.streaming.content, true);
    $('messages').scrollTop = $('messages').scrollHeight;
  });
}

let listRequests = 0;

async function renderList() {
  const ticket = ++listRequests;
  const query = state.search ? `?q=${encodeURIComponent(state.search)}` : '';
  const { data } = await call(`/api/conversations${query}`);
  if (ticket !== listRequests) return;  // a newer list (another search) is on its way: answers may cross
  const focused = document.activeElement?.closest('#conversations li') ? document.activeElement : null;
  $('conversations').replaceChildren(...data.map(listItem));
  if (focused) {  // keyboard users keep their place in the list across a re-render
    const item = focused.closest('li');
    const role = [...focused.classList].at(-1);
    $('conversations').querySelector(`li[data-id="${CSS.escape(item.dataset.id)}"] .${role}`)?.focus();
  }
}

function listItem(conversation) {
  const item = el('li');
  item.dataset.id = conversation.id;
  if (conversation.id === state.conversation?.id) item.classList.add('current');
  const openIt = () => guarded(() => openConversation(conversation.id));
  const open = item.appendChild(button(conversation.title, openIt, 'open'));
  open.title = conversation.title;
  const rename = item.appendChild(button('✎', () => startRename(item, conversation), 'small rename'));
  const deleteIt = () => guarded(() => confirmDelete(remove, conversation));
  const remove = item.appendChild(button('✕', deleteIt, 'small delete'));
  for (const [control, label] of [[rename, 'Rename'], [remove, 'Delete']]) {
    control.setAttribute('aria-label', `${label} “${conversation.title}”`);
    control.title = label;
  }
  return item;
}

// ---- actions

async function openConversation(id) {
  stop();  // an answer still streaming keeps what arrived, in its own conversation
  state.conversation = await call(`/api/conversations/${id}`);
  remember(id);
  document.body.classList.remove('sidebar-open');
  renderMessages();
  await renderList();
}

function newChat() {
  if (state.streaming) return;
  state.conversation = null;
  remember(null);
  renderMessages();
  guarded(renderList);
  $('prompt').focus();
}

async function showLeaf(leafId) {
  await call(`/api/conversations/${state.conversation.id}`, { method: 'PATCH', body: { current_leaf: leafId } });
  state.conversation.current_leaf = leafId;
  renderMessages();
}

// The open conversation's id in the address (?c=...), so a reload or a bookmark comes back to it.
function remember(id) {
  history.replaceState(null, '', id ? `?c=${encodeURIComponent(id)}` : location.pathname);
}

function startRename(item, conversation) {
  const input = el('input');
  input.value = conversation.title;
  input.setAttribute('aria-label', 'New title');
  item.replaceChildren(input);
  input.focus();
  input.select();
  let done = false;
  const finish = (save) => guarded(async () => {
    if (done) return;
    done = true;
    const title = input.value.trim();
    if (save && title && title !== conversation.title) {
      await call(`/api/conversations/${conversation.id}`, { method: 'PATCH', body: { title } });
      if (state.conversation?.id === conversation.id) state.conversation.title = title;
      renderMessages();
    }
    await renderList();
  });
  input.addEventListener('keydown', (event) => {
    if (event.key === 'Enter') finish(true);
    if (event.key === 'Escape') { event.stopPropagation(); finish(false); }
  });
  input.addEventListener('blur', () => finish(true));
}

// Two presses: the first turns the button into "Sure?", so nothing is deleted by one slip.
async function confirmDelete(control, conversation) {
  if (!control.classList.contains('danger')) {
    control.classList.add('danger');
    control.textContent = 'Sure?';
    return;
  }
  await call(`/api/conversations/${conversation.id}`, { method: 'DELETE' });
  if (state.conversation?.id === conversation.id) {
    state.conversation = null;
    remember(null);
  }
  renderMessages();
  await renderList();
}

function startEdit(view, message) {
  const editor = el('div', 'edit');
  const text = editor.appendChild(el('textarea'));
  text.value = message.content;
  text.setAttribute('aria-label', 'Edited message');
  const row = editor.appendChild(el('div', 'row'));
  row.append(button('Cancel', renderMessages));
  row.append(button('Send as a new branch', () => working(() => sendEdit(message, text.value)), 'primary save-edit'));
  text.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      working(() => sendEdit(message, text.value));
    }
  });
  view.querySelector('.body').replaceWith(editor);
  text.focus();
}

async function sendEdit(message, content) {
  if (!content.trim() || state.streaming) return;
  const edited = await call(`/api/conversations/${state.conversation.id}/messages`, {
    method: 'POST', body: { role: 'user', content, parent_id: message.parent_id, branch: message.parent_id === null },
  });
  state.conversation.messages.push(edited);
  state.conversation.current_leaf = edited.id;
  await generate(edited.id);
}

async function send() {
  const content = $('prompt').value;
  if (!content.trim() || state.streaming) return;
  if (!state.conversation) {
    const title = content.trim().split('\n')[0].slice(0, 60);
    state.conversation = { ...(await call('/api/conversations', { method: 'POST', body: { title } })), messages: [] };
    remember(state.conversation.id);
  }
  const message = await call(`/api/conversations/${state.conversation.id}/messages`, {
    method: 'POST', body: { role: 'user', content },
  });
  $('prompt').value = '';
  state.conversation.messages.push(message);
  state.conversation.current_leaf = message.id;
  guarded(renderList);
  await generate(message.id);
}

function requestBody(parentId) {
  const settings = readSettings();
  const messages = pathTo(parentId).map(({ role, content }) => ({ role, content }));
  if (settings.system.trim()) messages.unshift({ role: 'system', content: settings.system });
  const body = { model: state.model?.id, messages, temperature: settings.temperature, top_p: settings.top_p };
  if (settings.max_tokens > 0) body.max_tokens = settings.max_tokens;
  if (settings.json) body.response_format = { type: 'json_object' };
  return body;
}

// Streams an answer to the branch ending at `parentId`, then stores it (what arrived, when stopped) as a new child.
async function generate(parentId) {
  const controller = new AbortController();
  const { conversation } = state;  // the answer belongs here, even when another conversation is opened meanwhile
  state.streaming = { parentId, content: '', controller };
  renderMessages();
  const started = performance.now();
  let first = null;
  let pieces = 0;
  let usage = null;
  let stopped = false;
  try {
    usage = await streamChat(requestBody(parentId), controller.signal, (text) => {
      first ??= performance.now();
      pieces += 1;
      state.streaming.content += text;
      updateStreaming();
    });
  } catch (error) {
    if (error.name !== 'AbortError') {
      state.streaming = null;
      renderMessages();
      throw error;
    }
    stopped = true;
  }
  const ended = performance.now();
  const produced = usage?.completion_tokens ?? pieces;
  const meta = { stopped, ttft_ms: first === null ? undefined : first - started };
  if (first !== null && ended > first && produced > 1) meta.tokens_per_s = (produced - 1) / ((ended - first) / 1000);
  if (usage) meta.prompt_tokens = usage.prompt_tokens;
  if (usage?.prompt_tokens_details) meta.cached_tokens = usage.prompt_tokens_details.cached_tokens;
  const content = state.streaming.content;
  state.streaming = null;
  const answer = await call(`/api/conversations/${conversation.id}/messages`, {
    method: 'POST', body: { role: 'assistant', content, parent_id: parentId, meta },
  });
  conversation.messages.push(answer);
  conversation.current_leaf = answer.id;
  renderMessages();
  await renderList();
  $('prompt').focus();
}

function stop() {
  state.streaming?.controller.abort();
}

async function exportConversation() {
  const document_ = await call(`/api/conversations/${state.conversation.id}/export`);
  const link = el('a');
  link.href = URL.createObjectURL(new Blob([JSON.stringify(document_, null, 2)], { type: 'application/json' }));
  link.download = `${state.conversation.title.replace(/[^\w.-]+/g, '_').slice(0, 60) || 'conversation'}.json`;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

async function importConversation(file) {
  let document_;
  try {
    document_ = JSON.parse(await file.text());
  } catch {
    throw new ApiError(`${file.name} is not JSON`);
  }
  const created = await call('/api/conversations/import', { method: 'POST', body: document_ });
  await openConversation(created.id);
}

function count(n) {
  return n >= 1e9 ? `${(n / 1e9).toFixed(1)}B` : `${Math.round(n / 1e6)}M`;
}

async function loadModel() {
  const { data } = await call('/v1/models');  // the server's default first
  state.models = data;
  const picker = $('model-picker');
  picker.replaceChildren(...data.map((model) => new Option(model.id, model.id)));
  picker.hidden = data.length < 2;
  await showModel(data[0]);
}

async function showModel(model) {
  state.model = model ?? null;
  if (!state.model) return;
  const info = await call(`/api/model?id=${encodeURIComponent(model.id)}`);  // what `deeproots inspect` shows
  $('model-info').textContent = `${state.model.id} · ${info.architecture} · ${count(info.parameters)} parameters`
    + ` · ${info.quantization} · ${info.context} tokens context`;
  $('model-info').title = $('model-info').textContent;  // whole, where the header cuts it short
}

// ---- the API key dialog: shown when the server answers 401

function askForKey(wasWrong) {
  const dialog = $('key-dialog');
  $('key-message').textContent = wasWrong ? 'That key was refused; enter the server\'s API key.'
    : 'This server needs an API key (deeproots serve --api-key).';
  $('key-input').value = '';
  dialog.showModal();
  return new Promise((resolve) => {
    const finish = (key) => {
      $('key-form').onsubmit = null;
      $('key-cancel').onclick = null;
      dialog.onclose = null;
      dialog.close();
      resolve(key);
    };
    $('key-form').onsubmit = (event) => { event.preventDefault(); finish($('key-input').value.trim() || null); };
    $('key-cancel').onclick = () => finish(null);
    dialog.onclose = () => finish(null);
  });
}

// ---- theme

function applyTheme(theme) {
  if (theme) document.documentElement.dataset.theme = theme;
  else delete document.documentElement.dataset.theme;
}

function toggleTheme() {
  const dark = getComputedStyle(document.documentElement).colorScheme.includes('dark');
  const theme = dark ? 'light' : 'dark';
  localStorage.setItem(THEME_ITEM, theme);
  applyTheme(theme);
}

// ---- wiring

function onPromptKey(event) {
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    working(send);
  }
}

function wire() {
  $('composer').addEventListener('submit', (event) => { event.preventDefault(); working(send); });
  $('prompt').addEventListener('keydown', onPromptKey);
  $('stop').addEventListener('click', stop);
  document.addEventListener('keydown', (event) => { if (event.key === 'Escape' && state.streaming) stop(); });
  $('new-chat').addEventListener('click', newChat);
  let searchTimer;
  $('search').addEventListener('input', () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => { state.search = $('search').value.trim(); guarded(renderList); }, 200);
  });
  $('import').addEventListener('click', () => $('import-file').click());
  $('import-file').addEventListener('change', () => {
    const [file] = $('import-file').files;
    $('import-file').value = '';
    if (file) guarded(() => importConversation(file));
  });
  $('export').addEventListener('click', () => guarded(exportConversation));
  $('settings-toggle').addEventListener('click', () => {
    $('settings').hidden = !$('settings').hidden;
    $('settings-toggle').setAttribute('aria-expanded', String(!$('settings').hidden));
  });
  $('preset').addEventListener('change', choosePreset);
  $('model-picker').addEventListener('change', () => guarded(async () => {
    await showModel(state.models.find((model) => model.id === $('model-picker').value));
    renderMessages();
  }));
  for (const id of ['temperature', 'top-p']) {
    $(id).addEventListener('input', () => { $('preset').value = 'custom'; saveSettings(); });
  }
  for (const id of ['system-prompt', 'max-tokens', 'json-mode']) $(id).addEventListener('change', saveSettings);
  $('theme').addEventListener('click', toggleTheme);
  $('open-sidebar').addEventListener('click', () => document.body.classList.add('sidebar-open'));
  $('close-sidebar').addEventListener('click', () => document.body.classList.remove('sidebar-open'));
}

async function start() {
  applyTheme(localStorage.getItem(THEME_ITEM));
  onKeyNeeded(askForKey);
  showSettings(readSettings());
  wire();
  renderMessages();
  await guarded(async () => {
    await loadModel();
    await renderList();
    const id = new URLSearchParams(location.search).get('c');
    if (id) await openConversation(id);
    renderMessages();
  });
  document.body.dataset.ready = 'true';  // for tests and scripts: the first load is done
  $('prompt').focus();
}

start();
