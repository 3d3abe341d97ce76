// The search page. Its address is its state: the words, the filters and the example images
// (indexed photos by id, uploads by the key the server keeps them under), so a reload or a shared
// link shows the same photos. The grid is one tab stop; arrow keys move through it, Enter opens a
// photo, M finds more like it. Back from a photo finds the grid as it was left.
"use strict";

const form = document.getElementById("search");
const results = document.getElementById("results");
const message = document.getElementById("message");
const more = document.getElementById("more");
const chips = document.getElementById("chips");
const drop = document.getElementById("drop");
const fileInput = document.getElementById("image");
const filtersPanel = document.getElementById("filters");
const weakerButton = document.getElementById("weaker");
const facetsBar = document.getElementById("facets");
const FACET_NAMES = { year: "Year", source: "Source", album: "Album", place: "Place", person: "Person", camera: "Camera" };
const strictnessInput = form.strictness;

const DEFAULT_LIMIT = 40;
const CACHE_KEY = "clipdex:grid";      // the grid as last shown, to come back to
const IDS_KEY = "clipdex:ids";         // the ids in view, for previous/next on a photo's page
const FOCUS_KEY = "clipdex:focus";     // the photo to come back to
const NOT_FILTERS = new Set(["q", "not", "like", "upload", "limit", "sort", "strictness"]);
const FIELD_NAMES = { q: "Search text", not: "But not", like: "Example image", upload: "Example image",
                      image: "Example image", cursor: "Next page", limit: "Page size" };

const examples = { likes: [], uploads: [], files: [] };   // indexed ids, kept uploads, new files
let limit = DEFAULT_LIMIT;
let nextCursor = null;
let order = "";
let loading = false;
let weakerCursor = null;   // where the photos past the cut-off begin, by relevance
let matchesText = "";      // "about 120 matches"
let lastGroup = null;      // the month heading the grid ends with (photos sorted by date)

function say(text, isError = false) {
  message.textContent = text;
  message.classList.toggle("error", isError);
}

// --- example images -----------------------------------------------------------------------------

function renderChips() {
  chips.replaceChildren();
  examples.likes.forEach((id, i) => chips.append(chip(`/thumbnails/${id}.webp`, `photo ${id}`, () => examples.likes.splice(i, 1))));
  examples.uploads.forEach((key, i) => chips.append(chip(`/uploads/${key}.jpg`, "uploaded image", () => examples.uploads.splice(i, 1))));
  examples.files.forEach((file, i) => chips.append(chip(URL.createObjectURL(file), file.name, () => examples.files.splice(i, 1))));
}

function chip(src, label, remove) {
  const el = document.createElement("span");
  el.className = "chip";
  const img = document.createElement("img");
  img.src = src;
  img.alt = "";
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = "×";
  button.title = `Remove ${label}`;
  button.setAttribute("aria-label", `Remove ${label}`);
  button.addEventListener("click", () => { remove(); renderChips(); runSearch(); });
  el.append(img, document.createTextNode(label), button);
  return el;
}

function addFiles(files) {
  const images = [...files].filter((file) => file && file.type.startsWith("image/"));
  if (!images.length) return;
  examples.files.push(...images);
  renderChips();
  runSearch();
}

// --- the request and the address ----------------------------------------------------------------

function currentParams() {
  const params = new URLSearchParams();
  for (const [key, value] of new FormData(form).entries()) {
    if (key === "image" || value === "") continue;
    if (key === "sort" && value === "relevance") continue;                      // the defaults stay
    if (key === "strictness" && value === strictnessInput.dataset.default) continue;   // out of the address
    params.append(key, value);
  }
  examples.likes.forEach((id) => params.append("like", id));
  examples.uploads.forEach((key) => params.append("upload", key));
  if (limit !== DEFAULT_LIMIT) params.set("limit", limit);
  return params;
}

function addressOf(params) {
  const query = params.toString();
  return query ? `/?${query}` : "/";
}

// --- errors that name a field -------------------------------------------------------------------

function clearInvalid() {
  form.querySelectorAll("[aria-invalid]").forEach((el) => {
    el.removeAttribute("aria-invalid");
    el.classList.remove("invalid");
  });
}

function labelOf(field) {
  const el = form.querySelector(`[name="${CSS.escape(field)}"]`);
  const container = el && (el.closest("fieldset") || el.closest("label"));
  if (container && container.tagName === "FIELDSET") return container.querySelector("legend").textContent.trim();
  if (container) {
    const text = [...container.childNodes].filter((n) => n.nodeType === Node.TEXT_NODE || n.classList?.contains("visually-hidden"))
      .map((n) => n.textContent).join(" ").trim();
    if (text) return text;
  }
  return FIELD_NAMES[field] || field;
}

