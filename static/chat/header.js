// The header (issue #14): the model picker and system prompt of this chat -- or of a new chat,
// held here until its first message creates it -- the ⋯ menu (this chat's actions, the theme,
// the admin) and the demo model's notice.
import { $, toast, toastOk } from "./page.js";
import { config, state } from "./state.js";

const picker = $("settings-model");
const settingsForm = $("settings-form");
const settingsDialog = $("settings-dialog");
const promptInput = $("settings-system-prompt");
const promptError = $("prompt-error");
const promptButton = $("prompt-button");
const menuButton = $("menu-button");
const menu = $("page-menu");

// What the chat is answered with: as the server has it, or what a new chat will be created with.
const saved = { model: picker.value, system_prompt: promptInput.value };

/** The model and system prompt a new chat is created with (chat/views.py create). */
export function newChatChoice() {
  return { ...saved };
}

/** The first message of a form's errors as chat/views.py sends them ({field: [{message}]}). */
export function errorText(errors) {
  const first = Object.values(errors || {}).flat()[0];
  return first?.message || "That was not accepted.";
}

async function post(url, fields) {
  const body = new FormData();
  for (const [name, value] of Object.entries(fields)) body.append(name, value);
  const token = settingsForm.querySelector("[name=csrfmiddlewaretoken]").value;
  return fetch(url, {
    method: "POST",
    body,
    headers: { Accept: "application/json", "X-CSRFToken": token },
    credentials: "same-origin",
  });
}

let saving = Promise.resolve();

/** Saves a change to the model or the system prompt; an error to show, or null. One at a time,
 * each sent with what the last one saved: a quick model switch then a prompt edit keeps both. */
function save(fields) {
  const done = saving.then(() => saveNow(fields));
  saving = done.catch(() => {});
  return done;
}

async function saveNow(fields) {
  if (!state.conversation) {
    Object.assign(saved, fields);
    return null;
  }
  let response;
  try {
    response = await post(state.conversation.settings_url, { ...saved, ...fields });
  } catch {
    return "Not saved: the server could not be reached. Try again once reconnected.";
  }
  if (response.ok) {
    Object.assign(saved, fields);
    return null;
  }
  if (response.status === 400) return errorText((await response.json()).errors);
  return `Not saved: the server answered ${response.status}. Try again.`;
}

// ---------------------------------------------------------------- model and system prompt

function showDemoNotice() {
  const notice = $("demo-banner");
  if (notice) notice.hidden = !config.demo_models.includes(picker.value);
}

function showPromptSet() {
  const prompt = saved.system_prompt.trim();
  promptButton.toggleAttribute("data-set", Boolean(prompt));
  promptButton.title = prompt ? `System prompt: ${prompt.slice(0, 200)}` : "No system prompt: the site's default";
}

function showPromptError(text) {
  promptError.textContent = text;
  promptError.hidden = !text;
}

async function pickModel() {
  const label = picker.selectedOptions[0]?.textContent.trim();
  showDemoNotice();
  const error = await save({ model: picker.value });
  if (error) {
    picker.value = saved.model;
    showDemoNotice();
    toast(error);
  } else if (state.conversation) {
    toastOk(`${label} answers from the next reply.`);
  }
}

async function savePrompt(event) {
  event.preventDefault();
  const error = await save({ system_prompt: promptInput.value });
  if (error) {
    showPromptError(error);
    return;
  }
  showPromptSet();
  settingsDialog.close();
}

// ---------------------------------------------------------------- the ⋯ menu and the theme

function menuItems() {
  return [...menu.querySelectorAll('[role^="menuitem"]')].filter((item) => item.offsetParent !== null);
}

function showMenu(open, { refocus = false } = {}) {
  menu.hidden = !open;
  menuButton.setAttribute("aria-expanded", String(open));
  if (open) menuItems()[0]?.focus();
  else if (refocus) menuButton.focus();
}

function menuKeys(event) {
  const items = menuItems();
  const at = items.indexOf(document.activeElement);
  if (event.key === "Escape") showMenu(false, { refocus: true });
  else if (event.key === "ArrowDown") items[(at + 1) % items.length]?.focus();
  else if (event.key === "ArrowUp") items[(at - 1 + items.length) % items.length]?.focus();
  else if (event.key === "Home") items[0]?.focus();
  else if (event.key === "End") items.at(-1)?.focus();
  else if (event.key === "Tab") showMenu(false);
  else return;
  if (event.key !== "Tab") event.preventDefault();
  event.stopPropagation(); // Escape closes the menu, it does not also stop a reply
}

/** "auto" follows the system; kept where static/chat/prefs.js reads it before the next paint. */
function setTheme(choice) {
  document.documentElement.dataset.theme = choice;
  try {
    localStorage.setItem("theme", choice);
  } catch {
    // Storage blocked: the choice holds for this page only.
  }
  showTheme();
}

function showTheme() {
  const current = document.documentElement.dataset.theme || "auto";
  for (const item of menu.querySelectorAll("[data-theme-choice]")) {
    item.setAttribute("aria-checked", String(item.dataset.themeChoice === current));
  }
}

function dismissDemoNotice() {
  document.documentElement.classList.add("demo-dismissed");
  try {
    localStorage.setItem("chat.demoNoticeDismissed", "1");
  } catch {
    // Storage blocked: dismissed until the next page.
  }
}

export function watchHeader() {
  picker.addEventListener("change", pickModel);
  settingsForm.addEventListener("submit", savePrompt);
  // Cancelled (or Esc): the box shows what is saved again, not the abandoned edit.
  settingsDialog.addEventListener("close", () => {
    promptInput.value = saved.system_prompt;
    showPromptError("");
  });
  menuButton.addEventListener("click", () => showMenu(menu.hidden));
  menu.addEventListener("keydown", menuKeys);
  document.addEventListener("click", (event) => {
    const choice = event.target.closest("[data-theme-choice]")?.dataset.themeChoice;
    if (choice) setTheme(choice);
    if (event.target.closest("[data-action=dismiss-demo]")) dismissDemoNotice();
    if (menu.hidden) return;
    // A click on an item does its work (page.js opens the dialogs) and closes the menu, as one outside it does.
    if (event.target.closest('[role^="menuitem"]') || !event.target.closest(".menu-wrap")) showMenu(false);
  });
  showTheme();
  showPromptSet();
  showDemoNotice();
}
