// "My uploads": keeps each upload batch's progress bar current while its
// images are classified (polls the page's status URL; no framework).
(function () {
  "use strict";
  var list = document.querySelector("[data-batches]");
  if (!list) { return; }
  var url = list.getAttribute("data-status-url");

  function update(batches) {
    var open = false;
    batches.forEach(function (b) {
      var item = list.querySelector('[data-batch="' + b.batch + '"]');
      if (!item) { return; }
      var bar = item.querySelector("[data-batch-bar]");
      var finished = b.done + b.failed;
      bar.style.width = b.percent + "%";
      bar.parentNode.setAttribute("aria-valuenow", b.percent);
      bar.className = "progress-bar" + (b.failed ? " bg-warning" : b.finished ? " bg-success" : " progress-bar-striped progress-bar-animated");
      item.querySelector("[data-batch-text]").textContent =
        finished + " of " + b.total + " classified" + (b.failed ? " (" + b.failed + " failed)" : "");
      if (!b.finished) { open = true; }
    });
    return open;
  }

  function poll() {
    fetch(url, {headers: {"Accept": "application/json"}, credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) { if (data && update(data.batches || [])) { setTimeout(poll, 3000); } })
      .catch(function () { setTimeout(poll, 10000); });
  }
  if (list.querySelector(".progress-bar-animated")) { setTimeout(poll, 2000); }
})();