function showError(error) {
  if (error.field) {
    const text = error.message.startsWith(`${error.field}: `) ? error.message.slice(error.field.length + 2) : error.message;
    say(`${labelOf(error.field)}: ${text}`, true);
    const fields = form.querySelectorAll(`[name="${CSS.escape(error.field)}"]`);
    fields.forEach((el) => { el.setAttribute("aria-invalid", "true"); el.classList.add("invalid"); });
    if (fields.length && fields[0].closest("#filters")) filtersPanel.open = true;
    if (error.field === "upload") { examples.uploads = []; renderChips(); }
  } else {
    say(error.message, true);
  }
}

class RequestFailed extends Error {
  constructor(error) {
    super(error.message);
    this.error = error;
  }
}

async function fetchPage(url, init = {}) {
  const response = await fetch(url, init);
  let body;
  try {
    body = await response.json();
  } catch (error) {
    if (init.signal && init.signal.aborted) throw error;   // cancelled by a newer search
    throw new RequestFailed({ message: "The server sent no answer." });
  }
  if (!response.ok) throw new RequestFailed(body.error || { message: `Error ${response.status}` });
  return body;
}

// --- the grid -----------------------------------------------------------------------------------

function when(hit) {
  return hit.taken_at ? new Date(hit.taken_at).toLocaleDateString(undefined, { year: "numeric", month: "short", day: "numeric" }) : "";
}

// The line of text read in the photo (or the caption, album or file name) that holds the words
// searched for, those words marked, a name labelled with its field. Built from text nodes: the
// text comes from the photo and its export, never from HTML.
function snippet(hit) {
  const line = document.createElement("span");
  line.className = "snippet";
  if (hit.snippet_from && hit.snippet_from !== "text") {
    const label = document.createElement("span");
    label.className = "field";
    label.textContent = hit.snippet_from + ": ";
    line.append(label);
  }
  let at = 0;
  for (const [start, end] of hit.marks || []) {
    line.append(hit.snippet.slice(at, start));
    const mark = document.createElement("mark");
    mark.textContent = hit.snippet.slice(start, end);
    line.append(mark);
    at = end;
  }
  line.append(hit.snippet.slice(at));
  return line;
}

function tile(hit) {
  const cell = document.createElement("div");
  cell.className = "cell";
  const a = document.createElement("a");
  a.className = "tile";
  a.href = hit.detail_url;
  a.dataset.id = hit.id;
  a.tabIndex = -1;
  const img = document.createElement("img");
  img.loading = "lazy";
  img.src = hit.thumbnail_url;
  img.alt = hit.name || `Photo ${hit.id}`;
  const caption = document.createElement("span");
  caption.className = "meta";
  const date = document.createElement("span");
  date.textContent = when(hit);
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = [hit.name, hit.album].filter(Boolean).join(" · ");
  caption.append(date, name);
  a.append(img, caption);
  if (hit.snippet) a.append(snippet(hit));
  const like = document.createElement("button");
  like.type = "button";
  like.className = "like";
  like.tabIndex = -1;   // the keyboard has M on a focused photo
  like.textContent = "More like this";
  like.addEventListener("click", () => moreLike(hit.id));
  cell.append(a, like);
  if (hit.similar > 0) cell.append(similarButton(hit));
  return cell;
}

// Copies of one picture (recompressed, resized, screenshots, bursts) share a tile: "+N similar"
// opens them beside it, and closes them again.
function similarButton(hit) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "similar";
  button.tabIndex = -1;   // the keyboard has S on a focused photo
  button.dataset.id = hit.id;
  button.dataset.count = hit.similar;
  button.textContent = `+${hit.similar} similar`;
  button.title = "Other copies of this picture: recompressed, resized, screenshots, bursts";
  button.setAttribute("aria-expanded", "false");
  return button;
}

