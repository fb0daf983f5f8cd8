// The page around the messages: toasts, focus, following the text as it grows, opening the
// sidebar (its list lives in sidebar.js) and dialogs.
import { addConversation } from "./sidebar.js";
import { state } from "./state.js";

export { moveSidebarItemToTop } from "./sidebar.js";

export const $ = (id) => document.getElementById(id);

export const ui = {
  input: $("composer-input"),
  sendButton: $("send"),
  stopButton: $("stop"),
  scroller: $("scroller"),
  jump: $("jump"),
  banner: $("offline-banner"),
};

/** The CSRF token for the page's own requests (Django's X-CSRFToken header). */
export function csrfToken() {
  return document.querySelector("#composer [name=csrfmiddlewaretoken]").value;
}

export function toast(text) {
  const t = $("toast");
  t.textContent = text;
  t.hidden = false;
  clearTimeout(state.toastTimer);
  state.toastTimer = setTimeout(() => (t.hidden = true), 8000);
}

export function toastOk(text) {
  const t = $("toast");
  toast(text);
  t.classList.add("toast-ok");
  setTimeout(() => t.classList.remove("toast-ok"), 2000);
}

export function focusComposer() {
  if (!document.querySelector("dialog[open]")) ui.input.focus();
}

export function showEmptyState(show) {
  $("empty-state").hidden = !show;
}

// ---------------------------------------------------------------- scrolling

function nearBottom() {
  const s = ui.scroller;
  return s.scrollHeight - s.scrollTop - s.clientHeight < 40;
}

export function toBottom() {
  ui.scroller.scrollTop = ui.scroller.scrollHeight;
  state.lastTop = ui.scroller.scrollTop;
  state.stick = true;
  ui.jump.hidden = true;
}

/** After the list grew: follow it, unless the user scrolled up to read. */
export function afterGrowth() {
  if (state.stick) toBottom();
  else ui.jump.hidden = false;
}

export function watchScrolling() {
  // Our own scrolling only ever moves down, so moving up away from the bottom is the user.
  ui.scroller.addEventListener("scroll", () => {
    const top = ui.scroller.scrollTop;
    if (nearBottom()) state.stick = true;
    else if (top < state.lastTop) state.stick = false;
    state.lastTop = top;
    ui.jump.hidden = state.stick;
  });
  // A wheel turn upwards stops following at once, before the next frame pulls the view down.
  ui.scroller.addEventListener(
    "wheel",
    (event) => {
      if (event.deltaY < 0) state.stick = false;
    },
    { passive: true },
  );
  ui.jump.addEventListener("click", () => {
    toBottom();
    focusComposer();
  });
}

// ---------------------------------------------------------------- sidebar and dialogs

function showSidebar(show) {
  $("app").classList.toggle("sidebar-shown", show);
  document.querySelector("[data-action=open-sidebar]").setAttribute("aria-expanded", String(show));
  if (show) $("search").focus();
}

export function watchSidebarAndDialogs() {
  document.addEventListener("click", (event) => {
    const action = event.target.closest("[data-action]")?.dataset.action;
    if (action === "open-sidebar") showSidebar(true);
    else if (action === "close-sidebar") showSidebar(false);
    else if (action === "reconnect") state.socket?.retryNow();
    const opener = event.target.closest("[data-dialog]");
    if (opener) {
      const dialog = $(opener.dataset.dialog);
      dialog.showModal();
      dialog.querySelector("input")?.select();
    }
    if (event.target.closest("dialog [data-close]")) event.target.closest("dialog").close();
  });
  for (const dialog of document.querySelectorAll("dialog")) {
    dialog.addEventListener("close", focusComposer);
  }
}

/** A chat created from this page: listed first and current, its dialogs pointed at it. */
export function showNewConversation(created) {
  addConversation(created);

  history.replaceState(null, "", created.url);
  document.title = `${created.title || "New chat"} · Chat`;
  $("title").textContent = created.title || "New chat";
  $("rename-form").action = created.rename_url;
  $("delete-form").action = created.delete_url;
  $("settings-form").action = created.settings_url;
  $("share-form").action = created.share_url;
  $("export-md").href = created.export_md_url;
  $("export-json").href = created.export_json_url;
  $("rename-title").value = created.title || "";
  $("delete-name").textContent = created.title || "New chat";
  document.querySelector(".topbar-actions").hidden = false;
}
