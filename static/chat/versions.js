// Versions of messages (issue #14): the `‹ 2/3 ›` switcher. Choosing a version asks the server
// (a `switch` frame); the server makes that branch the conversation's current one and tells
// every tab (`branch`), and each tab draws the list the server now has, so tabs stay in step
// and a reload shows the same branch.
import { cancelEdit, startEdit } from "./editor.js";
import * as M from "./messages.js";
import { afterGrowth, showEmptyState, toast } from "./page.js";
import { requestId, state } from "./state.js";

let drawn = 0; // the last list asked for: an older answer arriving late is not drawn

export function chooseVersion(button) {
  const versionId = Number(button.dataset.version);
  if (!versionId || !state.conversation) return;
  if (state.streaming || state.pending) {
    toast("A reply is still being written. Stop it or wait for it to finish, then switch versions.");
    return;
  }
  if (!state.socket?.isOpen) {
    toast("You're offline. Try again once reconnected.");
    return;
  }
  const direction = button.dataset.testid; // version-previous or version-next: focus it again after
  state.switching = { id: requestId(), direction };
  state.socket.send({ type: "switch", message_id: versionId, id: state.switching.id });
}

/** A `branch` frame: another version was chosen here or in another tab; draw the server's list. */
export async function showBranch(f) {
  const ask = ++drawn;
  let messages;
  try {
    const response = await fetch(state.conversation.messages_url, {
      headers: { Accept: "application/json" },
      credentials: "same-origin",
    });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    ({ messages } = await response.json());
  } catch {
    toast("Could not show the version chosen. Reload the page to see it.");
    return;
  }
  if (ask !== drawn) return;
  // An edit being typed here survives another tab's switch when its message is still shown.
  const draft = state.editing && {
    id: state.editing.el.dataset.messageId,
    text: state.editing.form.querySelector("textarea").value,
  };
  cancelEdit();
  const list = document.getElementById("messages");
  list.replaceChildren();
  for (const m of messages) {
    if (state.streaming && state.streaming.id === m.id) {
      list.append(state.streaming.el); // begun since the switch: keep drawing into the same element
      continue;
    }
    const el = m.role === "assistant" ? M.streamingReply(m.id) : M.userMessage(m.content, m.id, null, m.attachments);
    if (m.role === "assistant") {
      if (m.status === "streaming") M.setStreamingText(el, m.content, m.reasoning);
      else M.finish(el, m);
    }
    M.setVersions(el, m.versions);
  }
  const pending = state.pending; // sent from here since; its `start` is still to come
  if (pending?.userEl) list.append(pending.userEl);
  if (pending?.replyEl) list.append(pending.replyEl);
  M.addCodeCopy(list);
  M.placeRegenerate(Boolean(state.streaming));
  M.placeEdit(Boolean(state.streaming));
  showEmptyState(messages.length === 0);
  const chosen = M.findMessage(f.message_id);
  const ours = state.switching && f.request_id === state.switching.id;
  if (chosen && ours) {
    // Keyboard users stay on the switcher they used (the other arrow at either end).
    const nav = chosen.querySelector("[data-versions]");
    const same = nav.querySelector(`[data-testid="${state.switching.direction}"]`);
    (same.disabled ? nav.querySelector("button:not([disabled])") : same)?.focus();
    chosen.scrollIntoView({ block: "nearest" });
  } else afterGrowth();
  if (ours) state.switching = null;
  const edited = draft && M.findMessage(draft.id);
  if (edited) startEdit(edited, draft.text);
}