async function toggleCopies(button) {
  const id = button.dataset.id;
  if (button.getAttribute("aria-expanded") === "true") {
    results.querySelectorAll(`.cell[data-copy-of="${CSS.escape(id)}"]`).forEach((cell) => cell.remove());
    button.setAttribute("aria-expanded", "false");
    button.textContent = `+${button.dataset.count} similar`;
    remember();
    return;
  }
  try {
    const page = await fetchPage(`/api/search?${new URLSearchParams({ lookalikes_of: id, limit: 100 })}`);
    let after = button.closest(".cell");
    page.results.filter((hit) => String(hit.id) !== id).forEach((hit) => {
      const copy = tile(hit);
      copy.classList.add("copy");
      copy.dataset.copyOf = id;
      after.after(copy);
      after = copy;
    });
    button.setAttribute("aria-expanded", "true");
    button.textContent = "Hide similar";
    remember();
  } catch (error) {
    showError(error instanceof RequestFailed ? error.error : { message: "Cannot reach clipdex." });
  }
}

results.addEventListener("click", (event) => {
  const button = event.target.closest("button.similar");
  if (button) toggleCopies(button);
});

function tiles() {
  return [...results.querySelectorAll(".tile")];
}

function focusTile(target, scroll = true) {
  const all = tiles();
  if (!target) return;
  all.forEach((t) => { t.tabIndex = t === target ? 0 : -1; });
  target.focus({ preventScroll: !scroll });
  if (scroll) target.scrollIntoView({ block: "nearest" });
}

function columns() {
  const all = tiles();
  if (all.length < 2) return 1;
  const top = all[0].getBoundingClientRect().top;
  const n = all.findIndex((t) => t.getBoundingClientRect().top > top + 1);
  return n === -1 ? all.length : n;
}

results.addEventListener("keydown", (event) => {
  const current = event.target.closest(".tile");
  if (!current) return;
  const all = tiles();
  const i = all.indexOf(current);
  const step = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: columns(), ArrowUp: -columns() }[event.key];
  if (step !== undefined) {
    event.preventDefault();
    focusTile(all[Math.max(0, Math.min(all.length - 1, i + step))]);
    if (i + step >= all.length - columns()) loadMore();
  } else if (event.key === "Home" || event.key === "End") {
    event.preventDefault();
    focusTile(event.key === "Home" ? all[0] : all[all.length - 1]);
  } else if (event.key === "m" || event.key === "M") {
    event.preventDefault();
    moreLike(Number(current.dataset.id));
  } else if (event.key === "s" || event.key === "S") {
    const button = current.parentElement.querySelector("button.similar");
    if (button) {
      event.preventDefault();
      toggleCopies(button);
    }
  }
});

results.addEventListener("click", (event) => {
  const clicked = event.target.closest(".tile");
  if (clicked) sessionStorage.setItem(FOCUS_KEY, clicked.dataset.id);
});

function moreLike(id) {
  // As "More like this" on a photo's page: that photo alone, with the filters as they are.
  form.q.value = "";
  form.not.value = "";
  examples.likes = [id];
  examples.uploads = [];
  examples.files = [];
  renderChips();
  runSearch();
}

// What the matches are made of: each count is a link that narrows the search to it.
let shownFacets = null;   // as the server sent them, to draw again when coming back

function showFacets(facets, partial) {
  shownFacets = { facets, partial };
  facetsBar.replaceChildren();
  for (const [facet, values] of Object.entries(facets || {})) {
    if (values.length < 2) continue;   // one value narrows nothing
    const group = document.createElement("div");
    group.className = "facet";
    const name = document.createElement("span");
    name.className = "facet-name";
    name.textContent = FACET_NAMES[facet] || facet;
    group.append(name);
    for (const item of values) {
      const link = document.createElement("a");
      link.href = "#";
      link.dataset.filter = JSON.stringify(item.filter);
      const count = document.createElement("span");
      count.className = "count";
      count.textContent = ` ${item.count}${partial ? "+" : ""}`;
      link.append(item.value, count);
      link.addEventListener("click", (event) => { event.preventDefault(); narrow(item.filter); });
      group.append(link);
    }
    facetsBar.append(group);
  }
  facetsBar.hidden = !facetsBar.childElementCount;
}

function narrow(filter) {
  for (const [key, value] of Object.entries(filter)) {
    form.querySelectorAll(`[name="${CSS.escape(key)}"]`).forEach((field) => {
      if (field.type === "checkbox") field.checked = field.value === value;
      else field.value = value;
    });
  }
  filtersPanel.open = true;
  runSearch();
}

// Photos sorted by date read as a timeline: a heading for each month.
function group(hit) {
  return hit.taken_at ? new Date(hit.taken_at).toLocaleDateString(undefined, { year: "numeric", month: "long" })
                      : "Date unknown";
}

