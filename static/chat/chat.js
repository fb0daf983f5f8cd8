// The chat page: composer, streaming replies over the websocket (docs/protocol.md), sidebar.
import { ChatSocket } from "./socket.js";
import * as M from "./messages.js";

const config = JSON.parse(document.getElementById("chat-config").textContent);
const $ = (id) => document.getElementById(id);
const input = $("composer-input");
const sendButton = $("send");
const stopButton = $("stop");
const scroller = $("scroller");
const jump = $("jump");

const FRAME_ERRORS = {
  busy: "A reply is already being written in this chat. Stop it or wait for it to finish.",
  rate_limited: "You're sending too fast. Wait a moment and try again.",
  content_too_long: `That message is too long (the limit is ${config.max_chars.toLocaleString()} characters).`,
  empty_content: "Type a message first.",
  nothing_to_regenerate: "There is no message to reply to yet.",
  not_streaming: "Nothing is being written right now.",
  budget_exceeded: "You have used your token budget for now.",
  send_rate_exceeded: "You're sending messages faster than your plan allows. Wait a moment and try again.",
};
// Refusals whose server wording is more precise than ours (which budget, when it resets).
const SERVER_WORDS = new Set(["budget_exceeded", "send_rate_exceeded"]);

let conversation = config.conversation; // {id, url, messages_url, ws_path, ...} or null
let socket = null;
// The reply being written: its element and the last delta applied (protocol: drop seq <= lastSeq).
let streaming = null;
// What this tab asked for and has not seen a `start` for: rolled back on a frame error.
let pending = null;

// ---------------------------------------------------------------- toasts and focus

let toastTimer = null;
function toast(text) {
  const t = $("toast");
  t.textContent = text;
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (t.hidden = true), 8000);
}

function focusComposer() {
  if (!document.querySelector("dialog[open]")) input.focus();
}

// ---------------------------------------------------------------- scrolling

let stick = true; // follow new text until the user scrolls up
let lastTop = 0;

function nearBottom() {
  return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 40;
}

function toBottom() {
  scroller.scrollTop = scroller.scrollHeight;
  lastTop = scroller.scrollTop;
  stick = true;
  jump.hidden = true;
}

// Our own scrolling only ever moves down, so moving up away from the bottom is the user.
scroller.addEventListener("scroll", () => {
  const top = scroller.scrollTop;
  if (nearBottom()) stick = true;
  else if (top < lastTop) stick = false;
  lastTop = top;
  jump.hidden = stick;
});
// A wheel turn upwards stops following at once, before the next frame pulls the view down.
scroller.addEventListener("wheel", (event) => {
  if (event.deltaY < 0) stick = false;
}, { passive: true });
jump.addEventListener("click", () => {
  toBottom();
  focusComposer();
});

function afterGrowth() {
  if (stick) toBottom();
  else jump.hidden = false;
}

// ---------------------------------------------------------------- streaming state

function setStreamingUi(on) {
  sendButton.hidden = on;
  stopButton.hidden = !on;
  stopButton.disabled = false;
  stopButton.textContent = "■ Stop";
  M.placeRegenerate(on);
  M.placeEdit(on);
}

function beginStreaming(el, id, seq = 0) {
  M.setId(el, id);
  M.setStatus(el, "streaming");
  M.showError(el, "");
  streaming = { id, el, lastSeq: seq, content: "", reasoning: "", refusal: "", frame: 0 };
  setStreamingUi(true);
}

// Deltas are buffered and drawn once per animation frame as one text node each.
function flush() {
  if (!streaming) return;
  streaming.frame = 0;
  const { content, reasoning, refusal } = streaming;
  if (!content && !reasoning && !refusal) return;
  streaming.content = streaming.reasoning = streaming.refusal = "";
  M.appendPieces(streaming.el, { content, reasoning, refusal });
  afterGrowth();
}

function scheduleFlush() {
  if (streaming && !streaming.frame) streaming.frame = requestAnimationFrame(flush);
}

async function fetchMessage(id) {
  const response = await fetch(`${conversation.messages_url}${Number(id)}/`, {
    headers: { Accept: "application/json" },
    credentials: "same-origin",
  });
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return response.json();
}

