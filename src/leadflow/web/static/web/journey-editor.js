/* The journey editor: a row's fields follow its type, rows are added and removed in place, a
 * condition shows the inputs of its kind, and "go to" boxes suggest the step ids on the page.
 * Without this script the page still works: the buttons post and the server redraws the rows. */
(function () {
  "use strict";
  var form = document.getElementById("journey-editor");
  if (!form) { return; }

  function filled(id, index) {
    var template = document.getElementById(id);
    return template ? template.innerHTML.replace(/__prefix__/g, String(index)) : "";
  }

  function showMode(box) {
    var mode = box.querySelector("[data-filter-mode]").value;
    box.querySelectorAll("[data-mode]").forEach(function (part) {
      part.hidden = part.getAttribute("data-mode").split(" ").indexOf(mode) < 0;
    });
  }

  function refreshIds() {
    var list = document.getElementById("node-ids");
    if (!list) { return; }
    list.innerHTML = "";
    form.querySelectorAll("[data-node-id]").forEach(function (input) {
      var row = input.closest("[data-row]");
      if (input.value.trim() && !(row && row.hidden)) {
        var option = document.createElement("option");
        option.value = input.value.trim();
        list.appendChild(option);
      }
    });
  }

  form.addEventListener("change", function (e) {
    var target = e.target;
    if (target.matches("[data-filter-mode]")) {
      showMode(target.closest("[data-filter]"));
    } else if (target.matches("select[data-kind]")) {
      var row = target.closest("[data-row]");
      var params = row.querySelector("[data-params]");
      params.innerHTML = filled("tpl-" + target.getAttribute("data-kind") + "-" + target.value,
                                row.getAttribute("data-index"));
    } else if (target.matches("[data-remove]")) {
      target.closest("[data-row]").hidden = target.checked;
      refreshIds();
    }
  });

  form.addEventListener("input", function (e) {
    if (e.target.matches("[data-node-id]")) { refreshIds(); }
  });

  form.addEventListener("click", function (e) {
    var add = e.target.closest("[data-add]");
    if (!add) { return; }
    e.preventDefault();
    var section = add.getAttribute("data-add");
    var total = form.querySelector("[name='" + section + "-TOTAL']");
    var rows = form.querySelector("[data-rows='" + section + "']");
    var index = parseInt(total.value, 10);
    rows.insertAdjacentHTML("beforeend", filled("tpl-" + section + "-row", index));
    total.value = String(index + 1);
    var badge = rows.lastElementChild.querySelector(".num-badge");
    if (badge) { badge.textContent = String(index + 1); }
    var first = rows.lastElementChild.querySelector("input:not([type=hidden]), select");
    if (first) { first.focus(); }
  });

  refreshIds();
})();
