/* Email template editor: the dynamic blocks editor (no JSON needed) and the live preview, which
   posts the unsaved form to the preview endpoint as the marketer types and shows the result in a
   sandboxed iframe, for the sample person or a chosen contact. */
(function () {
  "use strict";

  var form = document.getElementById("email-form");
  if (!form) { return; }
  var optionsNode = document.getElementById("email-options");
  var options = optionsNode ? JSON.parse(optionsNode.textContent) : {};
  var blocksField = document.getElementById("f-blocks");
  var editor = document.getElementById("blocks-editor");

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      if (key === "text") { node.textContent = attrs[key]; }
      else if (key.indexOf("data-") === 0 || key === "aria-label" || key === "placeholder" || key === "rows" || key === "type") {
        node.setAttribute(key, attrs[key]);
      } else { node[key] = attrs[key]; }
    });
    (children || []).forEach(function (child) { if (child) { node.appendChild(child); } });
    return node;
  }

  function select(values, current, label) {
    var node = el("select", {"aria-label": label});
    values.forEach(function (v) {
      var option = el("option", {value: v.value, text: v.label});
      if (String(v.value) === String(current == null ? "" : current)) { option.selected = true; }
      node.appendChild(option);
    });
    return node;
  }

  function first(value) { return Array.isArray(value) ? (value[0] || "") : (value || ""); }

  // --- blocks -------------------------------------------------------------------------------------
  var blocks = {};
  var blocksValid = true;

  function readBlocks() {
    var raw = (blocksField.value || "").trim();
    try { blocks = raw ? JSON.parse(raw) : {}; blocksValid = blocks && typeof blocks === "object" && !Array.isArray(blocks); }
    catch (e) { blocksValid = false; }
    if (!blocksValid) { blocks = {}; }
  }

  function writeBlocks() {
    blocksField.value = JSON.stringify(blocks, null, 2);
    schedulePreview();
  }

  function whenControl(by, when, onChange) {
    var stages = [{value: "", label: "any stage"}].concat(options.stages || []);
    var segments = [{value: "", label: "choose a segment"}].concat((options.segments || []).map(function (s) { return {value: s.slug, label: s.name}; }));
    var wrap = el("span", {className: "when"});
    if (by === "segment") {
      var seg = select(segments, first(when), "segment");
      seg.addEventListener("change", function () { onChange(seg.value); });
      wrap.appendChild(seg);
    } else if (by === "stage") {
      var st = select(stages.slice(1), first(when), "stage");
      if (!first(when) && stages.length > 1) { onChange(st.value); }
      st.addEventListener("change", function () { onChange(st.value); });
      wrap.appendChild(st);
    } else if (by === "role") {
      var role = el("input", {value: first(when), placeholder: "role or persona, e.g. developer", "aria-label": "role"});
      role.addEventListener("input", function () { onChange(role.value.trim()); });
      wrap.appendChild(role);
    } else {
      var w = (when && typeof when === "object" && !Array.isArray(when)) ? when : {};
      var st2 = select(stages, first(w.stage), "stage");
      var role2 = el("input", {value: first(w.role), placeholder: "any role", "aria-label": "role"});
      var update = function () {
        var value = {};
        if (st2.value) { value.stage = st2.value; }
        if (role2.value.trim()) { value.role = role2.value.trim(); }
        onChange(value);
      };
      st2.addEventListener("change", update);
      role2.addEventListener("input", update);
      wrap.appendChild(st2); wrap.appendChild(document.createTextNode(" × ")); wrap.appendChild(role2);
    }
    return wrap;
  }

  function contentArea(part, value, label, onChange) {
    var area = el("textarea", {className: "mono", rows: part === "html" ? 3 : 2, "aria-label": label, value: value || ""});
    area.spellcheck = false;
    area.addEventListener("input", function () { onChange(area.value); });
    return area;
  }

  function renderBlocks() {
    editor.textContent = "";
    if (!blocksValid) {
      editor.appendChild(el("p", {className: "error", text: "The blocks JSON below is not valid; fix it there or clear it."}));
      return;
    }
    Object.keys(blocks).forEach(function (name) {
      var block = blocks[name];
      block.variants = block.variants || [];
      block.default = block.default || {html: "", text: ""};
      var card = el("div", {className: "block-row", "data-block": name});
      var nameInput = el("input", {value: name, "aria-label": "block name", className: "block-name"});
      var nameError = el("span", {className: "block-name-error small"});
      nameError.setAttribute("role", "alert");
      var snippet = el("code", {text: '{{ block("' + name + '") }}'});
      // Renaming fires on blur, i.e. while the marketer is clicking into another field of this
      // block. It must not rebuild the editor: that would detach the field being clicked, and what
      // is typed next would go nowhere. So it re-keys the block in place and updates the labels;
      // every input of the card stays bound to the same block object.
      nameInput.addEventListener("change", function () {
        var fresh = nameInput.value.trim();
        nameError.textContent = "";
        if (!fresh || fresh === name) { nameInput.value = name; return; }
        if (Object.prototype.hasOwnProperty.call(blocks, fresh)) {
          nameError.textContent = " There is already a block named “" + fresh + "”; the name stays " + name + ".";
          nameInput.value = name;
          return;
        }
        var renamed = {};
        Object.keys(blocks).forEach(function (key) { renamed[key === name ? fresh : key] = blocks[key]; });
        blocks = renamed;
        name = fresh;
        nameInput.value = fresh;
        card.setAttribute("data-block", fresh);
        snippet.textContent = '{{ block("' + fresh + '") }}';
        writeBlocks();
      });
      var by = select(options.by || [], block.by || "stage", "varies by");
      by.addEventListener("change", function () {
        block.by = by.value;
        block.variants.forEach(function (v) { v.when = by.value === "stage+role" ? {} : ""; });
        writeBlocks(); renderBlocks();
      });
      var remove = el("button", {type: "button", className: "small", text: "Remove block"});
      remove.addEventListener("click", function () { delete blocks[name]; writeBlocks(); renderBlocks(); });
      card.appendChild(el("div", {className: "block-head"}, [el("label", {text: "Block "}, [nameInput]),
        el("label", {text: " varies by "}, [by]), snippet, remove, nameError]));
      block.variants.forEach(function (variant, index) {
        var row = el("div", {className: "variant-row"});
        var drop = el("button", {type: "button", className: "small", text: "Remove"});
        drop.addEventListener("click", function () { block.variants.splice(index, 1); writeBlocks(); renderBlocks(); });
        row.appendChild(el("div", {className: "variant-when"}, [el("span", {text: "When "}),
          whenControl(block.by || "stage", variant.when, function (value) { variant.when = value; writeBlocks(); }), drop]));
        row.appendChild(contentArea("html", variant.html, "variant HTML", function (v) { variant.html = v; writeBlocks(); }));
        var textDetails = el("details", {}, [el("summary", {text: "plain text (blank: from the HTML)"}),
          contentArea("text", variant.text, "variant text", function (v) { variant.text = v; writeBlocks(); })]);
        row.appendChild(textDetails);
        card.appendChild(row);
      });
      var addVariant = el("button", {type: "button", className: "small", text: "Add a variant"});
      addVariant.addEventListener("click", function () {
        block.variants.push({when: (block.by || "stage") === "stage+role" ? {} : "", html: "", text: ""});
        writeBlocks(); renderBlocks();
      });
      card.appendChild(el("p", {}, [addVariant]));
      var defaultRow = el("div", {className: "variant-row default"}, [el("div", {text: "Otherwise (default)"}),
        contentArea("html", block.default.html, "default HTML", function (v) { block.default.html = v; writeBlocks(); })]);
      card.appendChild(defaultRow);
      editor.appendChild(card);
    });
  }

  if (blocksField && editor) {
    readBlocks();
    renderBlocks();
    blocksField.addEventListener("change", function () { readBlocks(); renderBlocks(); schedulePreview(); });
    var addBlock = document.querySelector("[data-block-add]");
    if (addBlock) {
      addBlock.addEventListener("click", function () {
        if (!blocksValid) { return; }
        var n = 1;
        while (blocks["block" + n]) { n += 1; }
        blocks["block" + n] = {by: "stage", variants: [{when: (options.stages || [{value: ""}])[0].value, html: "", text: ""}],
                               default: {html: "", text: ""}};
        writeBlocks(); renderBlocks();
      });
    }
  }

  // --- live preview -------------------------------------------------------------------------------
  var frame = document.querySelector("[data-preview-frame]");
  var subject = document.querySelector("[data-preview-subject]");
  var preheader = document.querySelector("[data-preview-preheader]");
  var text = document.querySelector("[data-preview-text]");
  var errorBox = document.querySelector("[data-preview-error]");
  var warningsBox = document.querySelector("[data-preview-warnings]");
  var timer = null;
  var sequence = 0;

  function schedulePreview() {
    if (!frame) { return; }
    clearTimeout(timer);
    timer = setTimeout(preview, 400);
  }

  function preview() {
    var mine = ++sequence;
    var data = new FormData(form);
    fetch(form.getAttribute("data-preview-url"), {method: "POST", body: data, credentials: "same-origin",
                                                  headers: {"X-Requested-With": "fetch"}})
      .then(function (response) { return response.json(); })
      .then(function (result) {
        if (mine !== sequence) { return; }
        if (result.error) {
          errorBox.textContent = result.error; errorBox.hidden = false;
          return;
        }
        errorBox.hidden = true;
        subject.textContent = result.subject;
        preheader.textContent = result.preheader;
        text.textContent = result.text;
        frame.srcdoc = result.html;
        warningsBox.textContent = "";
        (result.warnings || []).forEach(function (w) { warningsBox.appendChild(el("li", {text: w})); });
      })
      .catch(function () {
        if (mine !== sequence) { return; }
        errorBox.textContent = "The preview could not be loaded."; errorBox.hidden = false;
      });
  }

  form.addEventListener("input", schedulePreview);
  form.addEventListener("change", schedulePreview);
  ["preview-stage", "preview-role"].forEach(function (id) {
    var node = document.getElementById(id);
    if (node) { node.addEventListener("input", schedulePreview); node.addEventListener("change", schedulePreview); }
  });

  // --- contact picker ------------------------------------------------------------------------------
  var picker = document.getElementById("preview-contact");
  var pickerId = document.getElementById("preview-contact-id");
  var list = document.getElementById("preview-contacts");
  var testContact = document.querySelector("[data-test-contact]");
  var searchTimer = null;

  function setContact(id) {
    if (pickerId.value === id) { return; }
    pickerId.value = id;
    if (testContact) { testContact.value = id; }
    schedulePreview();
  }

  if (picker) {
    picker.addEventListener("input", function () {
      var value = picker.value.trim();
      var match = value.match(/\(#(\d+)\)$/);
      if (match) { setContact(match[1]); return; }
      if (!value) { setContact(""); return; }
      clearTimeout(searchTimer);
      searchTimer = setTimeout(function () {
        fetch(form.getAttribute("data-contact-search-url") + "?q=" + encodeURIComponent(value), {credentials: "same-origin"})
          .then(function (response) { return response.json(); })
          .then(function (result) {
            list.textContent = "";
            (result.items || []).forEach(function (item) { list.appendChild(el("option", {value: item.label})); });
          });
      }, 250);
    });
  }

  schedulePreview();
})();
