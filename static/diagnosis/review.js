// Review screen: zoom each smear and toggle its Grad-CAM overlay. No framework.
(function () {
  "use strict";
  document.querySelectorAll("[data-viewer]").forEach(function (block) {
    var viewer = block.querySelector(".viewer");
    var inner = block.querySelector(".viewer-inner");
    var zoom = block.querySelector("[data-zoom]");
    var heat = block.querySelector("[data-heat-toggle]");
    var label = block.querySelector("[data-zoom-label]");
    function applyZoom() {
      var z = parseFloat(zoom.value);
      inner.style.width = (z * 100) + "%";
      if (label) { label.textContent = z.toFixed(1) + "×"; }
    }
    if (zoom) { zoom.addEventListener("input", applyZoom); applyZoom(); }
    if (heat) { heat.addEventListener("change", function () { viewer.classList.toggle("show-heat", heat.checked); }); }
  });
  // A reason is required when the chosen label differs from the model's; a smear outside the model's domain has no
  // suggestion (data-model-label is empty), so the pathologist's note there stays optional.
  document.querySelectorAll("form[data-review-form]").forEach(function (form) {
    var select = form.querySelector("select[name=label]");
    var reason = form.querySelector("textarea[name=reason]");
    var model = form.getAttribute("data-model-label");
    function sync() { reason.required = model !== "" && select.value !== model; }
    select.addEventListener("change", sync); sync();
  });
})();
