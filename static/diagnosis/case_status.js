// Case page: poll the case's JSON status while smears are queued or being
// classified, and update each smear card in place. No framework.
(function () {
  "use strict";
  var container = document.getElementById("smears");
  if (!container) { return; }
  var url = container.getAttribute("data-status-url");
  var POLL_MS = 3000;
  var MAX_DELAY_MS = 60000;
  var delay = POLL_MS;

  function text(el, value) { if (el) { el.textContent = value == null ? "" : value; } }

  function badge(className, label) {
    var span = document.createElement("span");
    span.className = "badge " + className;
    span.textContent = label;
    return span;
  }

  function updateSmear(item) {
    var card = container.querySelector('[data-smear="' + item.id + '"]');
    if (!card) { return false; }  // a smear added elsewhere: needs a page load
    var status = card.querySelector('[data-field="status"]');
    status.className = "badge smear-status smear-status-" + item.status;
    text(status, item.status_display);
    var stage = card.querySelector('[data-field="stage"]');
    stage.replaceChildren();
    var suggestion = item.stage && item.in_domain !== false && !item.not_assessable;
    if (item.not_assessable) {
      stage.appendChild(badge("text-bg-secondary", "Not assessable"));
    } else if (item.stage && item.in_domain === false) {
      // The model could not judge this image: no stage, no probability bars, only the reason.
      stage.appendChild(badge("text-bg-warning text-wrap text-start", "Outside the model's domain: no suggestion"));
    } else if (item.stage && item.kind === "cell") {
      stage.appendChild(badge("stage-badge stage-" + (item.stage === "blast" ? "blast" : "normal"),
        item.stage === "blast" ? "flagged for review" : "not flagged"));
    } else if (item.stage) {
      stage.appendChild(badge("stage-badge stage-" + item.stage, item.stage_display));
    }
    var domain = card.querySelector('[data-field="domain"]');
    if (domain) {
      var reason = item.domain_reason || "";
      text(domain, item.not_assessable ? "Not assessable: " + item.not_assessable_reason
        : (item.stage && item.in_domain === false ? reason.charAt(0).toUpperCase() + reason.slice(1) + "." : ""));
    }
    text(card.querySelector('[data-field="error"]'), item.status === "failed" ? item.error : "");
    card.querySelector('[data-field="retry"]').hidden = !item.can_retry;
    var probs = card.querySelector('[data-field="probs"]');
    if (!probs) { return true; }  // pages without probability bars (the upload queue)
    probs.hidden = !suggestion;
    if (suggestion && item.probabilities) {
      // Either model: the four stages of a field, or blast/normal of a cell
      // (a cell's card shows the P(blast) bar and the threshold).
      Object.keys(item.probabilities).forEach(function (s) {
        var p = item.probabilities[s];
        var bar = probs.querySelector('[data-prob="' + s + '"]');
        if (bar) { bar.style.width = (p * 100).toFixed(1) + "%"; }
        text(probs.querySelector('[data-prob-text="' + s + '"]'), p.toFixed(2));
      });
      if (item.threshold != null) {
        text(probs.querySelector('[data-field="threshold"]'), item.threshold.toFixed(2));
        var mark = probs.querySelector("[data-threshold-mark]");
        if (mark) { mark.style.left = (item.threshold * 100).toFixed(1) + "%"; }
      }
      text(probs.querySelector('[data-field="model"]'), item.model);
    }
    return true;
  }

  function updateCase(data) {
    document.querySelectorAll("[data-case-state]").forEach(function (el) {
      el.className = "badge case-state case-state-" + data.state;
      el.setAttribute("data-case-state", data.state);
      text(el, data.state_display);
    });
    document.querySelectorAll("[data-case-status]").forEach(function (el) {
      el.className = "badge case-status case-status-" + data.status;
      text(el, data.status_display);
    });
    var counts = { done: 0, pending: 0, failed: 0 };
    data.smears.forEach(function (s) {
      if (s.status === "done") { counts.done++; }
      else if (s.status === "failed") { counts.failed++; }
      else { counts.pending++; }
    });
    text(document.querySelector("[data-case-counts]"),
      counts.done + " done · " + counts.pending + " pending · " + counts.failed + " failed");
    var screening = data.screening;
    var screeningCard = document.querySelector("[data-screening-card]");
    if (screening && screeningCard) {
      screeningCard.hidden = !screening.cells;
      var pct = screening.screened ? " (" + Math.round(100 * screening.flagged / screening.screened) + " %)" : "";
      var line = document.querySelector("[data-screening-summary]");
      line.replaceChildren();
      if (screening.screened) {
        var strong = document.createElement("strong");
        strong.textContent = screening.flagged;
        line.appendChild(strong);
        line.appendChild(document.createTextNode(" of " + screening.screened + " cell" +
          (screening.screened === 1 ? "" : "s") + " flagged by the screen" + pct));
      } else {
        line.textContent = "No cell screened yet.";  // not "0 of 0", which reads like a result
      }
      var outside = document.querySelector("[data-screening-outside]");
      if (outside) {
        outside.hidden = !screening.outside_domain;
        text(outside, screening.outside_domain + " cell" + (screening.outside_domain === 1 ? "" : "s") +
          " outside the model's domain: not screened, no suggestion.");
      }
    }
    var suggestion = document.querySelector("[data-case-suggestion]");
    if (suggestion) {
      suggestion.replaceChildren();
      if (data.suggested_stage) {
        suggestion.appendChild(badge("stage-badge stage-" + data.suggested_stage, data.suggested_stage_display));
        var conf = document.createElement("span");
        conf.className = "fs-6 text-muted";
        conf.textContent = " mean confidence " + data.suggested_confidence.toFixed(2);
        suggestion.appendChild(conf);
      } else {
        var none = document.createElement("span");
        none.className = "text-muted fs-6";
        none.textContent = "No suggestion: no classified blood-smear field inside the model's domain.";
        suggestion.appendChild(none);
      }
    }
  }

  function poll() {
    fetch(url, { headers: { "Accept": "application/json" }, credentials: "same-origin", cache: "no-store" })
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
      .then(function (data) {
        data.smears.forEach(updateSmear);
        updateCase(data);
        delay = POLL_MS;
        if (data.pending) { window.setTimeout(poll, delay); }
      })
      .catch(function () {
        delay = Math.min(delay * 2, MAX_DELAY_MS);  // back off while the server is unreachable
        window.setTimeout(poll, delay);
      });
  }

  if (container.querySelector('.smear-status-queued, .smear-status-processing')) {
    window.setTimeout(poll, POLL_MS);
  }
  // A retry turns a smear back to queued: the POST reloads the page, which restarts polling.
})();
