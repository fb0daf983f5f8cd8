// Files attached to the next message (issue #16): the paperclip, drag and drop onto the page,
// pasted screenshots. Each file uploads as soon as it is added (POST /attachments/, see
// docs/protocol.md) and shows as a chip in the composer: its name and size, the upload's
// progress, then its token cost and the server's note, or the server's reason for refusing
// it. Send takes the ids of the uploaded ones (composer.js); Remove deletes an unsent upload.
import { chipRemoveButton, formatSize } from "./messages.js";
import { $, csrfToken, focusComposer } from "./page.js";

const input = $("attach-input");
const chipList = $("attachment-chips");
const status = $("attachment-status");

// POST here uploads; `${uploadUrl}<id>/` deletes or downloads one (chat/urls.py).
const uploadUrl = input.dataset.uploadUrl;

// Chips in the order they were added: {el, file, id, upload, state: "uploading"|"ready"|"refused", info}.
const chips = [];
const waiters = []; // send() calls waiting for uploads to end (resolved with true if all ended well)

/** "≈ 765 tokens" (the count is the server's, for the chat's model; null: not counted). */
export function formatTokens(tokens) {
  if (tokens == null) return "";
  return `≈ ${tokens.toLocaleString()} ${tokens === 1 ? "token" : "tokens"}`;
}

function span(className, text = "") {
  const el = document.createElement("span");
  el.className = className;
  el.textContent = text;
  return el;
}

function drawChip(file) {
  const el = document.createElement("li");
  el.className = "attachment-chip";
  el.dataset.testid = "attachment-chip";
  el.dataset.state = "uploading";
  const text = document.createElement("span");
  text.className = "attachment-chip-text";
  const name = span("attachment-chip-name", file.name);
  name.title = file.name;
  const meta = span("attachment-chip-meta", `${formatSize(file.size)} · uploading…`);
  meta.dataset.testid = "attachment-meta";
  const progress = document.createElement("progress");
  progress.className = "attachment-chip-progress";
  progress.max = 100;
  progress.setAttribute("aria-label", `Uploading ${file.name}`);
  const note = span("attachment-chip-note");
  note.dataset.testid = "attachment-note";
  note.hidden = true;
  const error = span("attachment-chip-error");
  error.dataset.testid = "attachment-error";
  error.hidden = true;
  text.append(name, meta, progress, note, error);
  const remove = chipRemoveButton(file.name, "attachment-remove");
  el.append(text, remove);
  return el;
}

function part(chip, name) {
  return chip.el.querySelector(`.attachment-chip-${name}`);
}

function showReady(chip, info) {
  chip.state = "ready";
  chip.id = info.id;
  chip.info = info;
  chip.el.dataset.state = "ready";
  chip.el.dataset.attachmentId = String(info.id);
  part(chip, "progress").remove();
  if (info.kind === "image") {
    // The server's copy (the page's CSP allows images from the site itself, not blob: URLs).
    const img = document.createElement("img");
    img.className = "attachment-chip-preview";
    img.alt = "";
    img.src = info.url;
    chip.el.prepend(img);
  }
  const meta = part(chip, "meta");
  meta.textContent = `${formatSize(info.size)} · `;
  if (info.tokens == null) {
    // As a reply that could not be counted says: not silence, and the server's reason why.
    const uncounted = span("attachment-chip-uncounted", "tokens not counted");
    uncounted.dataset.testid = "attachment-uncounted";
    uncounted.title = info.uncounted || "";
    meta.append(uncounted);
  } else {
    meta.append(formatTokens(info.tokens));
  }
  if (info.note) {
    part(chip, "note").textContent = info.note;
    part(chip, "note").hidden = false;
  }
}

function showRefused(chip, words) {
  chip.state = "refused";
  chip.el.dataset.state = "refused";
  part(chip, "progress").remove();
  part(chip, "meta").textContent = `${formatSize(chip.file.size)} · not attached`;
  const error = part(chip, "error");
  error.textContent = words;
  error.hidden = false;
  error.setAttribute("role", "alert");
}

