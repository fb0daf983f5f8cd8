// What the page does with each server frame (docs/protocol.md).
import { replyEnded, showBudget } from "./budget.js";
import * as M from "./messages.js";
import { afterGrowth, focusComposer, moveSidebarItemToTop, showEmptyState, toast } from "./page.js";
import { reconcile } from "./reconcile.js";
import { config, state } from "./state.js";
import { beginStreaming, endStreaming, finishReply, flush, rollback, scheduleFlush, stop } from "./stream.js";
import { showTitle } from "./sidebar.js";
import { showBranch } from "./versions.js";

export const FRAME_ERRORS = {
  busy: "A reply is already being written in this chat. Stop it or wait for it to finish.",
  rate_limited: "You're sending too fast. Wait a moment and try again.",
  content_too_long: `That message is too long (the limit is ${config.max_chars.toLocaleString()} characters).`,
  empty_content: "Type a message first.",
  nothing_to_regenerate: "There is no message to reply to yet.",
  not_streaming: "Nothing is being written right now.",
  unknown_message: "That message is not in this chat as shown any more (changed in another tab?). Reload the page.",
  budget_exceeded: "You have used your token budget for now.",
  send_rate_exceeded: "You're sending messages faster than your plan allows. Wait a moment and try again.",
  unknown_attachment: "A file attached to that message is no longer available. Remove it and attach it again.",
  images_not_supported: "This chat's model does not accept images. Remove them, or pick a model that does.",
};
// Refusals whose server wording is more precise than ours (which budget, when it resets; which model).
const SERVER_WORDS = new Set(["budget_exceeded", "send_rate_exceeded", "images_not_supported", "unknown_attachment"]);

/** Our own request's `start`: by the id we sent, never by its text (another tab may send the same words). */
function isOurs(f) {
  return state.pending !== null && f.request_id != null && f.request_id === state.pending.id;
}

const handlers = {
  start(f) {
    let replyEl;
    let stopNow = false;
    if (isOurs(f)) {
      const pending = state.pending;
      pending.replacedEls?.forEach((el) => el.remove()); // an edit's earlier version
      if (pending.userEl) {
        M.setId(pending.userEl, f.user_message.id);
        // The server's description of the files (their download links) replaces the chips' own.
        if (f.user_message.attachments) M.showAttachments(pending.userEl, f.user_message.attachments);
      }
      replyEl = pending.replyEl;
      stopNow = pending.stopRequested;
      state.pending = null;
    } else {
      // Started in another tab (or we never saw our own rollback): draw it as it is.
      const edited = f.replaces_user && M.findMessage(f.replaces_user);
      if (edited) M.messagesFrom(edited).forEach((el) => el.remove());
      if (f.user_message && !M.findMessage(f.user_message.id)) {
        M.userMessage(f.user_message.content, f.user_message.id, null, f.user_message.attachments);
      }
      replyEl = M.findMessage(f.message_id) || M.streamingReply(f.message_id);
    }
    if (f.replaces) M.findMessage(f.replaces)?.remove();
    showEmptyState(false);
    if (f.replaces || f.replaces_user) reconcile(); // the new version's `‹ 2/2 ›` switchers
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
    const streaming = state.streaming;
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
    const streaming = state.streaming;
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
    const detail = M.asSentence(f.detail || "The model provider failed");
    M.notice(el, `${detail} Retrying in ${wait} s — attempt ${f.attempt}…`, "retrying");
  },

  error(f) {
    if (f.code === "signed_out") {
      // The session ended (close code 4401 follows): reloading signs this tab in again with
      // a renewed cookie (a password changed here), or leads to the sign-in page.
      state.socket?.close();
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
    endStreaming(f.message_id);
    finishReply(el, f.message_id, f.status);
    replyEnded(f);
    focusComposer();
  },

  title(f) {
    showTitle(f.conversation_id, f.title);
  },

  branch(f) {
    showBranch(f);
  },

  pong() {},
};

export function onFrame(frame) {
  const handle = handlers[frame.type];
  if (handle) handle(frame);
}
