// Portcullis console: the only script (no inline script: the CSP forbids it).
// A form with data-confirm asks before it is sent (delete, suspend).
"use strict";
document.addEventListener("submit", function (event) {
  var form = event.target;
  var question = form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});
