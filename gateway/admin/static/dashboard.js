// Progressive enhancement only: every page works without this file.
"use strict";
document.addEventListener("submit", function (ev) {
  var form = ev.target;
  var question = form.getAttribute && form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    ev.preventDefault();
    return;
  }
  // A slow action (a test send waits for a worker): say so, and keep it from being sent twice.
  var button = form.hasAttribute("data-slow") && form.querySelector("button[type=submit]");
  if (button && !button.disabled) {
    window.setTimeout(function () { button.disabled = true; button.textContent += "…"; }, 0);
  }
});
