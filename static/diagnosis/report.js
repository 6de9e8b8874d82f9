// Print button of the case report (no inline handlers: the CSP allows scripts from 'self' only).
document.querySelectorAll("[data-print]").forEach(function (button) {
  button.addEventListener("click", function () { window.print(); });
});
