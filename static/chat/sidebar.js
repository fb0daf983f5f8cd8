// The list of chats: grouped by last activity in this browser's time zone, searched as you
// type (GET chat:list, the same search as ?q=, without reloading the page), and a menu on
// each chat (rename, export, delete) that leaves the open chat where it is.
import { focusComposer, toast } from "./page.js";
import { state } from "./state.js";

const $ = (id) => document.getElementById(id);
const box = $("conv-list");
const search = $("search");
const menu = $("conv-menu");
const renameDialog = $("conv-rename-dialog");
const deleteDialog = $("conv-delete-dialog");
const SEARCH_DELAY_MS = 250;
const DAY_MS = 86_400_000;

const items = () => [...box.querySelectorAll('[data-testid="conversation-item"]')];
const findItem = (id) => box.querySelector(`[data-testid="conversation-item"][data-conversation-id="${Number(id)}"]`);
const titleOf = (li) => li.querySelector("a").textContent;
const openId = () => state.conversation?.id ?? null;

// ---------------------------------------------------------------- groups

function startOfDay(date) {
  return new Date(date.getFullYear(), date.getMonth(), date.getDate());
}

/** "Today", "Yesterday", "Previous 7 days", "Previous 30 days", then "October 2026". */
export function groupName(updated, now = new Date()) {
  // Calendar days, rounded: a day with a daylight-saving change is 23 or 25 hours long.
  const days = Math.round((startOfDay(now) - startOfDay(updated)) / DAY_MS);
  if (days <= 0 || Number.isNaN(days)) return "Today"; // a clock a little ahead is still today
  if (days === 1) return "Yesterday";
  if (days <= 7) return "Previous 7 days";
  if (days <= 30) return "Previous 30 days";
  return updated.toLocaleDateString(undefined, { month: "long", year: "numeric" });
}

/** Lay `lis` (newest first) out under one heading per group, and say when there are none. */
function layOut(lis) {
  const now = new Date();
  const groups = [];
  for (const li of lis) {
    const name = groupName(new Date(li.dataset.updated), now);
    if (groups.at(-1)?.name !== name) groups.push({ name, lis: [] });
    groups.at(-1).lis.push(li);
  }
  const sections = groups.map(({ name, lis: members }, i) => {
    const section = document.createElement("section");
    section.className = "conv-group";
    section.dataset.testid = "conversation-group";
    const heading = document.createElement("h2");
    heading.className = "conv-group-name";
    heading.id = `conv-group-${i}`;
    heading.textContent = name;
    section.setAttribute("aria-labelledby", heading.id);
    const ul = document.createElement("ul");
    ul.className = "conv-items";
    ul.append(...members);
    section.append(heading, ul);
    return section;
  });
  const empty = box.querySelector(".conv-empty");
  empty.textContent = search.value.trim() ? "No chats match." : "No chats yet.";
  empty.hidden = lis.length > 0;
  box.replaceChildren(...sections, empty);
}

// ---------------------------------------------------------------- items

function markCurrent(li, openedId = openId()) {
  const current = String(li.dataset.conversationId) === String(openedId);
  li.classList.toggle("current", current);
  const a = li.querySelector("a");
  if (current) a.setAttribute("aria-current", "page");
  else a.removeAttribute("aria-current");
}

function setTitle(li, title) {
  const shown = title || "New chat";
  li.dataset.title = title;
  li.querySelector("a").textContent = shown;
  li.querySelector(".conv-menu-button").setAttribute("aria-label", `Options for “${shown}”`);
}

function itemFor(c, query) {
  const li = $("tpl-conversation").content.firstElementChild.cloneNode(true);
  li.dataset.conversationId = String(c.id);
  li.dataset.updated = c.updated_at || new Date().toISOString();
  li.dataset.renameUrl = c.rename_url;
  li.dataset.deleteUrl = c.delete_url;
  li.dataset.exportMdUrl = c.export_md_url;
  li.dataset.exportJsonUrl = c.export_json_url;
  // A chat opened from a search keeps the search (the server lists by ?q= too).
  li.querySelector("a").href = query ? `${c.url}?q=${encodeURIComponent(query)}` : c.url;
  setTitle(li, c.title);
  markCurrent(li);
  return li;
}

/** The open chat had activity (a reply ended): first in "Today". */
export function moveSidebarItemToTop() {
  const li = findItem(openId());
  if (!li) return;
  li.dataset.updated = new Date().toISOString();
  layOut([li, ...items().filter((other) => other !== li)]);
}

