// The "Share…" dialog (issue #15): a read-only link to this chat for the site's signed-in users,
// whether it shows the system prompt, revoking it, and who opened it (chat/shares.py).
import { errorText } from "./header.js";
import { $ } from "./page.js";
import { state } from "./state.js";

const dialog = $("share-dialog");
const form = $("share-form");
const showPrompt = $("share-show-prompt");
const linkBox = dialog.querySelector("[data-share-link]");
const urlInput = $("share-url");
const createButton = dialog.querySelector("[data-share-create]");
const revokeButton = dialog.querySelector("[data-action=revoke-share]");
const copyButton = dialog.querySelector("[data-action=copy-share]");
const errorLine = dialog.querySelector("[data-share-error]");
const viewers = dialog.querySelector(".share-viewers");
const nobody = dialog.querySelector("[data-share-nobody]");
const controls = [showPrompt, createButton, revokeButton];

let current = null; // the last state the server sent

function showError(text) {
  errorLine.textContent = text || "";
  errorLine.hidden = !text;
}

function when(iso) {
  return new Date(iso).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

function viewerItem(viewer) {
  const li = document.createElement("li");
  li.dataset.testid = "share-viewer";
  const name = document.createElement("strong");
  name.textContent = viewer.username;
  const times = viewer.count === 1 ? "once" : `${viewer.count} times`;
  const detail = document.createElement("span");
  detail.className = "muted";
  detail.textContent =
    ` · ${times}, last ${when(viewer.last_seen)}` +
    (viewer.count > 1 ? ` (first ${when(viewer.first_seen)})` : "") +
    (viewer.revoked ? " · through a revoked link" : "");
  li.append(name, detail);
  return li;
}

function show(data) {
  current = data;
  const share = data.share;
  linkBox.hidden = !share;
  urlInput.value = share ? share.url : "";
  showPrompt.checked = share ? share.show_system_prompt : showPrompt.checked;
  createButton.hidden = Boolean(share);
  revokeButton.hidden = !share;
  copyButton.textContent = "Copy";
  viewers.replaceChildren(...data.viewers.map(viewerItem));
  const more = data.viewers_total - data.viewers.length;
  if (more > 0) {
    const li = document.createElement("li");
    li.className = "muted";
    li.textContent = `and ${more} more`;
    viewers.append(li);
  }
  nobody.hidden = data.viewers.length > 0;
}

async function request(url, fields) {
  const options = { headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (fields) {
    options.method = "POST";
    // No body at all rather than an empty multipart one, which Django refuses (400).
    if (Object.keys(fields).length) {
      options.body = new FormData();
      for (const [name, value] of Object.entries(fields)) options.body.append(name, value);
    }
    options.headers["X-CSRFToken"] = form.querySelector("[name=csrfmiddlewaretoken]").value;
  }
  // One change at a time: the controls wait while one is on its way.
  dialog.setAttribute("aria-busy", "true");
  for (const control of controls) control.disabled = true;
  try {
    await send(url, options);
  } finally {
    dialog.removeAttribute("aria-busy");
    for (const control of controls) control.disabled = false;
  }
}

async function send(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch {
    showError("The server could not be reached. Try again once reconnected.");
    return;
  }
  if (response.ok) {
    showError("");
    show(await response.json());
  } else if (response.status === 400 && response.headers.get("Content-Type")?.startsWith("application/json")) {
    showError(errorText((await response.json()).errors));
  } else {
    showError(`The server answered ${response.status}. Try again.`);
  }
}

function choice() {
  return { show_system_prompt: showPrompt.checked ? "on" : "off" };
}

async function copyLink() {
  try {
    await navigator.clipboard.writeText(urlInput.value);
  } catch {
    urlInput.select(); // copied by hand, then
    showError("Could not copy to the clipboard: the link is selected.");
    return;
  }
  copyButton.textContent = "Copied";
}

export function watchShare() {
  document.addEventListener("click", (event) => {
    if (!event.target.closest('[data-dialog="share-dialog"]') || !state.conversation) return;
    showError("");
    request(state.conversation.share_url);
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    request(state.conversation.share_url, choice());
  });
  // With a link made, the box changes what it shows at once.
  showPrompt.addEventListener("change", () => {
    if (current?.share) request(state.conversation.share_url, choice());
  });
  revokeButton.addEventListener("click", () => request(state.conversation.revoke_share_url, {}));
  copyButton.addEventListener("click", copyLink);
}
