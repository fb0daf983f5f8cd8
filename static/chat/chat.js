// The chat page: composer, streaming replies over the websocket (docs/protocol.md), sidebar.
// This module wires the page's events and starts it; the work is done in:
//   state.js      everything the page remembers, in one object
//   socket.js     a websocket that reconnects; connection.js opens it, shows the offline banner
//   frames.js     what each server frame does
//   stream.js     the reply being written: buttons, drawing deltas, finishing, rolling back
//   reconcile.js  catching up after a reconnect
//   composer.js   send, regenerate, copy;  editor.js  editing a message in place
//   attachments.js  files for the next message: paperclip, drop, paste; uploads and their chips
//   versions.js   the ‹ 2/3 › switcher between versions of a message
//   header.js     the model picker, system prompt, ⋯ menu, theme and demo notice
//   share.js      the Share… dialog: a read-only link, revoking it, who opened it
//   messages.js   drawing messages;  budget.js  the tokens-left line;  page.js  the rest of the page
//   sidebar.js    the list of chats: date groups, search as you type, each chat's menu
import { cancelWaiting, watchAttachments } from "./attachments.js";
import { showBudget } from "./budget.js";
import { autosize, copyCode, copyReply, regenerate, send } from "./composer.js";
import { openSocket } from "./connection.js";
import { cancelEdit, startEdit } from "./editor.js";
import { watchHeader } from "./header.js";
import * as M from "./messages.js";
import { $, focusComposer, toBottom, ui, watchScrolling, watchSidebarAndDialogs } from "./page.js";
import { watchShare } from "./share.js";
import { watchSidebar } from "./sidebar.js";
import { config, state } from "./state.js";
import { beginStreaming, stop } from "./stream.js";
import { chooseVersion } from "./versions.js";

ui.input.addEventListener("input", autosize);
ui.input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
});
$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});
ui.stopButton.addEventListener("click", stop);
document.addEventListener("keydown", (event) => {
  if (event.key !== "Escape" || document.querySelector("dialog[open]")) return;
  if (state.waitingForUploads) {
    event.preventDefault();
    cancelWaiting();
  } else if (state.streaming || state.pending) {
    event.preventDefault();
    stop();
  } else if (state.editing) {
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
  else if (button.dataset.action === "stats") M.toggleStats(button);
  else if (button.dataset.action === "version") chooseVersion(button);
});
M.addCodeCopy($("messages"));
watchScrolling();
watchSidebarAndDialogs();
watchSidebar();
watchHeader();
watchShare();
watchAttachments();

// ---------------------------------------------------------------- start

const live = document.querySelector('[data-role="assistant"][data-status="streaming"]');
if (live) beginStreaming(live, Number(live.dataset.messageId), -1);
M.placeRegenerate(Boolean(state.streaming));
M.placeEdit(Boolean(state.streaming));
showBudget(config.budget);
if (state.conversation) openSocket();
toBottom();
autosize();
focusComposer();
ui.sendButton.disabled = false; // the page is ready to send (see page.html)
