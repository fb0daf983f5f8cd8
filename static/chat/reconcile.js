// Catching up after a reconnect: bring the list in line with the server after frames may
// have been missed (offline, other tabs).
import * as M from "./messages.js";
import { showEmptyState } from "./page.js";
import { state } from "./state.js";
import { beginStreaming, rollback, setStreamingUi } from "./stream.js";

export async function reconcile() {
  if (!state.conversation || state.reconciling) return;
  state.reconciling = true;
  try {
    const response = await fetch(state.conversation.messages_url, { headers: { Accept: "application/json" } });
    if (!response.ok) return;
    const { messages } = await response.json();
    dropGone(messages);
    settlePending(messages);
    let before = null;
    for (const m of [...messages].reverse()) {
      let el = M.findMessage(m.id);
      if (!el) {
        el = m.role === "assistant" ? M.streamingReply(m.id, before) : M.userMessage(m.content, m.id, before, m.attachments);
        if (m.role === "assistant") {
          if (m.status === "streaming") M.setStreamingText(el, m.content, m.reasoning);
          else M.finish(el, m);
        }
      } else if (m.role === "assistant" && m.status !== "streaming" && el.dataset.status === "streaming") {
        if (state.streaming && state.streaming.id === m.id) {
          state.streaming = null;
          setStreamingUi(false);
        }
        M.finish(el, m);
      }
      M.setVersions(el, m.versions);
      before = el;
    }
    if (!state.streaming) {
      const live = messages.find((m) => m.status === "streaming");
      // A list fetched while the reply streamed can arrive after its `done` finished it here.
      const el = live && M.findMessage(live.id);
      if (el && el.dataset.status === "streaming") beginStreaming(el, live.id, -1);
    }
    M.placeRegenerate(Boolean(state.streaming));
    M.placeEdit(Boolean(state.streaming));
    showEmptyState(M.allMessages().length === 0);
  } catch {
    // Offline again; the next open reconciles.
  } finally {
    state.reconciling = false;
  }
}

/** Drop what the snapshot says is gone (superseded by a regenerate); keep anything newer. */
function dropGone(messages) {
  const ids = new Set(messages.map((m) => m.id));
  const newest = messages.length ? messages[messages.length - 1].id : 0;
  for (const el of M.allMessages()) {
    const id = Number(el.dataset.messageId);
    if (id && id <= newest && !ids.has(id)) el.remove();
  }
}

/**
 * Offline since sending: if the server has the message, its reply is drawn from the list.
 * The list carries no request ids, so this is the one place a send is recognised by its
 * text: a message with our words that this page has not drawn yet.
 */
function settlePending(messages) {
  const pending = state.pending;
  if (!pending || pending.sentOk) return;
  const received =
    pending.kind === "send" &&
    messages.some((m) => m.role === "user" && m.content === pending.content && !M.findMessage(m.id));
  if (received) {
    pending.userEl.remove();
    pending.replyEl.remove();
    state.pending = null;
  } else rollback();
}