/** The server's plain words for a refusal ({error, detail}), or ours when it sent none. */
function refusalWords(xhr) {
  try {
    const detail = JSON.parse(xhr.responseText).detail;
    if (detail) return detail;
  } catch {
    // Not our JSON: a proxy's page, say (nginx's own 413).
  }
  if (xhr.status === 413) return "This file is too large to upload.";
  if (xhr.status === 403) return "You were signed out. Reload the page and attach it again.";
  return `The file was not accepted (HTTP ${xhr.status}).`;
}

/** XMLHttpRequest, not fetch: fetch cannot report an upload's progress. */
function upload(chip) {
  const form = new FormData();
  form.append("file", chip.file, chip.file.name);
  form.append("model", $("settings-model")?.value || "");
  const xhr = new XMLHttpRequest();
  chip.upload = xhr;
  xhr.open("POST", uploadUrl);
  xhr.setRequestHeader("X-CSRFToken", csrfToken());
  xhr.setRequestHeader("Accept", "application/json");
  xhr.responseType = "text";
  xhr.upload.addEventListener("progress", (event) => {
    if (!event.lengthComputable) return;
    const percent = Math.round((event.loaded / event.total) * 100);
    part(chip, "progress").value = percent;
    part(chip, "meta").textContent = `${formatSize(chip.file.size)} · uploading ${percent}%`;
  });
  xhr.addEventListener("load", () => {
    chip.upload = null;
    if (xhr.status === 201) {
      try {
        showReady(chip, JSON.parse(xhr.responseText));
      } catch {
        showRefused(chip, "The server's answer could not be read. Remove the file and attach it again.");
      }
    } else showRefused(chip, refusalWords(xhr));
    settled();
  });
  xhr.addEventListener("error", () => {
    chip.upload = null;
    showRefused(chip, "The upload failed: check your connection, then remove the file and attach it again.");
    settled();
  });
  xhr.send(form);
}

/** Attach `files` (a FileList or array): each uploads at once and shows as a chip. */
export function addFiles(files) {
  for (const file of files) {
    const chip = { file, el: drawChip(file), id: null, upload: null, state: "uploading", info: null };
    chips.push(chip);
    chipList.append(chip.el);
    upload(chip);
  }
  chipList.hidden = chips.length === 0;
}

function forget(chip) {
  chips.splice(chips.indexOf(chip), 1);
  chip.el.remove();
  chipList.hidden = chips.length === 0;
}

/** Remove a chip: an upload still running is cancelled, a finished one deleted on the server. */
function remove(chip) {
  const next = chip.el.nextElementSibling || chip.el.previousElementSibling;
  forget(chip);
  if (chip.upload) chip.upload.abort();
  else if (chip.state === "ready") {
    // Best effort: a file left unsent is never part of a message, whatever becomes of it.
    fetch(`${uploadUrl}${Number(chip.id)}/`, {
      method: "DELETE",
      headers: { "X-CSRFToken": csrfToken() },
      credentials: "same-origin",
    }).catch(() => {});
  }
  // The keyboard stays in the list (or goes back to the box when it is empty).
  if (next) next.querySelector(".attachment-chip-remove").focus();
  else focusComposer();
  settled();
}

/** How many files are still uploading. */
export function uploading() {
  return chips.filter((c) => c.state === "uploading").length;
}

/** The files a message would carry now: {id, name, size, kind, content_type, url, tokens}. */
export function ready() {
  return chips.filter((c) => c.state === "ready").map((c) => c.info);
}

function refusedCount() {
  return chips.filter((c) => c.state === "refused").length;
}

function settled() {
  if (uploading()) return;
  status.hidden = true;
  for (const { resolve, refusedBefore } of waiters.splice(0)) resolve(refusedCount() > refusedBefore ? "refused" : "ok");
}