/** A chat's new title (renamed here, or titled by the server): shown in the list. */
/** A chat's new title (renamed here, or titled by the model: a `title` frame), shown in the
 * list and, for the open chat, in the header, the window title and its dialogs. */
export function showTitle(id, title) {
  const li = findItem(id);
  if (li) setTitle(li, title);
  if (String(id) === String(openId())) showOpenTitle(title);
}

/** A chat created from this page: listed first, and current. */
export function addConversation(created) {
  findItem(created.id)?.remove();
  layOut([itemFor(created, search.value.trim()), ...items()]);
  for (const li of items()) markCurrent(li, created.id); // before state.conversation is set
}

// ---------------------------------------------------------------- search as you type

let timer = null;
let inFlight = null;
let shownQuery = search.value.trim();

async function runSearch() {
  clearTimeout(timer);
  const query = search.value.trim();
  inFlight?.abort(); // only the answer to the latest words is shown
  const controller = new AbortController();
  inFlight = controller;
  const url = new URL(box.dataset.listUrl, location.href);
  if (query) url.searchParams.set("q", query);
  let data;
  try {
    const response = await fetch(url, {
      headers: { Accept: "application/json" },
      signal: controller.signal,
      credentials: "same-origin",
    });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    data = await response.json();
  } catch (error) {
    if (error.name !== "AbortError") toast(`Could not search your chats (${error.message}). Try again.`);
    return;
  } finally {
    if (inFlight === controller) inFlight = null;
  }
  shownQuery = data.query;
  layOut(data.conversations.map((c) => itemFor(c, data.query)));
  const note = $("search-note");
  note.querySelector("[data-query]").textContent = data.query;
  note.hidden = !data.query;
  // The address keeps the search, so a reload or a shared link shows the same list.
  const address = new URL(location.href);
  if (data.query) address.searchParams.set("q", data.query);
  else address.searchParams.delete("q");
  history.replaceState(history.state, "", address);
}

function searchSoon() {
  clearTimeout(timer);
  timer = setTimeout(runSearch, SEARCH_DELAY_MS);
}

function clearSearch() {
  search.value = "";
  runSearch();
}

// ---------------------------------------------------------------- the menu on each chat

let menuFor = null; // the <li> whose menu is open

function menuItems() {
  return [...menu.querySelectorAll('[role="menuitem"]')];
}

function openMenu(button) {
  const li = button.closest('[data-testid="conversation-item"]');
  closeMenu(false);
  menuFor = li;
  menu.querySelector('[data-item="export-md"]').href = li.dataset.exportMdUrl;
  menu.querySelector('[data-item="export-json"]').href = li.dataset.exportJsonUrl;
  button.setAttribute("aria-expanded", "true");
  li.classList.add("menu-open");
  menu.hidden = false;
  // Fixed, beside the button; above it when there is no room below (the list scrolls).
  const at = button.getBoundingClientRect();
  const height = menu.offsetHeight;
  const below = at.bottom + 4 + height <= window.innerHeight;
  menu.style.top = `${below ? at.bottom + 4 : Math.max(4, at.top - 4 - height)}px`;
  menu.style.left = `${Math.max(4, Math.min(at.right - menu.offsetWidth, window.innerWidth - menu.offsetWidth - 4))}px`;
  menuItems()[0].focus();
}

function closeMenu(refocus = true) {
  if (!menuFor) return;
  const button = menuFor.querySelector(".conv-menu-button");
  button.setAttribute("aria-expanded", "false");
  menuFor.classList.remove("menu-open");
  menu.hidden = true;
  menuFor = null;
  if (refocus) button.focus();
}

function choose(item) {
  const li = menuFor;
  if (item.dataset.item.startsWith("export")) {
    closeMenu(); // the link downloads by itself
    return;
  }
  closeMenu(false);
  if (item.dataset.item === "rename") askRename(li);
  else if (item.dataset.item === "delete") askDelete(li);
}

menu.addEventListener("click", (event) => {
  const item = event.target.closest('[role="menuitem"]');
  if (item) choose(item);
});

