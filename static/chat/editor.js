// Editing a user message in place (issue #14): any of them, not only the last. The message
// becomes an editor (Save & send, Cancel; Enter sends, Esc cancels); sending writes a new
// version of it, and the earlier one stays a click away in the `‹ ›` switcher.
import { expect, refusal } from "./composer.js";
import * as M from "./messages.js";
import { focusComposer, toast } from "./page.js";
import { config, state } from "./state.js";

const HINT = "Enter sends · Shift+Enter adds a line · Esc cancels. The earlier version is kept.";

function fit(textarea) {
  textarea.style.height = "auto";
  textarea.style.height = `${Math.min(textarea.scrollHeight, innerHeight * 0.5)}px`;
}

export function startEdit(el, text = null) {
  if (state.streaming || state.pending || !el.dataset.messageId) return;
  cancelEdit();
  const form = document.createElement("form");
  form.className = "msg-editor";
  form.dataset.testid = "editor";
  const hintId = `edit-hint-${el.dataset.messageId}`;
  const input = document.createElement("textarea");
  input.className = "msg-editor-input";
  input.dataset.testid = "edit-input";
  input.maxLength = config.max_chars;
  input.setAttribute("aria-label", "Edit your message");
  input.setAttribute("aria-describedby", hintId);
  input.value = text ?? M.body(el).textContent;
  const hint = document.createElement("p");
  hint.className = "msg-editor-hint";
  hint.id = hintId;
  hint.dataset.testid = "edit-hint";
  // The server sends a new version with the files its edit names (docs/protocol.md); this
  // editor names none, so say so rather than let the files quietly stay behind.
  const files = el.querySelectorAll(":scope > .attachment-list > *").length;
  hint.textContent = files ? `${HINT} ${files === 1 ? "Its file stays" : "Its files stay"} with the earlier version only.` : HINT;
  const actions = document.createElement("div");
  actions.className = "msg-editor-actions";
  const cancel = document.createElement("button");
  cancel.type = "button";
  cancel.className = "btn btn-small";
  cancel.dataset.testid = "edit-cancel";
  cancel.textContent = "Cancel";
  const save = document.createElement("button");
  save.type = "submit";
  save.className = "btn btn-primary btn-small";
  save.dataset.testid = "edit-save";
  save.textContent = "Save & send";
  actions.append(cancel, save);
  form.append(input, hint, actions);

  cancel.addEventListener("click", () => {
    cancelEdit();
    focusComposer();
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    saveEdit();
  });
  input.addEventListener("input", () => fit(input));
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      saveEdit();
    } else if (event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation(); // Esc here cancels the edit, never a reply elsewhere
      cancelEdit();
      focusComposer();
    }
  });

  el.classList.add("editing");
  M.body(el).hidden = true;
  M.body(el).after(form);
  state.editing = { el, form };
  M.placeEdit(false);
  fit(input);
  input.focus();
  input.setSelectionRange(input.value.length, input.value.length);
}

/** Close the editor, if one is open; the message shows as it was. */
export function cancelEdit() {
  const editing = state.editing;
  if (!editing) return;
  state.editing = null;
  editing.form.remove();
  editing.el.classList.remove("editing");
  M.body(editing.el).hidden = false;
  M.placeEdit(Boolean(state.streaming || state.pending));
}

function saveEdit() {
  const { el, form } = state.editing;
  const content = form.querySelector("textarea").value;
  const refused = refusal(content);
  if (refused) {
    toast(refused);
    return;
  }
  if (!state.socket?.isOpen) {
    toast("You're offline, so the edit was not sent. It's still in the editor; send it again once reconnected.");
    return;
  }
  cancelEdit();
  // Until the server answers, the edited message and what followed it are hidden and the new
  // version is drawn at the end; a refusal brings them back and opens the editor again.
  const replacedEls = M.messagesFrom(el);
  replacedEls.forEach((node) => (node.hidden = true));
  const userEl = M.userMessage(content);
  const { id } = expect("edit", {
    content,
    replacedEls,
    userEl,
    replyEl: M.streamingReply(),
    undo: () => startEdit(el, content),
  });
  state.socket.send({ type: "edit", message_id: Number(el.dataset.messageId), content, id });
  focusComposer();
}
