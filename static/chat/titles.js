// A chat's title changed on the server (the model titled it after the first reply, a `title`
// frame): shown wherever this page shows it, without a reload. Text only, never HTML.
import { state } from "./state.js";

export function showTitle(conversationId, title) {
  const id = Number(conversationId);
  const item = document.querySelector(`[data-testid="conversation-item"][data-conversation-id="${id}"]`);
  const link = item?.querySelector("a");
  if (link) link.textContent = title;
  if (!state.conversation || Number(state.conversation.id) !== id) return;
  document.title = `${title} · Chat`;
  const heading = document.getElementById("title");
  if (heading) heading.textContent = title;
  const named = document.getElementById("delete-name");
  if (named) named.textContent = title;
  const input = document.getElementById("rename-title");
  if (input && !input.closest("dialog")?.open) input.value = title; // not under the user's typing
}
