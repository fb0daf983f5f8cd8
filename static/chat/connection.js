// The conversation's websocket, and the banner that shows while it is away.
import { onFrame } from "./frames.js";
import { ui } from "./page.js";
import { reconcile } from "./reconcile.js";
import { ChatSocket } from "./socket.js";
import { state } from "./state.js";

function onState({ state: socketState, retryAt }) {
  clearInterval(state.bannerTimer);
  const banner = ui.banner;
  if (socketState === "open") {
    banner.hidden = true;
    return;
  }
  if (socketState !== "offline") return;
  const text = banner.querySelector("[data-offline-text]");
  const tick = () => {
    const s = Math.max(0, Math.ceil((retryAt - Date.now()) / 1000));
    text.textContent = s ? `Offline — reconnecting in ${s} s…` : "Offline — reconnecting…";
  };
  tick();
  state.bannerTimer = setInterval(tick, 1000);
  banner.hidden = false;
  if (state.pending) state.pending.sentOk = false;
}

export function openSocket() {
  state.socket = new ChatSocket(state.conversation.ws_path, {
    onFrame,
    onState,
    onOpen() {
      // The first open of a page that was just rendered needs no catching up.
      if (state.opened) reconcile();
      state.opened = true;
    },
  });
  state.socket.connect();
}
