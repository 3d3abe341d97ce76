// Refreshes the runs on the status page while any of them is still running.
"use strict";

async function refresh() {
  const running = document.querySelector(".state-running, .state-planning");
  if (!running) return;
  try {
    const response = await fetch(location.pathname, { headers: { Accept: "text/html" } });
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    document.getElementById("runs").replaceWith(page.getElementById("runs"));
  } catch (error) {
    /* keep the last view; try again on the next tick */
  }
}
setInterval(refresh, 2000);
