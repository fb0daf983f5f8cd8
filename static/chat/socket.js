// A websocket that reconnects with exponential backoff and reports its state.
// It never queues frames behind the caller's back: send() says whether the frame went.

const PING_MS = 25000;
const MAX_DELAY_MS = 30000;

export class ChatSocket {
  constructor(path, { onFrame, onOpen, onState }) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    this.url = `${scheme}//${location.host}${path}`;
    this.onFrame = onFrame;
    this.onOpen = onOpen;
    this.onState = onState;
    this.attempt = 0;
    this.ws = null;
    this.timer = null;
    this.pinger = null;
    this.onceOpen = [];
    this.closed = false;
    addEventListener("online", () => this.retryNow());
  }

  connect() {
    clearTimeout(this.timer);
    this.timer = null;
    this.onState({ state: "connecting", attempt: this.attempt });
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.onopen = () => {
      this.attempt = 0;
      this.onState({ state: "open" });
      this.pinger = setInterval(() => this.send({ type: "ping" }), PING_MS);
      this.onOpen();
      for (const frame of this.onceOpen.splice(0)) this.send(frame);
    };
    ws.onmessage = (event) => {
      let frame;
      if (event.data.startsWith("+")) {
        // A text delta (docs/protocol.md): reply text with its reply and seq implied.
        frame = { type: "delta", content: event.data.slice(1) };
      } else {
        try {
          frame = JSON.parse(event.data);
        } catch {
          return;
        }
      }
      this.onFrame(frame);
    };
    ws.onclose = () => {
      clearInterval(this.pinger);
      if (this.ws !== ws || this.closed) return;
      this.ws = null;
      // 0.5 s, 1 s, 2 s … capped at 30 s, with jitter so tabs do not reconnect in step.
      const base = Math.min(MAX_DELAY_MS, 500 * 2 ** this.attempt);
      const delay = base / 2 + Math.random() * (base / 2);
      this.attempt += 1;
      this.onState({ state: "offline", retryAt: Date.now() + delay });
      this.timer = setTimeout(() => this.connect(), delay);
    };
  }

  get isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  send(frame) {
    if (!this.isOpen) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  /** For the first message of a new chat: sent as soon as the socket first opens. */
  sendWhenOpen(frame) {
    if (!this.send(frame)) this.onceOpen.push(frame);
  }

  retryNow() {
    if (this.closed || this.ws !== null) return;
    this.attempt = 0;
    this.connect();
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    clearInterval(this.pinger);
    if (this.ws) this.ws.close();
  }
}
