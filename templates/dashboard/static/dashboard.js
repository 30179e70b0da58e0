// Progressive enhancement only: every page works without this file.
"use strict";
document.addEventListener("submit", function (ev) {
  var form = ev.target;
  var question = form.getAttribute && form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) ev.preventDefault();
});
document.addEventListener("DOMContentLoaded", function () {
  // A test still waiting for the worker: look again a few times, then stop.
  var pending = document.querySelector("[data-refresh]");
  if (!pending) { sessionStorage.removeItem("gw-refresh"); return; }
  var tries = Number(sessionStorage.getItem("gw-refresh") || "0");
  if (tries >= 10) { sessionStorage.removeItem("gw-refresh"); return; }
  sessionStorage.setItem("gw-refresh", String(tries + 1));
  setTimeout(function () { window.location.reload(); }, 1000 * Number(pending.getAttribute("data-refresh")));
});