menu.addEventListener("keydown", (event) => {
  const all = menuItems();
  const at = all.indexOf(document.activeElement);
  let next = null;
  if (event.key === "ArrowDown") next = all[(at + 1) % all.length];
  else if (event.key === "ArrowUp") next = all[(at - 1 + all.length) % all.length];
  else if (event.key === "Home") next = all[0];
  else if (event.key === "End") next = all.at(-1);
  else if (event.key === "Escape") {
    event.preventDefault();
    event.stopPropagation(); // Esc closes the menu; it must not also stop a reply
    closeMenu();
    return;
  } else if (event.key === "Tab") {
    closeMenu(false);
    return;
  } else if ((event.key === " " || event.key === "Enter") && at >= 0) {
    event.preventDefault();
    all[at].click();
    return;
  }
  if (next) {
    event.preventDefault();
    next.focus();
  }
});

// ---------------------------------------------------------------- rename and delete

function showError(dialog, text) {
  const error = dialog.querySelector("[data-error]");
  error.textContent = text;
  error.hidden = !text;
}

function askRename(li) {
  renameDialog.dataset.conversationId = li.dataset.conversationId;
  const input = $("conv-rename-title");
  input.value = li.dataset.title;
  showError(renameDialog, "");
  renameDialog.showModal();
  input.select();
}

function askDelete(li) {
  deleteDialog.dataset.conversationId = li.dataset.conversationId;
  deleteDialog.querySelector("[data-name]").textContent = titleOf(li);
  showError(deleteDialog, "");
  deleteDialog.showModal();
}

async function post(url, form) {
  const response = await fetch(url, {
    method: "POST",
    body: new FormData(form),
    headers: { Accept: "application/json" },
    credentials: "same-origin",
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const errors = Object.values(data.errors || {}).flat();
    throw new Error(errors.map((e) => e.message).join(" ") || `The server answered ${response.status}.`);
  }
  return data;
}

/** The open chat's title elsewhere on the page (the header and its dialogs), after a rename here. */
function showOpenTitle(title) {
  const shown = title || "New chat";
  document.title = `${shown} · Chat`;
  const heading = $("title");
  if (heading) heading.textContent = shown;
  const input = $("rename-title");
  if (input && !input.closest("dialog")?.open) input.value = title; // not under the user's typing
  const name = $("delete-name");
  if (name) name.textContent = shown;
}

$("conv-rename-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const li = findItem(renameDialog.dataset.conversationId);
  if (!li) return renameDialog.close();
  try {
    const data = await post(li.dataset.renameUrl, event.target);
    showTitle(data.id, data.title);
    renameDialog.close();
  } catch (error) {
    showError(renameDialog, `Not renamed: ${error.message}`); // the typed title stays in the box
  }
});

$("conv-delete-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const li = findItem(deleteDialog.dataset.conversationId);
  if (!li) return deleteDialog.close();
  try {
    const data = await post(li.dataset.deleteUrl, event.target);
    if (String(data.id) === String(openId())) {
      location.assign(data.new_url); // the open chat is gone: a new one, as "+ New chat" does
      return;
    }
    li.remove();
    layOut(items());
    deleteDialog.close();
  } catch (error) {
    showError(deleteDialog, `Not deleted: ${error.message}`);
  }
});

// ---------------------------------------------------------------- start

/** Wired after page.js's dialog handling, so focus returns here, not to the composer. */
export function watchSidebar() {
  search.addEventListener("input", searchSoon);
  search.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && search.value) {
      event.preventDefault();
      event.stopPropagation(); // clears the search; a second Esc does what Esc does elsewhere
      clearSearch();
    }
  });
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault(); // Enter searches now, without reloading the page
    runSearch();
  });
  document.addEventListener("click", (event) => {
    if (event.target.closest('[data-action="clear-search"]')) {
      event.preventDefault();
      clearSearch();
      search.focus();
      return;
    }
    const button = event.target.closest(".conv-menu-button");
    if (button) {
      if (menuFor && menuFor.contains(button)) closeMenu();
      else openMenu(button);
    } else if (menuFor && !menu.contains(event.target)) {
      closeMenu(false);
    }
  });
  for (const dialog of [renameDialog, deleteDialog]) {
    dialog.addEventListener("close", () => {
      const li = findItem(dialog.dataset.conversationId);
      if (li) li.querySelector("a").focus();
      else focusComposer();
    });
  }
  window.addEventListener("resize", () => closeMenu(false));
  box.closest(".conv-nav").addEventListener("scroll", () => closeMenu(false), { passive: true });
  layOut(items());
  if (shownQuery !== search.value.trim()) runSearch(); // words typed before the script ran
}
