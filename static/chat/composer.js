// Asking for replies: send and regenerate (each frame with a fresh request id, so the
// `start` that answers it is recognised; editing is editor.js's), and copying what was written.
import * as A from "./attachments.js";
import { openSocket } from "./connection.js";
import { FRAME_ERRORS } from "./frames.js";
import { errorText, newChatChoice } from "./header.js";
import * as M from "./messages.js";
import { csrfToken, focusComposer, showEmptyState, showNewConversation, toast, toastOk, toBottom, ui } from "./page.js";
import { config, requestId, state } from "./state.js";
import { fetchMessage, rollback, setStreamingUi } from "./stream.js";

export function autosize() {
  const input = ui.input;
  input.style.height = "auto";
  input.style.height = `${Math.min(input.scrollHeight, innerHeight * 0.4)}px`;
}

/** The chat, created with the model and system prompt picked in the header (issue #14). */
async function createConversation(firstMessage) {
  const body = new FormData();
  body.append("title", firstMessage.split("\n").find((line) => line.trim()) || "");
  for (const [name, value] of Object.entries(newChatChoice())) body.append(name, value);
  const response = await fetch(config.create_url, {
    method: "POST",
    body,
    headers: { Accept: "application/json", "X-CSRFToken": csrfToken() },
    credentials: "same-origin",
  });
  if (response.status === 400) {
    // A model the site stopped offering since the page was loaded, say: its words, nothing created.
    const error = new Error("refused");
    error.userMessage = `The chat was not started: ${errorText((await response.json()).errors)}`;
    throw error;
  }
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  const created = await response.json();
  showNewConversation(created);
  return created;
}

/** Draw what this tab asks for before the server answers; `start` or an error settles it. */
export function expect(kind, fields) {
  state.pending = { kind, id: requestId(), sentOk: true, ...fields };
  setStreamingUi(true);
  toBottom();
  return state.pending;
}

/** Why `content` (with `files` attached) cannot be sent now (as the server would word it), or null. */
export function refusal(content, files = 0) {
  if (!content.trim() && !files) return FRAME_ERRORS.empty_content;
  if (content.length > config.max_chars) return FRAME_ERRORS.content_too_long;
  if (state.streaming || state.pending) return FRAME_ERRORS.busy;
  return null;
}

export async function send() {
  const input = ui.input;
  if (state.waitingForUploads) return; // already going, once the files are up
  if (!input.value.trim() && !A.ready().length && !A.uploading()) return; // Enter in an empty box
  if (A.uploading()) {
    // Never without a file the user attached: the message goes when the uploads end (it says so).
    state.waitingForUploads = true;
    const uploads = await A.whenUploaded();
    state.waitingForUploads = false;
    if (uploads === "refused") {
      toast("A file was not accepted (its reason is on it), so the message was not sent. It's still in the box.");
    }
    if (uploads !== "ok") return;
  }
  const content = input.value;
  const files = A.ready();
  const refused = refusal(content, files.length);
  if (refused) {
    toast(refused);
    return;
  }
  // Offline after having been connected: say so. Still connecting for the first time (a
  // message typed as the page loads): it goes as soon as the socket opens, as a new chat's does.
  if (state.conversation && !state.socket.isOpen && state.opened) {
    toast("You're offline, so the message was not sent. It's still in the box; send it again once reconnected.");
    return;
  }
  input.value = "";
  autosize();
  showEmptyState(false);
  const userEl = M.userMessage(content, null, null, files);
  const attachments = A.takeAll(); // put back by a refusal (stream.js rollback)
  const { id } = expect("send", { content, userEl, replyEl: M.streamingReply(), attachments });
  const frame = { type: "send", content, id };
  if (files.length) frame.attachments = files.map((file) => file.id);
  if (!state.conversation) {
    try {
      // A message of files only is titled by their names (the server's title rule shortens it).
      state.conversation = await createConversation(content.trim() ? content : files.map((f) => f.name).join(", "));
    } catch (error) {
      rollback();
      toast(error.userMessage || "Could not start a new chat. Check your connection and try again.");
      return;
    }
    openSocket();
  }
  state.socket.sendWhenOpen(frame);
  focusComposer();
}

export function regenerate() {
  if (state.streaming || state.pending || !state.conversation) return;
  if (!state.socket.isOpen) {
    toast("You're offline. Try again once reconnected.");
    return;
  }
  const old = M.lastReply();
  if (old) old.hidden = true;
  const { id } = expect("regenerate", { replacedEl: old, replyEl: M.streamingReply() });
  state.socket.send({ type: "regenerate", id });
}

export async function copyReply(el) {
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

export async function copyCode(button) {
  const pre = button.closest("pre");
  const code = pre.querySelector("code") || pre;
  try {
    await navigator.clipboard.writeText(code === pre ? pre.innerText.replace(/Copy$/, "") : code.textContent);
    toastOk("Code copied.");
  } catch {
    toast("Could not copy to the clipboard.");
  }
}
