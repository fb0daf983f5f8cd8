// Drawing messages. Model output only ever reaches the page as text nodes, except the
// `html` from the server's message endpoint, which chat/rendering.py has sanitised.

const STATUS_LABELS = { cancelled: "Stopped", failed: "Failed", interrupted: "Interrupted" };

const list = () => document.getElementById("messages");

function fromTemplate(id) {
  return document.getElementById(id).content.firstElementChild.cloneNode(true);
}

export function findMessage(id) {
  return list().querySelector(`[data-testid="message"][data-message-id="${Number(id)}"]`);
}

export function allMessages() {
  return [...list().querySelectorAll('[data-testid="message"]')];
}

export function lastReply() {
  const replies = list().querySelectorAll('[data-role="assistant"]');
  return replies[replies.length - 1] || null;
}

export function setId(el, id) {
  el.dataset.messageId = String(id);
}

/** Append (or insert before `before`) a user message showing `content` verbatim, and the
 * files it carries (issue #16). */
export function userMessage(content, id = null, before = null, attachments = []) {
  const el = fromTemplate("tpl-user");
  el.querySelector("[data-body]").textContent = content;
  setId(el, id ?? "");
  showAttachments(el, attachments);
  list().insertBefore(el, before);
  return el;
}

/** "12 KB", "1.4 MB": a file's size as people read it. */
export function formatSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${Math.round(bytes / 1024)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

/** The ✕ of a file chip (the composer's and the editor's), labelled with the file's name. */
export function chipRemoveButton(fileName, testid) {
  const remove = document.createElement("button");
  remove.type = "button";
  remove.className = "attachment-chip-remove";
  remove.dataset.testid = testid;
  remove.setAttribute("aria-label", `Remove ${fileName}`);
  remove.title = "Remove";
  remove.textContent = "✕";
  return remove;
}

/**
 * A message's files, as the server describes them ({id, name, size, kind, content_type, url,
 * tokens}): images as thumbnails that open the image, other files as chips that download it.
 * The same markup (classes `attachment-*`) as the server's rendering of the message.
 */
export function showAttachments(el, attachments) {
  el.querySelector(":scope > .attachment-list")?.remove();
  if (!attachments?.length) return;
  const box = document.createElement("div");
  box.className = "attachment-list";
  box.dataset.testid = "attachments";
  for (const a of attachments) {
    const link = document.createElement("a");
    link.href = a.url;
    link.title = `${a.name} (${formatSize(a.size)})`;
    // What the editor keeps of it (editor.js filesOf), as the server's rendering writes them.
    Object.assign(link.dataset, { attachmentId: a.id, name: a.name, size: a.size, kind: a.kind });
    if (a.kind === "image") {
      link.className = "attachment-thumb";
      link.dataset.testid = "attachment-thumb";
      link.target = "_blank";
      link.rel = "noopener";
      const img = document.createElement("img");
      img.src = a.url;
      img.alt = a.name;
      img.loading = "lazy";
      link.append(img);
    } else {
      link.className = "attachment-file";
      link.dataset.testid = "attachment-file";
      link.download = a.name;
      const name = document.createElement("span");
      name.className = "attachment-file-name";
      name.textContent = a.name;
      const size = document.createElement("span");
      size.className = "attachment-file-size";
      size.textContent = formatSize(a.size);
      link.append(name, size);
    }
    box.append(link);
  }
  el.querySelector("[data-body]").before(box);
}

/** A reply that is waiting for its first token. */
export function streamingReply(id = null, before = null) {
  const el = fromTemplate("tpl-assistant");
  setId(el, id ?? "");
  list().insertBefore(el, before);
  return el;
}

export function body(el) {
  return el.querySelector("[data-body]");
}

// The text each streaming reply has shown in this tab, as the model wrote it. A reply cut
// by a server crash comes back from its last save, which may be shorter than what the
// tab showed (issue #14): `finish` keeps the difference, marked as not saved.
const shown = new WeakMap();

/** The text shown that the server's copy `saved` lacks ("" if none, or if they differ). */
function unsavedTail(el, saved) {
  const text = shown.get(el) || "";
  return text.length > saved.length && text.startsWith(saved) ? text.slice(saved.length) : "";
}

/** Replace a streaming reply's text wholesale (a `resume` frame). A resume from an earlier
 * save than what this tab shows (a server that crashed) leaves the tab's text in place. */
export function setStreamingText(el, content, reasoning) {
  if (unsavedTail(el, content)) return;
  shown.set(el, content);
  const b = body(el);
  b.className = "msg-body plain";
  b.textContent = content;
  el.dataset.renderedChars = "0";
  const details = el.querySelector(".reasoning");
  details.querySelector(".reasoning-text").textContent = reasoning || "";
  details.hidden = !reasoning;
  if (content || reasoning) notice(el, null);
}

/**
 * Markdown while streaming: the server sends sanitised HTML for the blocks that are finished
 * (a `render` frame covering content[from:chars]). It goes into a rendered part at the top of
 * the body, and that many characters leave the plain-text tail. Frames that do not start
 * where the last one ended (a socket that joined late) are ignored: plain text until `done`.
 */
export function applyRender(el, f) {
  const rendered = Number(el.dataset.renderedChars || 0);
  if (f.from !== rendered || f.chars <= rendered) return;
  const b = body(el);
  let live = b.querySelector(":scope > .md-live");
  if (!live) {
    live = document.createElement("div");
    live.className = "md md-live";
    b.prepend(live);
  }
  live.insertAdjacentHTML("beforeend", f.html); // sanitised by chat/rendering.py (nh3)
  let drop = f.chars - f.from;
  for (const node of [...b.childNodes]) {
    if (drop <= 0) break;
    if (node.nodeType !== Node.TEXT_NODE) continue;
    if (node.data.length <= drop) {
      drop -= node.data.length;
      node.remove();
    } else {
      node.data = node.data.slice(drop);
      drop = 0;
    }
  }
  el.dataset.renderedChars = String(f.chars);
}

/** Append coalesced pieces: one text node per animation frame, never a re-render. */
export function appendPieces(el, { content, reasoning, refusal }) {
  if (content) {
    body(el).appendChild(document.createTextNode(content));
    shown.set(el, (shown.get(el) || "") + content);
  }
  if (reasoning) {
    const details = el.querySelector(".reasoning");
    details.hidden = false;
    details.querySelector(".reasoning-text").appendChild(document.createTextNode(reasoning));
  }
  if (refusal) {
    const p = el.querySelector(".refusal");
    p.hidden = false;
    p.appendChild(document.createTextNode(refusal));
  }
  if (content || reasoning || refusal) notice(el, null);
}

/** `text` as a sentence followed by more words: a period only if it has no end mark yet.
 * Provider details arrive as "… (HTTP 503): overloaded", "… (connection refused)." or
 * "Try again!", so a fixed "." or "(…)." around them doubles or drops punctuation. */
export function asSentence(text) {
  const trimmed = text.trim();
  return /[.!?…]["'”’)\]]*$/.test(trimmed) ? trimmed : `${trimmed}.`;
}

/** Show a notice under a streaming reply (waiting, retrying), or hide it with null. */
export function notice(el, text, kind = "") {
  const n = el.querySelector("[data-notice]");
  if (text === null) {
    n.hidden = true;
    return;
  }
  n.className = `msg-notice ${kind}`;
  n.replaceChildren();
  if (kind !== "retrying") {
    const dots = document.createElement("span");
    dots.className = "dots";
    dots.setAttribute("aria-hidden", "true");
    n.append(dots, " ");
  }
  n.append(text);
  n.hidden = false;
}

/** A small note on a reply whose prompt left out the oldest messages (`start.trimmed`). */
export function trimmedNote(el, count) {
  el.querySelector("[data-trimmed]")?.remove();
  if (!count) return;
  const note = document.createElement("p");
  note.className = "msg-trimmed";
  note.dataset.trimmed = "";
  note.dataset.testid = "trimmed-note";
  note.textContent =
    count === 1
      ? "1 earlier message was left out to fit the model's context window."
      : `${count.toLocaleString()} earlier messages were left out to fit the model's context window.`;
  el.querySelector(".msg-foot").before(note);
}

export function showError(el, text) {
  const box = el.querySelector("[data-error]");
  box.querySelector("[data-error-text]").textContent = text;
  box.hidden = !text;
}

export function setStatus(el, status) {
  el.dataset.status = status;
  const badge = el.querySelector('[data-testid="message-status"]');
  badge.className = `badge badge-${status}`;
  badge.textContent = STATUS_LABELS[status] || "";
  badge.hidden = !STATUS_LABELS[status];
  if (status === "streaming") el.setAttribute("aria-busy", "true");
  else el.removeAttribute("aria-busy");
}

/** The line under a finished reply, as the server words it (chat.rendering.format_stats),
 * and its quiet form (quiet_stats), which is all that shows until hover, focus or a tap, and
 * its tooltip (how to have tokens counted, on a reply that was not). */
export function setStats(el, text, quiet = "", help = "") {
  const stats = el.querySelector('[data-testid="message-stats"]');
  stats.querySelector(".stats-full").textContent = text || "";
  stats.dataset.quiet = quiet || "";
  if (help) stats.title = help;
  else stats.removeAttribute("title");
}

/** A tap (or Enter) on the stats line shows all of it, or just the quiet part again. */
export function toggleStats(button) {
  button.setAttribute("aria-expanded", String(button.getAttribute("aria-expanded") !== "true"));
}

/** A Copy button on every code block under `root` (rendered replies only). */
export function addCodeCopy(root) {
  for (const pre of root.querySelectorAll(".md pre")) {
    if (pre.querySelector(".code-copy")) continue;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "code-copy";
    button.dataset.action = "copy-code";
    button.dataset.testid = "copy-code";
    button.textContent = "Copy";
    button.setAttribute("aria-label", "Copy this code");
    pre.append(button);
  }
}

/** Swap in the server's sanitised rendering of a finished reply. */
export function finish(el, payload) {
  const tail = payload.status === "interrupted" ? unsavedTail(el, payload.content || "") : "";
  shown.delete(el);
  setStatus(el, payload.status);
  notice(el, null);
  const b = body(el);
  b.className = "msg-body md";
  b.innerHTML = payload.html; // sanitised by chat/rendering.py (nh3), never raw model output
  addCodeCopy(b);
  showUnsaved(el, tail);
  const details = el.querySelector(".reasoning");
  if (payload.reasoning !== undefined) {
    details.querySelector(".reasoning-text").textContent = payload.reasoning;
    details.hidden = !payload.reasoning;
  }
  if (payload.stats !== undefined) setStats(el, payload.stats, payload.stats_quiet, payload.stats_help);
  el.querySelector('[data-testid="copy"]').hidden = !payload.content;
  if (payload.status === "failed" || payload.status === "interrupted") {
    showError(el, payload.error_detail || el.querySelector("[data-error-text]").textContent || "The reply did not finish.");
  }
}

/** The end of a reply this tab showed but the server never saved (it crashed before the
 * next save): kept on the page as plain text, marked, until the page is reloaded. */
function showUnsaved(el, tail) {
  el.querySelector("[data-unsaved]")?.remove();
  if (!tail) return;
  const box = document.createElement("div");
  box.className = "msg-unsaved";
  box.dataset.unsaved = "";
  box.dataset.testid = "unsaved-tail";
  const label = document.createElement("p");
  label.className = "msg-unsaved-label";
  label.textContent =
    "Not saved: the server restarted before this part was stored. It is shown here only; " +
    "it will be gone after a reload and the model will not see it.";
  const text = document.createElement("div");
  text.className = "msg-unsaved-text plain";
  text.textContent = tail;
  box.append(label, text);
  body(el).after(box);
}

/** Every saved user message offers Edit (issue #14), but not while anything streams. */
export function placeEdit(streaming) {
  for (const el of list().querySelectorAll('[data-role="user"]')) {
    const button = el.querySelector('[data-testid="edit"]');
    if (button) button.hidden = streaming || !el.dataset.messageId || el.classList.contains("editing");
  }
}

/** The `‹ 2/3 ›` switcher under a message with other versions (`versions` from the server:
 * {index, count, previous, next}, or null with only one version). */
export function setVersions(el, versions) {
  const nav = el.querySelector("[data-versions]");
  if (!nav) return;
  nav.hidden = !versions;
  if (!versions) return;
  nav.querySelector('[data-testid="version-label"]').textContent = `${versions.index}/${versions.count}`;
  for (const [testid, id] of [
    ["version-previous", versions.previous],
    ["version-next", versions.next],
  ]) {
    const button = nav.querySelector(`[data-testid="${testid}"]`);
    button.dataset.version = id ?? "";
    button.disabled = id == null;
  }
}

/** `el` and every message after it (what an edit of `el` replaces). */
export function messagesFrom(el) {
  const found = [];
  for (let node = el; node; node = node.nextElementSibling) {
    if (node.matches('[data-testid="message"]')) found.push(node);
  }
  return found;
}

/** Only the last reply offers Regenerate (as Retry when it failed), and not while anything streams. */
export function placeRegenerate(streaming) {
  const last = lastReply();
  for (const button of list().querySelectorAll('[data-testid="regenerate"]')) {
    const el = button.closest('[data-testid="message"]');
    button.hidden = streaming || el !== last || !el.querySelector("[data-error]").hidden;
  }
  for (const button of list().querySelectorAll('[data-testid="retry"]')) {
    button.hidden = streaming || button.closest('[data-testid="message"]') !== last;
  }
}
