// Review screen keyboard shortcuts (no framework, no inline handlers):
//   j / ArrowDown  next smear        k / ArrowUp  previous smear
//   1-4            pick the n-th label of the current smear's model
//   c              confirm: pick the model's label and save
//   Enter          save the label shown for the current smear
// Keys typed into a text box or select are left alone; a focused button,
// switch or slider keeps its own Enter and arrow keys.
(function () {
  "use strict";
  var cards = Array.prototype.slice.call(document.querySelectorAll("[data-review-smear]"));
  if (!cards.length) { return; }
  var current = -1;

  function select(index) {
    if (index < 0 || index >= cards.length) { return; }
    if (current >= 0) { cards[current].classList.remove("review-current"); }
    current = index;
    var card = cards[current];
    card.classList.add("review-current");
    card.scrollIntoView({block: "start"});
    document.body.setAttribute("data-current-smear", card.getAttribute("data-review-smear"));
  }

  function form() { return current >= 0 ? cards[current].querySelector("form[data-review-form]") : null; }

  function pick(n) {
    var f = form();
    if (!f) { return; }
    var s = f.querySelector("select[name=label]");
    // The n-th label of the model, skipping the "Choose your label…" placeholder of a smear outside the domain.
    var labels = Array.prototype.filter.call(s.options, function (o) { return o.value !== ""; });
    if (n < labels.length) {
      s.value = labels[n].value;
      s.dispatchEvent(new Event("change"));
    }
  }

  function save() {
    var f = form();
    if (!f) { return; }
    var reason = f.querySelector("textarea[name=reason]");
    if (reason.required && !reason.value.trim()) { reason.focus(); return; }  // a change needs its reason
    f.requestSubmit();
  }

  // Start on the smear named in the address (after a save), else the first not yet reviewed.
  var fromHash = location.hash ? cards.findIndex(function (c) { return "#" + c.id === location.hash; }) : -1;
  function openAfter(i) {
    for (var j = i + 1; j < cards.length; j++) { if (!cards[j].querySelector("[data-review-state]")) { return j; } }
    return -1;
  }
  var next = openAfter(fromHash);
  select(next >= 0 ? next : Math.max(fromHash, 0));

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) { return; }
    var target = event.target;
    var tag = (target.tagName || "").toLowerCase();
    var type = (target.type || "").toLowerCase();
    var typing = tag === "textarea" || tag === "select" || target.isContentEditable ||
      (tag === "input" && ["checkbox", "radio", "range", "button", "submit"].indexOf(type) < 0);
    if (typing) { return; }
    var key = event.key;
    // A focused button, switch or slider keeps its own Enter and arrow keys.
    if ((tag === "button" || tag === "input") && (key === "Enter" || key.indexOf("Arrow") === 0)) { return; }
    if (key === "j" || key === "ArrowDown") { select(current + 1); }
    else if (key === "k" || key === "ArrowUp") { select(current - 1); }
    else if (key >= "1" && key <= "4") { pick(parseInt(key, 10) - 1); }
    else if (key === "c") {
      var f = form();
      if (!f) { return; }
      var s = f.querySelector("select[name=label]");
      if (!f.getAttribute("data-model-label")) { s.focus(); return; }  // outside the domain: nothing to confirm
      s.value = f.getAttribute("data-model-label");
      s.dispatchEvent(new Event("change"));
      save();
    } else if (key === "Enter") { save(); }
    else { return; }
    event.preventDefault();
  });
})();
