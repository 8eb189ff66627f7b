// sessionadmin dashboard: confirmations, meter widths, and keeping the list's selection across htmx polling.
(function () {
  "use strict";
  var selected = new Set();

  document.addEventListener("submit", function (event) {
    var form = event.target;
    // A bulk action with nothing ticked: say so instead of asking to confirm nothing.
    var needs = form.getAttribute && form.getAttribute("data-needs-selection");
    if (needs && !form.querySelector("input[name='" + needs + "']:checked")) {
      event.preventDefault();
      event.stopImmediatePropagation();
      var note = document.getElementById("bulk-note");
      if (note) { note.hidden = false; note.textContent = "No session selected: tick the sessions to kill first."; }
      return;
    }
    var message = form.getAttribute && form.getAttribute("data-confirm");
    if (message && !window.confirm(message)) {
      event.preventDefault();
      event.stopImmediatePropagation();
    }
  }, true);

  document.addEventListener("change", function (event) {
    var box = event.target;
    if (box.matches && box.matches("input[type=checkbox][name=ids]")) {
      if (box.checked) { selected.add(box.value); } else { selected.delete(box.value); }
    } else if (box.matches && box.matches("input[data-select-all]")) {
      document.querySelectorAll("input[type=checkbox][name=ids]").forEach(function (each) {
        each.checked = box.checked;
        if (box.checked) { selected.add(each.value); } else { selected.delete(each.value); }
      });
    }
  });

  // Meters carry their width as data-width: under the Content-Security-Policy a style
  // attribute would be refused, a width set through the CSSOM is not.
  function sizeMeters(root) {
    var all = root.querySelectorAll ? Array.prototype.slice.call(root.querySelectorAll("[data-width]")) : [];
    if (root.matches && root.matches("[data-width]")) { all.push(root); }
    all.forEach(function (each) {
      var value = parseFloat(each.getAttribute("data-width"));
      each.style.width = Math.max(0, Math.min(100, isNaN(value) ? 0 : value)) + "%";
    });
  }
  document.addEventListener("DOMContentLoaded", function () { sizeMeters(document); });
  document.addEventListener("htmx:load", function (event) { sizeMeters(event.target); });

  // Announce what a swap brought: notices and errors inside swapped content are read out
  // through the page's permanent live region (polling that only refreshes facts stays quiet).
  document.addEventListener("htmx:afterSwap", function (event) {
    var target = event.detail && event.detail.target;
    var announcer = document.getElementById("announcer");
    if (!target || !announcer || !target.querySelectorAll) { return; }
    var root = target.isConnected ? target : document;
    var notes = Array.prototype.slice.call(root.querySelectorAll(".notice, [role=alert]"));
    var text = notes.map(function (each) { return each.textContent.trim(); }).filter(Boolean).join(" ");
    if (text && event.detail.requestConfig && event.detail.requestConfig.verb !== "get") {
      announcer.textContent = "";
      window.setTimeout(function () { announcer.textContent = text; }, 50);
    }
  });

  // Polling swaps the rows; put the operator's ticks back on the new ones.
  document.addEventListener("htmx:afterSettle", function () {
    document.querySelectorAll("input[type=checkbox][name=ids]").forEach(function (each) {
      each.checked = selected.has(each.value);
    });
  });
})();