/** Resolves once no upload is running: "ok", or "refused" if one of them was refused meanwhile
 * (the message does not go without it), or "cancelled" (Esc). Says, beside the composer, that
 * the message is waiting. */
export function whenUploaded() {
  const count = uploading();
  if (!count) return Promise.resolve("ok");
  const files = count === 1 ? "the file has" : `${count} files have`;
  status.textContent = `Your message will be sent once ${files} uploaded… (Esc: not yet)`;
  status.hidden = false;
  return new Promise((resolve) => waiters.push({ resolve, refusedBefore: refusedCount() }));
}

/** A send that no longer waits (Esc): the message stays in the box, the uploads go on. */
export function cancelWaiting() {
  status.hidden = true;
  for (const { resolve } of waiters.splice(0)) resolve("cancelled");
}

/** Empty the composer's chips once their files went with a message; returns what was sent,
 * so a refused send can put them back (restore). Refused chips go too: they were not sent. */
export function takeAll() {
  const sent = chips.filter((c) => c.state === "ready");
  for (const chip of [...chips]) forget(chip);
  return sent;
}

/** Put back chips taken by a send the server refused (nothing the user attached is lost). */
export function restore(taken) {
  for (const chip of taken || []) {
    if (chips.includes(chip)) continue;
    chips.push(chip);
    chipList.append(chip.el);
  }
  chipList.hidden = chips.length === 0;
}

function hasFiles(event) {
  return [...(event.dataTransfer?.types || [])].includes("Files");
}

export function watchAttachments() {
  $("attach-button").addEventListener("click", () => input.click());
  input.addEventListener("change", () => {
    addFiles(input.files);
    input.value = ""; // the same file can be attached again after its chip is removed
    focusComposer();
  });
  chipList.addEventListener("click", (event) => {
    const button = event.target.closest(".attachment-chip-remove");
    const chip = button && chips.find((c) => c.el === button.closest(".attachment-chip"));
    if (chip) remove(chip);
  });

  // Dropping anywhere on the page attaches (not only on the composer: it is a small target).
  // A dragged file shows where it will go; the page never navigates to a dropped file.
  let depth = 0;
  const composer = $("composer");
  document.addEventListener("dragenter", (event) => {
    if (!hasFiles(event) || document.querySelector("dialog[open]")) return;
    depth += 1;
    composer.classList.add("attachment-dropping");
  });
  document.addEventListener("dragleave", (event) => {
    if (!hasFiles(event)) return;
    depth = Math.max(0, depth - 1);
    if (!depth) composer.classList.remove("attachment-dropping");
  });
  document.addEventListener("dragover", (event) => {
    if (!hasFiles(event) || document.querySelector("dialog[open]")) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  });
  document.addEventListener("drop", (event) => {
    depth = 0;
    composer.classList.remove("attachment-dropping");
    if (!hasFiles(event) || document.querySelector("dialog[open]")) return;
    event.preventDefault();
    addFiles(event.dataTransfer.files);
    focusComposer();
  });

  // Pasting a screenshot (or a copied file) attaches it; pasted text stays text. Not in a
  // dialog's fields (the system prompt, a title): there a file has nowhere to go.
  document.addEventListener("paste", (event) => {
    const files = [...(event.clipboardData?.files || [])];
    if (!files.length || event.target.closest?.("dialog")) return;
    event.preventDefault();
    addFiles(files.map(named));
  });
}

/** A pasted screenshot arrives as "image.png" (or nameless): named by the time it was pasted. */
function named(file) {
  if (file.name && file.name !== "image.png") return file;
  const stamp = new Date().toISOString().slice(0, 19).replace("T", " ").replaceAll(":", ".");
  const extension = (file.type.split("/")[1] || "png").replace("jpeg", "jpg");
  return new File([file], `Pasted image ${stamp}.${extension}`, { type: file.type });
}
