// Editing a user message in place (issue #14): any of them, not only the last. The message
// becomes an editor (Save & send, Cancel; Enter sends, Esc cancels); sending writes a new
// version of it, and the earlier one stays a click away in the `‹ ›` switcher. The message's
// files show under the text, each with a Remove button: the new version keeps those left.
import { expect, refusal } from "./composer.js";
import * as M from "./messages.js";
import { focusComposer, toast } from "./page.js";
import { config, state } from "./state.js";

const HINT = "Enter sends · Shift+Enter adds a line · Esc cancels. The earlier version is kept.";

function fit(textarea) {
  textarea.style.height = "auto";
  textarea.style.height = `${Math.min(textarea.scrollHeight, innerHeight * 0.5)}px`;
}

/** The files a message carries, as its list shows them: [{id, name, size, kind, url}]. */
function filesOf(el) {
  return [...el.querySelectorAll(":scope > .attachment-list > [data-attachment-id]")].map((link) => ({
    id: Number(link.dataset.attachmentId),
    name: link.dataset.name,
    size: Number(link.dataset.size),
    kind: link.dataset.kind,
    url: link.getAttribute("href"),
  }));
}

/** The kept files as chips, each removable; `files` is the list the edit sends (changed here). */
function keptFiles(files, input) {
  const list = document.createElement("ul");
  list.className = "attachment-chips msg-editor-files";
  list.dataset.testid = "edit-files";
  list.setAttribute("aria-label", "Files the new version keeps");
  for (const file of files) {
    const chip = document.createElement("li");
    chip.className = "attachment-chip";
    chip.dataset.testid = "edit-file";
    const words = document.createElement("span");
    words.className = "attachment-chip-text";
    const name = document.createElement("span");
    name.className = "attachment-chip-name";
    name.textContent = file.name;
    name.title = file.name;
    const size = document.createElement("span");
    size.className = "attachment-chip-meta";
    size.textContent = M.formatSize(file.size);
    words.append(name, size);
    const remove = M.chipRemoveButton(file.name, "edit-file-remove");
    remove.addEventListener("click", () => {
      files.splice(files.indexOf(file), 1);
      chip.remove();
      list.hidden = !files.length;
      input.focus();
    });
    chip.append(words, remove);
    list.append(chip);
  }
  list.hidden = !files.length;
  return list;
}

export function startEdit(el, text = null, keep = null) {
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
  hint.textContent = HINT;
  // The edit names the files it keeps (docs/protocol.md); `keep`: those kept when it was
  // refused and opened again.
  const files = filesOf(el).filter((file) => !keep || keep.includes(file.id));
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
  form.append(input, keptFiles(files, input), hint, actions);

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
  state.editing = { el, form, files };
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
  const { el, form, files } = state.editing;
  const content = form.querySelector("textarea").value;
  const refused = refusal(content, files.length);
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
  const userEl = M.userMessage(content, null, null, files);
  const kept = files.map((file) => file.id);
  const { id } = expect("edit", {
    content,
    replacedEls,
    userEl,
    replyEl: M.streamingReply(),
    undo: () => startEdit(el, content, kept),
  });
  state.socket.send({ type: "edit", message_id: Number(el.dataset.messageId), content, attachments: kept, id });
  focusComposer();
}