function heading(text) {
  const h = document.createElement("h3");
  h.className = "day";
  h.textContent = text;
  return h;
}

function show(page, append, weaker = false) {
  if (!append) { results.replaceChildren(); lastGroup = null; showFacets(page.facets, page.facets_partial); }
  const byDate = /^(newest|oldest)/.test(page.strategy);
  if (weaker) results.append(heading("Weaker matches"));
  page.results.forEach((hit) => {
    if (byDate && group(hit) !== lastGroup) results.append(heading(lastGroup = group(hit)));
    results.append(tile(hit));
  });
  const all = tiles();
  if (all.length && !all.some((t) => t.tabIndex === 0)) all[0].tabIndex = 0;
  nextCursor = page.next_cursor;
  if (!append) {
    // Which model's vectors answered, and why when it is not the default (a query in Chinese).
    const first = byDate ? `${page.strategy.split(",")[0]} first` : "best match first";
    order = first + (page.model && !/^(newest|oldest)$/.test(page.strategy) ? `, by ${page.model}` : "")
      + (page.note ? `. Note: ${page.note}` : "");
    matchesText = page.matches == null ? "" : `${page.matches_exact ? "" : "about "}${page.matches} matches`;
  }
  if (!weaker && !append) weakerCursor = page.weaker_cursor || null;
  else if (!weaker && page.weaker_cursor) weakerCursor = page.weaker_cursor;
  if (weaker) weakerCursor = null;
  more.hidden = !nextCursor;
  weakerButton.hidden = !(weakerCursor && !nextCursor);
  describe();
  remember();
}

function describe() {
  const count = tiles().length;
  const matched = matchesText ? `${matchesText[0].toUpperCase()}${matchesText.slice(1)}: ` : "";
  if (!count) say(matched ? `${matched}no photo is close enough${weakerCursor ? " (show weaker matches below)" : ""}.`
                          : "No photos match. Try other words, or fewer filters.");
  else say(`${matched}${count}${nextCursor ? "+" : ""} photos, ${order}.`);
}

// --- coming back ----------------------------------------------------------------------------------

function remember() {
  const hits = tiles().map((t) => ({ id: Number(t.dataset.id), html: t.parentElement.outerHTML }));
  sessionStorage.setItem(CACHE_KEY, JSON.stringify({ address: location.pathname + location.search, hits,
                                                       html: results.innerHTML, facets: shownFacets, nextCursor,
                                                       order, weakerCursor, matchesText, lastGroup,
                                                       scrollY: window.scrollY }));
  sessionStorage.setItem(IDS_KEY, JSON.stringify({ address: location.pathname + location.search,
                                                     ids: hits.map((h) => h.id) }));
}

function restoreGrid() {
  const saved = JSON.parse(sessionStorage.getItem(CACHE_KEY) || "null");
  if (!saved || saved.address !== location.pathname + location.search || !saved.hits.length) return false;
  results.innerHTML = saved.html || saved.hits.map((h) => h.html).join("");
  if (saved.facets) showFacets(saved.facets.facets, saved.facets.partial);
  results.querySelectorAll(".cell").forEach((cell) => {
    const id = Number(cell.querySelector(".tile").dataset.id);
    cell.querySelector(".like").addEventListener("click", () => moreLike(id));
  });
  nextCursor = saved.nextCursor;
  order = saved.order;
  weakerCursor = saved.weakerCursor || null;
  matchesText = saved.matchesText || "";
  lastGroup = saved.lastGroup || null;
  more.hidden = !nextCursor;
  weakerButton.hidden = !(weakerCursor && !nextCursor);
  describe();
  const focus = sessionStorage.getItem(FOCUS_KEY);
  const target = focus && results.querySelector(`.tile[data-id="${CSS.escape(focus)}"]`);
  window.scrollTo(0, saved.scrollY || 0);
  if (target) {
    focusTile(target, false);
    const box = target.getBoundingClientRect();
    if (box.top < 0 || box.bottom > window.innerHeight) target.scrollIntoView({ block: "center" });
  }
  return true;
}

let scrollTimer = null;
window.addEventListener("scroll", () => {
  clearTimeout(scrollTimer);
  scrollTimer = setTimeout(remember, 200);
});

// --- searching ------------------------------------------------------------------------------------

let inFlight = null;   // the search under way: a newer one cancels it