async function finishReply(el, id, frame) {
  if (frame) {
    M.setStatus(el, frame.status);
    M.setStats(el, M.formatStats(frame));
  }
  try {
    M.finish(el, await fetchMessage(id));
  } catch {
    // The text stays as streamed (plain); the next page load renders it.
  }
  afterGrowth();
}

function moveSidebarItemToTop() {
  if (!conversation) return;
  const item = document.querySelector(`[data-testid="conversation-item"][data-conversation-id="${conversation.id}"]`);
  if (item && item.parentElement.firstElementChild !== item) item.parentElement.prepend(item);
}

// ---------------------------------------------------------------- budget

// Tokens left as of the last `start` frame ({tokens_left_today, tokens_left_this_month},
// either null when unlimited), less what replies since then used; null: no budget applies.
let budget = config.budget ? { ...config.budget } : null;

function showBudget(left) {
  budget = left ? { ...left } : null;
  const line = $("budget");
  if (!line) return;
  const parts = [];
  if (budget && budget.tokens_left_today != null) {
    parts.push(`${budget.tokens_left_today.toLocaleString()} tokens left today`);
  }
  if (budget && budget.tokens_left_this_month != null) {
    parts.push(`${budget.tokens_left_this_month.toLocaleString()} ${parts.length ? "" : "tokens left "}this month`);
  }
  line.textContent = parts.join(" · ");
  line.hidden = !parts.length;
}

function spendBudget(tokens) {
  if (!budget || !tokens) return;
  const spend = (left) => (left == null ? null : Math.max(0, left - tokens));
  showBudget({
    tokens_left_today: spend(budget.tokens_left_today),
    tokens_left_this_month: spend(budget.tokens_left_this_month),
  });
}

// ---------------------------------------------------------------- frames

const handlers = {
  start(f) {
    let replyEl;
    const mine =
      pending &&
      (((pending.kind === "send" || pending.kind === "edit") &&
        f.user_message &&
        f.user_message.content === pending.content) ||
        (pending.kind === "regenerate" && !f.user_message));
    let stopNow = false;
    if (mine) {
      pending.replacedEls?.forEach((el) => el.remove()); // an edit's earlier version
      if (pending.userEl) M.setId(pending.userEl, f.user_message.id);
      replyEl = pending.replyEl;
      stopNow = pending.stopRequested;
      pending = null;
    } else {
      // Started in another tab (or we never saw our own rollback): draw it as it is.
      const edited = f.replaces_user && M.findMessage(f.replaces_user);
      if (edited) M.messagesFrom(edited).forEach((el) => el.remove());
      if (f.user_message && !M.findMessage(f.user_message.id)) M.userMessage(f.user_message.content, f.user_message.id);
      replyEl = M.findMessage(f.message_id) || M.streamingReply(f.message_id);
    }
    if (f.replaces) M.findMessage(f.replaces)?.remove();
    document.getElementById("empty-state").hidden = true;
    beginStreaming(replyEl, f.message_id);
    M.trimmedNote(replyEl, f.trimmed);
    showBudget(f.budget);
    moveSidebarItemToTop();
    afterGrowth();
    if (stopNow) stop(); // Stop was pressed before the reply had begun
  },

  resume(f) {
    const el = M.findMessage(f.message_id) || M.streamingReply(f.message_id);
    beginStreaming(el, f.message_id, f.seq);
    M.setStreamingText(el, f.content, f.reasoning);
    afterGrowth();
  },

  delta(f) {
    // A text delta has no message_id or seq: it continues the reply being streamed.
    if (!streaming || (f.message_id !== undefined && f.message_id !== streaming.id)) {
      reconcile();
      return;
    }
    const seq = f.seq ?? streaming.lastSeq + 1;
    if (seq <= streaming.lastSeq) return; // already applied (or covered by resume)
    streaming.lastSeq = seq;
    streaming.content += f.content || "";
    streaming.reasoning += f.reasoning || "";
    streaming.refusal += f.refusal || "";
    scheduleFlush();
  },

  render(f) {
    if (!streaming || f.message_id !== streaming.id) return;
    if (streaming.frame) cancelAnimationFrame(streaming.frame);
    flush(); // the text this render covers must be on the page before it is replaced
    M.applyRender(streaming.el, f);
    afterGrowth();
  },

  retrying(f) {
    const el = M.findMessage(f.message_id);
    if (!el) return;
    const wait = Math.max(0, Math.round(f.delay));
    M.notice(el, `The model provider failed (${f.detail}). Retrying in ${wait} s — attempt ${f.attempt}…`, "retrying");
  },

  error(f) {
    if (f.code === "signed_out") {
      // The session ended (close code 4401 follows): reloading signs this tab in again with
      // a renewed cookie (a password changed here), or leads to the sign-in page.
      socket?.close();
      location.reload();
      return;
    }
    const words = f.detail || FRAME_ERRORS[f.code] || "Something went wrong.";
    if (f.message_id != null) {
      const el = M.findMessage(f.message_id);
      if (el) M.showError(el, words); // a `done` frame follows
      return;
    }
    rollback();
    toast(SERVER_WORDS.has(f.code) ? words : FRAME_ERRORS[f.code] || words);
  },

  done(f) {
    const el = M.findMessage(f.message_id);
    if (!el) {
      reconcile();
      return;
    }
    if (streaming && streaming.id === f.message_id) {
      if (streaming.frame) cancelAnimationFrame(streaming.frame);
      flush();
      streaming = null;
      setStreamingUi(false);
    }
    finishReply(el, f.message_id, f);
    spendBudget((f.prompt_tokens || 0) + (f.completion_tokens || 0));
    focusComposer();
  },

  pong() {},
};

