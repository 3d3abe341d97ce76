// A photo's page: previous / next through the results it was opened from (← and →), and back to
// them (Esc) where the grid was left.
"use strict";

const IDS_KEY = "clipdex:ids";
const FOCUS_KEY = "clipdex:focus";
const id = Number(document.querySelector(".detail").dataset.id);
const listing = JSON.parse(sessionStorage.getItem(IDS_KEY) || "null");
const steps = document.getElementById("steps");
const back = document.getElementById("back");
const links = { prev: document.getElementById("prev"), next: document.getElementById("next") };
const at = listing ? listing.ids.indexOf(id) : -1;

sessionStorage.setItem(FOCUS_KEY, String(id));   // the grid shows this photo when we go back
back.href = at >= 0 ? listing.address : "/";
if (at >= 0) {
  steps.hidden = false;
  if (at > 0) { links.prev.href = `/images/${listing.ids[at - 1]}`; links.prev.hidden = false; }
  if (at < listing.ids.length - 1) { links.next.href = `/images/${listing.ids[at + 1]}`; links.next.hidden = false; }
}

function goBack() {
  // Straight back in history when we came from the grid: the browser keeps its page as it was.
  const from = document.referrer ? new URL(document.referrer) : null;
  if (from && from.origin === location.origin && from.pathname + from.search === back.getAttribute("href")) history.back();
  else location.href = back.href;
}

back.addEventListener("click", (event) => { event.preventDefault(); goBack(); });
document.addEventListener("keydown", (event) => {
  if (event.target.closest("input, textarea, select") || event.altKey || event.ctrlKey || event.metaKey) return;
  if (event.key === "ArrowLeft" && !links.prev.hidden) location.href = links.prev.href;
  else if (event.key === "ArrowRight" && !links.next.hidden) location.href = links.next.href;
  else if (event.key === "Escape") goBack();
});

// The text OCR read in the photo, copied as it reads (a Wi-Fi password, a booking number).
for (const button of document.querySelectorAll("button[data-copy]")) {
  button.addEventListener("click", async () => {
    const text = document.getElementById(button.dataset.copy).textContent;
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = "Copied";
    } catch {
      button.textContent = "Select and copy";   // no clipboard outside https or localhost
    }
  });
}