async function runSearch() {
  if (inFlight) inFlight.abort();
  const controller = new AbortController();
  inFlight = controller;
  clearInvalid();
  const params = currentParams();
  const body = new FormData();
  for (const [key, value] of params.entries()) body.append(key, value);
  body.append("facets", "true");
  examples.files.forEach((file) => body.append("image", file));
  loading = true;
  say("Searching…");
  const slow = setTimeout(explainWait, 1500);
  try {
    const page = await fetchPage("/api/search", { method: "POST", body, signal: controller.signal });
    if (controller.signal.aborted) return;   // a newer search owns the page now
    for (const upload of page.uploads || []) {
      if (upload.image_id) examples.likes.push(upload.image_id);    // the very bytes are indexed
      else examples.uploads.push(upload.key);
    }
    if (examples.files.length) { examples.files = []; renderChips(); }
    history.replaceState(null, "", addressOf(currentParams()));
    show(page, false);
  } catch (error) {
    if (controller.signal.aborted) return;
    results.replaceChildren();
    more.hidden = true;
    if (error instanceof RequestFailed) showError(error.error);
    else say(`The server cannot be reached: ${error.message}`, true);
  } finally {
    clearTimeout(slow);
    if (inFlight === controller) {
      inFlight = null;
      loading = false;
    }
  }
}

async function explainWait() {
  try {
    const health = await (await fetch("/healthz")).json();
    if (loading && health.model === "loading") say("Loading the model (the first search after the server starts takes a few seconds)…");
  } catch (error) { /* the search itself will say what went wrong */ }
}

async function loadMore() {
  if (!nextCursor || loading) return;
  const cursor = nextCursor;
  loading = true;
  try {
    const page = await fetchPage("/api/search?cursor=" + encodeURIComponent(cursor));
    if (cursor === nextCursor) show(page, true);   // else a new search replaced the grid meanwhile
  } catch (error) {
    if (error instanceof RequestFailed) showError(error.error);
    else say(error.message, true);
  } finally {
    if (!inFlight) loading = false;
  }
}

form.addEventListener("submit", (event) => { event.preventDefault(); runSearch(); });
form.addEventListener("change", (event) => { if (event.target.closest("#filters, #order")) runSearch(); });
strictnessInput.addEventListener("input", () => { document.getElementById("strictness-value").textContent = strictnessInput.value; });
weakerButton.addEventListener("click", async () => {
  if (!weakerCursor || loading) return;
  loading = true;
  try {
    show(await fetchPage("/api/search?cursor=" + encodeURIComponent(weakerCursor)), true, true);
  } catch (error) {
    if (error instanceof RequestFailed) showError(error.error);
    else say(error.message, true);
  } finally {
    if (!inFlight) loading = false;
  }
});
fileInput.addEventListener("change", () => { addFiles(fileInput.files); fileInput.value = ""; });
drop.addEventListener("keydown", (event) => {
  if (event.key === "Enter" || event.key === " ") { event.preventDefault(); fileInput.click(); }
});
// One set of handlers on the document: a drop on the drop zone bubbles up to it, and is handled once.
document.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
document.addEventListener("dragleave", (event) => { if (!event.relatedTarget) drop.classList.remove("over"); });
document.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  addFiles(event.dataTransfer.files);
});
document.addEventListener("paste", (event) => {
  const files = [...event.clipboardData.items].filter((i) => i.kind === "file").map((i) => i.getAsFile());
  addFiles(files);
});
new IntersectionObserver((entries) => { if (entries.some((e) => e.isIntersecting)) loadMore(); }).observe(more);

// --- the address restores the page ----------------------------------------------------------------

(function restore() {
  const params = new URLSearchParams(location.search);
  let filtered = false;
  for (const [key, value] of params.entries()) {
    if (key === "like") { if (/^\d+$/.test(value)) examples.likes.push(Number(value)); continue; }
    if (key === "upload") { examples.uploads.push(value); continue; }
    if (key === "limit") { limit = Number(value) || DEFAULT_LIMIT; continue; }
    form.querySelectorAll(`[name="${CSS.escape(key)}"]`).forEach((field) => {
      if (field.type === "checkbox") field.checked = field.checked || field.value === value;
      else field.value = value;
      if (!NOT_FILTERS.has(key) && value) filtered = true;
    });
  }
  filtersPanel.open = filtered;
  document.getElementById("strictness-value").textContent = strictnessInput.value;
  renderChips();
  const navigation = performance.getEntriesByType("navigation")[0];
  const returning = navigation && (navigation.type === "back_forward" || navigation.type === "reload");
  if (!(returning && restoreGrid())) runSearch();
})();