function onFrame(frame) {
  const handle = handlers[frame.type];
  if (handle) handle(frame);
}

/** Undo what this tab drew for a request the server refused. */
function rollback() {
  if (!pending) return;
  const p = pending;
  pending = null;
  p.userEl?.remove();
  p.replyEl?.remove();
  if (p.replacedEl) p.replacedEl.hidden = false;
  p.replacedEls?.forEach((el) => (el.hidden = false));
  if ((p.kind === "send" || p.kind === "edit") && !input.value) input.value = p.content;
  setStreamingUi(Boolean(streaming));
  document.getElementById("empty-state").hidden = M.allMessages().length > 0;
  focusComposer();
}

// ---------------------------------------------------------------- catching up after a reconnect

let reconciling = false;

/** Bring the list in line with the server after frames may have been missed (offline, other tabs). */
async function reconcile() {
  if (!conversation || reconciling) return;
  reconciling = true;
  try {
    const response = await fetch(conversation.messages_url, { headers: { Accept: "application/json" } });
    if (!response.ok) return;
    const { messages } = await response.json();
    const ids = new Set(messages.map((m) => m.id));
    const newest = messages.length ? messages[messages.length - 1].id : 0;
    // Drop what the snapshot says is gone (superseded by a regenerate); keep anything newer.
    for (const el of M.allMessages()) {
      const id = Number(el.dataset.messageId);
      if (id && id <= newest && !ids.has(id)) el.remove();
    }
    if (pending && !pending.sentOk) {
      // Offline since sending: if the server has the message, its reply is drawn from the list.
      const received =
        pending.kind === "send" &&
        messages.some((m) => m.role === "user" && m.content === pending.content && !M.findMessage(m.id));
      if (received) {
        pending.userEl.remove();
        pending.replyEl.remove();
        pending = null;
      } else rollback();
    }
    let before = null;
    for (const m of [...messages].reverse()) {
      let el = M.findMessage(m.id);
      if (!el) {
        el = m.role === "assistant" ? M.streamingReply(m.id, before) : M.userMessage(m.content, m.id, before);
        if (m.role === "assistant") {
          if (m.status === "streaming") M.setStreamingText(el, m.content, m.reasoning);
          else M.finish(el, m);
        }
      } else if (m.role === "assistant" && m.status !== "streaming" && el.dataset.status === "streaming") {
        if (streaming && streaming.id === m.id) {
          streaming = null;
          setStreamingUi(false);
        }
        M.finish(el, m);
      }
      before = el;
    }
    if (!streaming) {
      const live = messages.find((m) => m.status === "streaming");
      if (live) beginStreaming(M.findMessage(live.id), live.id, -1);
    }
    M.placeRegenerate(Boolean(streaming));
    M.placeEdit(Boolean(streaming));
    document.getElementById("empty-state").hidden = M.allMessages().length > 0;
  } catch {
    // Offline again; the next open reconciles.
  } finally {
    reconciling = false;
  }
}

