// Everything the page remembers between events, in one object every module shares.

export const config = JSON.parse(document.getElementById("chat-config").textContent);

export const state = {
  conversation: config.conversation, // {id, url, messages_url, ws_path, ...} or null
  socket: null, // a ChatSocket once there is a conversation
  opened: false, // the socket has opened once (a later open must catch up: reconcile)
  // The reply being written: its element and the last delta applied (protocol: drop seq <= lastSeq).
  streaming: null,
  // What this tab asked for and has not seen a `start` for: rolled back on a frame error.
  // Its `id` went out with the frame; the `start` that carries it back as `request_id` is ours.
  pending: null,
  waitingForUploads: false, // a send waits for its files to finish uploading (attachments.js)
  editing: null, // the user message open in its editor: {el, form} (editor.js)
  switching: null, // this tab's last `switch` request: {id, direction} (versions.js)
  reconciling: false,
  // Tokens left as of the last `start` frame ({tokens_left_today, tokens_left_this_month},
  // either null when unlimited), less what replies since then used; null: no budget applies.
  budget: config.budget ? { ...config.budget } : null,
  // This chat's replies can be counted (a tiktoken vocabulary, or the provider's figures).
  counting: config.counting !== false,
  stick: true, // follow new text until the user scrolls up
  lastTop: 0,
  toastTimer: null,
  bannerTimer: null,
  requests: 0, // request ids made without crypto.randomUUID
};

/** A fresh id for a `send`, `edit` or `regenerate` frame (docs/protocol.md: at most 64 characters). */
export function requestId() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID(); // secure contexts only
  state.requests += 1;
  return `${Date.now().toString(36)}-${state.requests}-${Math.random().toString(36).slice(2)}`;
}
