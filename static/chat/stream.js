// The reply being written: the buttons that go with it, drawing its deltas once per frame,
// finishing it, and undoing what this tab drew for a request the server refused.
import { restore as restoreAttachments } from "./attachments.js";
import * as M from "./messages.js";
import { afterGrowth, focusComposer, showEmptyState, ui } from "./page.js";
import { state } from "./state.js";

export function setStreamingUi(on) {
  ui.sendButton.hidden = on;
  ui.stopButton.hidden = !on;
  ui.stopButton.disabled = false;
  ui.stopButton.textContent = "■ Stop";
  M.placeRegenerate(on);
  M.placeEdit(on);
}

function stoppingUi() {
  ui.stopButton.disabled = true;
  ui.stopButton.textContent = "Stopping…";
}

export function beginStreaming(el, id, seq = 0) {
  M.setId(el, id);
  M.setStatus(el, "streaming");
  M.showError(el, "");
  state.streaming = { id, el, lastSeq: seq, content: "", reasoning: "", refusal: "", frame: 0 };
  setStreamingUi(true);
}

/** The reply `id` is no longer being written (if it was): draw what is buffered, free the buttons. */
export function endStreaming(id) {
  const streaming = state.streaming;
  if (!streaming || streaming.id !== id) return;
  if (streaming.frame) cancelAnimationFrame(streaming.frame);
  flush();
  state.streaming = null;
  setStreamingUi(false);
}

// Deltas are buffered and drawn once per animation frame as one text node each.
export function flush() {
  const streaming = state.streaming;
  if (!streaming) return;
  streaming.frame = 0;
  const { content, reasoning, refusal } = streaming;
  if (!content && !reasoning && !refusal) return;
  streaming.content = streaming.reasoning = streaming.refusal = "";
  M.appendPieces(streaming.el, { content, reasoning, refusal });
  afterGrowth();
}

export function scheduleFlush() {
  const streaming = state.streaming;
  if (streaming && !streaming.frame) streaming.frame = requestAnimationFrame(flush);
}

export async function fetchMessage(id) {
  const response = await fetch(`${state.conversation.messages_url}${Number(id)}/`, {
    headers: { Accept: "application/json" },
    credentials: "same-origin",
  });
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return response.json();
}

/** A reply that ended: the server's rendering and stats line (chat/rendering.py) replace the text. */
export async function finishReply(el, id, status) {
  M.setStatus(el, status);
  try {
    M.finish(el, await fetchMessage(id));
  } catch {
    // The text stays as streamed (plain); the next page load renders it.
  }
  afterGrowth();
}

/** Undo what this tab drew for a request the server refused. */
export function rollback() {
  const p = state.pending;
  if (!p) return;
  state.pending = null;
  p.userEl?.remove();
  p.replyEl?.remove();
  if (p.replacedEl) p.replacedEl.hidden = false;
  p.replacedEls?.forEach((el) => (el.hidden = false));
  if (p.kind === "send" && !ui.input.value) ui.input.value = p.content;
  if (p.attachments) restoreAttachments(p.attachments); // the files go back to the composer too
  if (p.undo) {
    p.undo(); // an edit: its editor opens again with the text, nothing lost
    setStreamingUi(Boolean(state.streaming));
    return;
  }
  setStreamingUi(Boolean(state.streaming));
  showEmptyState(M.allMessages().length === 0);
  focusComposer();
}

export function stop() {
  if (state.pending && !state.streaming) {
    state.pending.stopRequested = true; // sent once its `start` names the reply
    stoppingUi();
    return;
  }
  if (!state.streaming || !state.socket) return;
  if (state.socket.send({ type: "stop" })) stoppingUi();
  focusComposer();
}