// ---------------------------------------------------------------- the socket

const banner = $("offline-banner");
let bannerTimer = null;

function onState({ state, retryAt }) {
  clearInterval(bannerTimer);
  if (state === "open") {
    banner.hidden = true;
    return;
  }
  if (state !== "offline") return;
  const text = banner.querySelector("[data-offline-text]");
  const tick = () => {
    const s = Math.max(0, Math.ceil((retryAt - Date.now()) / 1000));
    text.textContent = s ? `Offline — reconnecting in ${s} s…` : "Offline — reconnecting…";
  };
  tick();
  bannerTimer = setInterval(tick, 1000);
  banner.hidden = false;
  if (pending) pending.sentOk = false;
}

let opened = false;
function openSocket() {
  socket = new ChatSocket(conversation.ws_path, {
    onFrame,
    onState,
    onOpen() {
      // The first open of a page that was just rendered needs no catching up.
      if (opened) reconcile();
      opened = true;
    },
  });
  socket.connect();
}

// ---------------------------------------------------------------- sending

function csrfToken() {
  return document.querySelector("#composer [name=csrfmiddlewaretoken]").value;
}

async function createConversation(firstMessage) {
  const body = new FormData();
  body.append("title", firstMessage.split("\n").find((line) => line.trim()) || "");
  const response = await fetch(config.create_url, {
    method: "POST",
    body,
    headers: { Accept: "application/json", "X-CSRFToken": csrfToken() },
    credentials: "same-origin",
  });
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  const created = await response.json();
  history.replaceState(null, "", created.url);
  document.title = `${created.title || "New chat"} · Chat`;
  $("title").textContent = created.title || "New chat";
  addSidebarItem(created);
  wireConversationActions(created);
  return created;
}

function addSidebarItem(created) {
  const list = $("conv-list");
  list.querySelector(".conv-empty")?.remove();
  for (const li of list.querySelectorAll(".current")) li.classList.remove("current");
  const li = document.createElement("li");
  li.dataset.testid = "conversation-item";
  li.dataset.conversationId = String(created.id);
  li.className = "current";
  const a = document.createElement("a");
  a.href = created.url;
  a.setAttribute("aria-current", "page");
  a.textContent = created.title || "New chat";
  li.append(a);
  list.prepend(li);
}

function wireConversationActions(created) {
  $("rename-form").action = created.rename_url;
  $("delete-form").action = created.delete_url;
  $("settings-form").action = created.settings_url;
  $("rename-title").value = created.title || "";
  $("delete-name").textContent = created.title || "New chat";
  document.querySelector(".topbar-actions").hidden = false;
}

async function send() {
  const content = input.value;
  if (!content.trim()) return;
  if (content.length > config.max_chars) {
    toast(FRAME_ERRORS.content_too_long);
    return;
  }
  if (streaming || pending) {
    toast(FRAME_ERRORS.busy);
    return;
  }
  if (conversation && !socket.isOpen) {
    toast("You're offline, so the message was not sent. It's still in the box; send it again once reconnected.");
    return;
  }
  input.value = "";
  autosize();
  $("empty-state").hidden = true;
  const edited = editing;
  editing = null;
  if (edited && conversation && edited.isConnected) {
    const replacedEls = M.messagesFrom(edited);
    replacedEls.forEach((el) => (el.hidden = true));
    pending = { kind: "edit", content, sentOk: true, replacedEls };
    pending.userEl = M.userMessage(content);
    pending.replyEl = M.streamingReply();
    setStreamingUi(true);
    toBottom();
    socket.send({ type: "edit", content });
    focusComposer();
    return;
  }
  pending = { kind: "send", content, sentOk: true };
  pending.userEl = M.userMessage(content);
  pending.replyEl = M.streamingReply();
  setStreamingUi(true);
  toBottom();
  if (!conversation) {
    try {
      conversation = await createConversation(content);
    } catch {
      rollback();
      toast("Could not start a new chat. Check your connection and try again.");
      return;
    }
    openSocket();
    socket.sendWhenOpen({ type: "send", content });
  } else {
    socket.send({ type: "send", content });
  }
  focusComposer();
}

