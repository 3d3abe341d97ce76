// The search page: builds a request from the form, example images and "more like this" picks,
// renders the grid, and loads the next page when the end of the grid scrolls into view.
"use strict";

const form = document.getElementById("search");
const results = document.getElementById("results");
const message = document.getElementById("message");
const more = document.getElementById("more");
const chips = document.getElementById("chips");
const drop = document.getElementById("drop");
const fileInput = document.getElementById("image");

const examples = { files: [], likes: [] };   // uploaded images and indexed image ids
let nextCursor = null;
let loading = false;

function say(text, isError = false) {
  message.textContent = text;
  message.classList.toggle("error", isError);
}

function renderChips() {
  chips.replaceChildren();
  examples.files.forEach((file, i) => chips.append(chip(URL.createObjectURL(file), file.name, () => examples.files.splice(i, 1))));
  examples.likes.forEach((id, i) => chips.append(chip(`/thumbnails/${id}.webp`, `photo ${id}`, () => examples.likes.splice(i, 1))));
}

function chip(src, label, remove) {
  const el = document.createElement("span");
  el.className = "chip";
  const img = document.createElement("img");
  img.src = src;
  img.alt = label;
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = "×";
  button.title = `Remove ${label}`;
  button.addEventListener("click", () => { remove(); renderChips(); });
  el.append(img, document.createTextNode(label), button);
  return el;
}

function addFiles(files) {
  for (const file of files) {
    if (file.type.startsWith("image/")) examples.files.push(file);
  }
  renderChips();
  if (examples.files.length) runSearch();
}

function formParams() {
  const params = new URLSearchParams();
  for (const [key, value] of new FormData(form).entries()) {
    if (key === "image" || value === "") continue;
    params.append(key, value);
  }
  examples.likes.forEach((id) => params.append("like", id));
  return params;
}

function tile(hit) {
  const a = document.createElement("a");
  a.className = "tile";
  a.href = hit.detail_url;
  const img = document.createElement("img");
  img.loading = "lazy";
  img.src = hit.thumbnail_url;
  img.alt = `Photo ${hit.id}`;
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = `${hit.score.toFixed(2)}${hit.taken_at ? " · " + hit.taken_at.slice(0, 10) : ""}`;
  const like = document.createElement("button");
  like.type = "button";
  like.className = "like";
  like.textContent = "More like this";
  like.addEventListener("click", (event) => {
    event.preventDefault();
    examples.likes = [hit.id];
    examples.files = [];
    renderChips();
    runSearch();
  });
  a.append(img, meta, like);
  return a;
}

async function fetchPage(request) {
  const response = await fetch(request.url, request.init);
  const body = await response.json().catch(() => ({ error: { message: "The server sent no answer." } }));
  if (!response.ok) throw new Error(body.error ? body.error.message : `Error ${response.status}`);
  return body;
}

function show(page, append) {
  if (!append) results.replaceChildren();
  page.results.forEach((hit) => results.append(tile(hit)));
  nextCursor = page.next_cursor;
  more.hidden = !nextCursor;
  const count = results.children.length;
  if (!count) say("No photos match. Try other words, or fewer filters.");
  else say(`${count}${nextCursor ? "+" : ""} photos, best match first.`);
}

async function runSearch() {
  const params = formParams();
  const hasQuery = params.getAll("q").some((q) => q.trim()) || examples.likes.length || examples.files.length;
  if (!hasQuery) {
    say("Type some words, or give an example image.", true);
    return;
  }
  history.replaceState(null, "", "/?" + params.toString());
  const body = new FormData();
  for (const [key, value] of params.entries()) body.append(key, value);
  examples.files.forEach((file) => body.append("image", file));
  loading = true;
  say("Searching…");
  try {
    show(await fetchPage({ url: "/api/search", init: { method: "POST", body } }), false);
  } catch (error) {
    results.replaceChildren();
    more.hidden = true;
    say(error.message, true);
  } finally {
    loading = false;
  }
}

async function loadMore() {
  if (!nextCursor || loading) return;
  loading = true;
  try {
    show(await fetchPage({ url: "/api/search?cursor=" + encodeURIComponent(nextCursor), init: {} }), true);
  } catch (error) {
    say(error.message, true);
  } finally {
    loading = false;
  }
}

form.addEventListener("submit", (event) => { event.preventDefault(); runSearch(); });
form.addEventListener("change", (event) => {
  if (event.target.closest("#filters") && results.children.length) runSearch();
});
fileInput.addEventListener("change", () => addFiles(fileInput.files));
drop.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") fileInput.click(); });
for (const target of [drop, document.body]) {
  target.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  target.addEventListener("dragleave", () => drop.classList.remove("over"));
  target.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    addFiles(event.dataTransfer.files);
  });
}
document.addEventListener("paste", (event) => {
  const files = [...event.clipboardData.items].filter((i) => i.kind === "file").map((i) => i.getAsFile());
  if (files.length) addFiles(files);
});
new IntersectionObserver((entries) => { if (entries.some((e) => e.isIntersecting)) loadMore(); })
  .observe(more);

// A shared or reloaded address runs its search again.
(function restore() {
  const params = new URLSearchParams(location.search);
  let any = false;
  for (const [key, value] of params.entries()) {
    if (key === "like") { examples.likes.push(Number(value)); any = true; continue; }
    const fields = form.querySelectorAll(`[name="${CSS.escape(key)}"]`);
    fields.forEach((field) => {
      if (field.type === "checkbox") field.checked = field.checked || field.value === value;
      else field.value = value;
    });
    if (key === "q" && value) any = true;
    if (fields.length && key !== "q" && key !== "not") document.getElementById("filters").open = true;
  }
  renderChips();
  if (any) runSearch();
})();
