// sessionadmin dashboard: confirmations, meter widths, and keeping the list's selection across htmx polling.
(function () {
  "use strict";
  var selected = new Set();

  document.addEventListener("submit", function (event) {
    var form = event.target;
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

  // Polling swaps the rows; put the operator's ticks back on the new ones.
  document.addEventListener("htmx:afterSettle", function () {
    document.querySelectorAll("input[type=checkbox][name=ids]").forEach(function (each) {
      each.checked = selected.has(each.value);
    });
  });
})();