function regenerate() {
  if (streaming || pending || !conversation) return;
  if (!socket.isOpen) {
    toast("You're offline. Try again once reconnected.");
    return;
  }
  const old = M.lastReply();
  pending = { kind: "regenerate", replacedEl: old, sentOk: true };
  if (old) old.hidden = true;
  pending.replyEl = M.streamingReply();
  setStreamingUi(true);
  toBottom();
  socket.send({ type: "regenerate" });
}

function stop() {
  if (pending && !streaming) {
    pending.stopRequested = true;
    stopButton.disabled = true;
    stopButton.textContent = "Stopping…";
    return;
  }
  if (!streaming || !socket) return;
  if (socket.send({ type: "stop" })) {
    stopButton.disabled = true;
    stopButton.textContent = "Stopping…";
  }
  focusComposer();
}

let editing = null; // the user message being edited (Edit, then Enter resends it)

function startEdit(el) {
  if (streaming || pending) return;
  editing = el;
  input.value = M.body(el).textContent;
  autosize();
  focusComposer();
  toast("Editing your last message: Enter sends it again, Esc cancels.");
}

function cancelEdit() {
  editing = null;
  input.value = "";
  autosize();
}

async function copyReply(el) {
  let text = M.body(el).innerText;
  const id = Number(el.dataset.messageId);
  try {
    if (id) text = (await fetchMessage(id)).content;
    await navigator.clipboard.writeText(text);
    toastOk("Copied.");
  } catch {
    toast("Could not copy to the clipboard.");
  }
}

function toastOk(text) {
  const t = $("toast");
  toast(text);
  t.classList.add("toast-ok");
  setTimeout(() => t.classList.remove("toast-ok"), 2000);
}

// ---------------------------------------------------------------- composer

function autosize() {
  input.style.height = "auto";
  input.style.height = `${Math.min(input.scrollHeight, innerHeight * 0.4)}px`;
}

input.addEventListener("input", autosize);
input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
});
$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});
stopButton.addEventListener("click", stop);
document.addEventListener("keydown", (event) => {
  if (event.key !== "Escape" || document.querySelector("dialog[open]")) return;
  if (streaming || pending) {
    event.preventDefault();
    stop();
  } else if (editing) {
    event.preventDefault();
    cancelEdit();
  }
});

$("messages").addEventListener("click", (event) => {
  const button = event.target.closest("button[data-action]");
  if (!button) return;
  const el = button.closest('[data-testid="message"]');
  if (button.dataset.action === "regenerate") regenerate();
  else if (button.dataset.action === "copy" && el) copyReply(el);
  else if (button.dataset.action === "edit" && el) startEdit(el);
  else if (button.dataset.action === "copy-code") copyCode(button);
});
M.addCodeCopy($("messages"));

async function copyCode(button) {
  const pre = button.closest("pre");
  const code = pre.querySelector("code") || pre;
  try {
    await navigator.clipboard.writeText(code === pre ? pre.innerText.replace(/Copy$/, "") : code.textContent);
    toastOk("Code copied.");
  } catch {
    toast("Could not copy to the clipboard.");
  }
}

// ---------------------------------------------------------------- sidebar and dialogs

const app = $("app");
function showSidebar(show) {
  app.classList.toggle("sidebar-shown", show);
  document.querySelector("[data-action=open-sidebar]").setAttribute("aria-expanded", String(show));
  if (show) $("search").focus();
}
document.addEventListener("click", (event) => {
  const action = event.target.closest("[data-action]")?.dataset.action;
  if (action === "open-sidebar") showSidebar(true);
  else if (action === "close-sidebar") showSidebar(false);
  else if (action === "reconnect") socket?.retryNow();
  const opener = event.target.closest("[data-dialog]");
  if (opener) {
    const dialog = $(opener.dataset.dialog);
    dialog.showModal();
    dialog.querySelector("input")?.select();
  }
  if (event.target.closest("dialog [data-close]")) event.target.closest("dialog").close();
});
for (const dialog of document.querySelectorAll("dialog")) {
  dialog.addEventListener("close", focusComposer);
}

// ---------------------------------------------------------------- start

const live = document.querySelector('[data-role="assistant"][data-status="streaming"]');
if (live) beginStreaming(live, Number(live.dataset.messageId), -1);
M.placeRegenerate(Boolean(streaming));
M.placeEdit(Boolean(streaming));
if (conversation) openSocket();
toBottom();
autosize();
focusComposer();
