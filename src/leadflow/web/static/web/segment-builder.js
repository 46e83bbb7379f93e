/* The segment builder: rows of conditions become LeadFlow's filter JSON, with a live count.
 * Options (fields, ops, magnets, forms, segments, stages) come from #builder-options. */
(function () {
  "use strict";
  var root = document.getElementById("builder");
  if (!root) { return; }
  var opts = JSON.parse(document.getElementById("builder-options").textContent);
  var output = document.getElementById("definition");
  var rowsBox = root.querySelector("[data-rows]");
  var matchSel = root.querySelector("[data-match]");
  var advanced = document.getElementById("advanced");
  var result = document.getElementById("preview");
  var csrf = document.querySelector("[name=csrfmiddlewaretoken]").value;

  var OP_LABELS = {eq: "is", neq: "is not", contains: "contains", not_contains: "does not contain",
    starts_with: "starts with", "in": "is one of", not_in: "is none of", exists: "is set", not_exists: "is not set",
    gt: ">", gte: "≥", lt: "<", lte: "≤", between: "between", before: "before", after: "after",
    more_than_days_ago: "more than N days ago", less_than_days_ago: "less than N days ago"};
  var TYPES = [
    ["field", "Profile field"], ["trait", "Trait"], ["company_trait", "Company trait"],
    ["stage", "Lifecycle stage"], ["source", "Source channel"],
    ["performed", "Did an event"], ["not_performed", "Did not do an event"], ["visited", "Visited a page"],
    ["magnet", "Downloaded a lead magnet"], ["form", "Submitted a form"], ["email_clicked", "Clicked an email"],
    ["consent", "Consent"], ["in_segment", "In segment"], ["not_in_segment", "Not in segment"]];

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") { node.textContent = attrs[k]; } else { node.setAttribute(k, attrs[k]); }
    });
    (children || []).forEach(function (c) { node.appendChild(c); });
    return node;
  }
  function select(name, choices, value) {
    var s = el("select", {"data-k": name, "aria-label": name});
    choices.forEach(function (c) {
      var v = Array.isArray(c) ? c[0] : c, label = Array.isArray(c) ? c[1] : c;
      var o = el("option", {value: v, text: label});
      if (String(v) === String(value)) { o.selected = true; }
      s.appendChild(o);
    });
    return s;
  }
  function input(name, value, attrs) {
    var i = el("input", Object.assign({"data-k": name, "aria-label": name}, attrs || {}));
    if (value !== undefined && value !== null) { i.value = value; }
    return i;
  }
  function kindOf(field) {
    var kinds = ["text", "number", "date", "owner"];
    for (var i = 0; i < kinds.length; i++) { if (opts.fields[kinds[i]].indexOf(field) >= 0) { return kinds[i]; } }
    if (opts.fields.company.indexOf(field) >= 0 || opts.fields.touch.indexOf(field) >= 0) { return "text"; }
    return "json";
  }
  function opChoices(kind) { return opts.ops[kind].map(function (o) { return [o, OP_LABELS[o] || o]; }); }
  function countBits(c) {
    c = c || {};
    return [select("count_op", [["gte", "at least"], ["lte", "at most"], ["eq", "exactly"]], c.op || "gte"),
            input("count", c.value || 1, {type: "number", min: "0", "class": "short"}), el("span", {text: "times"})];
  }
  function windowBits(days) {
    return [el("span", {text: "in the last"}), input("within_days", days || "", {type: "number", min: "1", "class": "short", placeholder: "any"}),
            el("span", {text: "days"})];
  }

  function fieldBits(type, state) {
    state = state || {};
    var bits = [];
    var field;
    if (type === "field") {
      var all = [].concat(opts.fields.text, opts.fields.number, opts.fields.date, opts.fields.owner, opts.fields.company, opts.fields.touch);
      field = state.field || "title";
      bits.push(select("field", all, field));
    } else {
      field = state.field || "";
      bits.push(input("name", state.name || "", {placeholder: type === "trait" ? "trait name, e.g. industry" : "company trait, e.g. employees"}));
    }
    var kind = type === "field" ? kindOf(field) : "json";
    bits.push(select("op", opChoices(kind), state.op || "eq"));
    var v = state.value;
    if (Array.isArray(v) && state.op === "between") {
      bits.push(input("value", v[0]), el("span", {text: "and"}), input("value2", v[1]));
    } else {
      bits.push(input("value", Array.isArray(v) ? v.join(", ") : (v === undefined ? "" : v), {placeholder: "value"}));
      if (state.op === "between") { bits.push(el("span", {text: "and"}), input("value2", "")); }
    }
    return bits;
  }

  function bitsFor(type, state) {
    state = state || {};
    switch (type) {
      case "field": case "trait": case "company_trait": return fieldBits(type, state);
      case "stage": return [select("op", [["eq", "is"], ["neq", "is not"]], state.op), select("value", opts.stages.map(function (s) { return [s.value, s.label]; }), state.value)];
      case "source": return [select("op", [["eq", "is"], ["neq", "is not"]], state.op), select("value", opts.channels.map(function (c) { return [c.value, c.label]; }), state.value)];
      case "performed": return [input("event", state.event, {placeholder: "event name, e.g. Webinar Attended"})].concat(countBits(state.count), windowBits(state.within_days));
      case "not_performed": return [input("event", state.event, {placeholder: "event name"})].concat(windowBits(state.within_days));
      case "visited": return [input("url", state.url || "/pricing*", {placeholder: "/pricing*"})].concat(countBits(state.count), windowBits(state.within_days));
      case "magnet": return [select("slug", [["", "any lead magnet"]].concat(opts.magnets.map(function (m) { return [m.slug, m.name]; })), state.slug)].concat(windowBits(state.within_days));
      case "form": return [select("slug", [["", "any form"]].concat(opts.forms.map(function (f) { return [f.slug, f.name]; })), state.slug)].concat(windowBits(state.within_days));
      case "email_clicked": return [input("slug", state.slug, {placeholder: "campaign (empty: any)"})].concat(windowBits(state.within_days));
      case "consent": return [input("topic", state.topic || "marketing", {placeholder: "topic"}), select("status", [["granted", "granted"], ["withdrawn", "withdrawn"], ["none", "never given"]], state.status)];
      case "in_segment": case "not_in_segment": return [select("slug", opts.segments.map(function (s) { return [s.slug, s.name]; }), state.slug)];
    }
    return [];
  }

  function addRow(type, state, negate) {
    var row = el("div", {"class": "cond-row"});
    var typeSel = select("type", TYPES, type);
    var body = el("span", {"class": "cond-body"});
    bitsFor(type, state).forEach(function (b) { body.appendChild(b); });
    var neg = el("label", {"class": "inline small"}, [input("negate", null, {type: "checkbox"}), el("span", {text: "exclude"})]);
    if (negate) { neg.querySelector("input").checked = true; }
    var remove = el("button", {type: "button", "class": "small", "aria-label": "remove condition", text: "✕"});
    row.appendChild(typeSel); row.appendChild(body); row.appendChild(neg); row.appendChild(remove);
    typeSel.addEventListener("change", function () {
      body.innerHTML = ""; bitsFor(typeSel.value, {}).forEach(function (b) { body.appendChild(b); }); changed();
    });
    body.addEventListener("change", function (e) {
      var kind = typeSel.value;
      if ((kind === "field" || kind === "trait" || kind === "company_trait") &&
          (e.target.getAttribute("data-k") === "field" || e.target.getAttribute("data-k") === "op")) {
        var st = readRow(row).state; body.innerHTML = "";
        bitsFor(typeSel.value, st).forEach(function (b) { body.appendChild(b); });
      }
      changed();
    });
    body.addEventListener("input", changed);  // typing updates the count without leaving the field
    neg.addEventListener("change", changed);
    remove.addEventListener("click", function () { row.remove(); changed(); });
    rowsBox.appendChild(row);
  }

  function val(row, k) { var n = row.querySelector("[data-k='" + k + "']"); return n ? (n.type === "checkbox" ? n.checked : n.value) : undefined; }
  function typed(text) {
    var t = String(text).trim();
    if (/^-?\d+(\.\d+)?$/.test(t)) { return Number(t); }
    if (t === "true" || t === "false") { return t === "true"; }
    return t;
  }
  function days(row) { var d = val(row, "within_days"); return d ? {within_days: Number(d)} : {}; }
  function count(row) { return {count: {op: val(row, "count_op"), value: Number(val(row, "count") || 0)}}; }

  function readRow(row) {
    var type = val(row, "type"), cond, state = {};
    if (type === "field" || type === "trait" || type === "company_trait") {
      var field = type === "field" ? val(row, "field") : (type === "trait" ? "traits." : "company.traits.") + val(row, "name").trim();
      var op = val(row, "op"), raw = val(row, "value");
      cond = {field: field, op: op};
      if (op === "between") { cond.value = [typed(raw), typed(val(row, "value2") || "")]; }
      else if (op === "in" || op === "not_in") { cond.value = raw.split(",").map(function (p) { return typed(p); }).filter(function (p) { return p !== ""; }); }
      else if (op === "more_than_days_ago" || op === "less_than_days_ago") { cond.value = Number(raw); }
      else if (op !== "exists" && op !== "not_exists") { cond.value = kindOf(field) === "text" || kindOf(field) === "owner" ? raw : typed(raw); }
      state = {field: val(row, "field"), name: val(row, "name"), op: op, value: cond.value};
    } else if (type === "stage") { cond = {field: "lifecycle_stage", op: val(row, "op"), value: val(row, "value")}; }
    else if (type === "source") { cond = {field: "source_channel", op: val(row, "op"), value: val(row, "value")}; }
    else if (type === "performed") { cond = Object.assign({performed: val(row, "event")}, count(row), days(row)); }
    else if (type === "not_performed") { cond = Object.assign({not_performed: val(row, "event")}, days(row)); }
    else if (type === "visited") { cond = Object.assign({visited: val(row, "url")}, count(row), days(row)); }
    else if (type === "magnet") { cond = Object.assign({magnet_downloaded: val(row, "slug") || null}, days(row)); }
    else if (type === "form") { cond = Object.assign({form_submitted: val(row, "slug") || null}, days(row)); }
    else if (type === "email_clicked") { cond = Object.assign({email_clicked: val(row, "slug") || null}, days(row)); }
    else if (type === "consent") { cond = {consent: val(row, "topic"), status: val(row, "status")}; }
    else if (type === "in_segment") { cond = {in_segment: val(row, "slug")}; }
    else if (type === "not_in_segment") { cond = {not_in_segment: val(row, "slug")}; }
    if (val(row, "negate")) { cond = {not: cond}; }
    return {cond: cond, state: state};
  }

  function build() {
    var conds = Array.prototype.map.call(rowsBox.querySelectorAll(".cond-row"), function (r) { return readRow(r).cond; });
    var def = {version: 1};
    def[matchSel.value] = conds;
    return def;
  }

  /* Load a saved filter into rows; anything the rows cannot show stays in the JSON editor. */
  function rowFor(c) {
    var negate = false;
    if (c.not) { negate = true; c = c.not; }
    if (c.field === "lifecycle_stage" && (c.op === "eq" || c.op === "neq")) { return ["stage", c, negate]; }
    if (c.field === "source_channel" && (c.op === "eq" || c.op === "neq")) { return ["source", c, negate]; }
    if (c.field && c.field.indexOf("company.traits.") === 0) { return ["company_trait", {name: c.field.slice(15), op: c.op, value: c.value}, negate]; }
    if (c.field && c.field.indexOf("traits.") === 0) { return ["trait", {name: c.field.slice(7), op: c.op, value: c.value}, negate]; }
    if (c.field) { return ["field", c, negate]; }
    if (c.performed && !(c.where || []).length && !c.between) { return ["performed", {event: c.performed, count: c.count, within_days: c.within_days}, negate]; }
    if (c.not_performed && !(c.where || []).length && !c.between) { return ["not_performed", {event: c.not_performed, within_days: c.within_days}, negate]; }
    if (c.visited && !c.between) { return ["visited", {url: c.visited, count: c.count, within_days: c.within_days}, negate]; }
    if ("magnet_downloaded" in c && !c.count && !c.between) { return ["magnet", {slug: c.magnet_downloaded, within_days: c.within_days}, negate]; }
    if ("form_submitted" in c && !c.count && !c.between) { return ["form", {slug: c.form_submitted, within_days: c.within_days}, negate]; }
    if ("email_clicked" in c && !c.count && !c.between) { return ["email_clicked", {slug: c.email_clicked, within_days: c.within_days}, negate]; }
    if (c.consent) { return ["consent", {topic: c.consent, status: c.status}, negate]; }
    if (c.in_segment) { return ["in_segment", {slug: c.in_segment}, negate]; }
    if (c.not_in_segment) { return ["not_in_segment", {slug: c.not_in_segment}, negate]; }
    return null;
  }
  function load(def) {
    var key = def && def.any ? "any" : "all";
    var list = def ? def[key] : null;
    if (!list) { return false; }
    var rows = list.map(rowFor);
    if (rows.some(function (r) { return r === null; })) { return false; }
    matchSel.value = key;
    rows.forEach(function (r) { addRow(r[0], r[1], r[2]); });
    return true;
  }

  var timer = null, seq = 0, jsonMode = false;
  function changed() {
    if (!jsonMode) { output.value = JSON.stringify(build()); advanced.value = JSON.stringify(build(), null, 2); }
    clearTimeout(timer);
    timer = setTimeout(preview, 350);
  }
  function preview() {
    var mine = ++seq;
    result.textContent = "Counting…";
    fetch(root.getAttribute("data-preview-url"), {method: "POST", body: output.value || "null",
      headers: {"Content-Type": "application/json", "X-CSRFToken": csrf}, credentials: "same-origin"})
      .then(function (r) { return r.json(); })
      .then(function (data) {
        if (mine !== seq) { return; }
        result.innerHTML = "";
        if (data.error) {
          result.appendChild(el("p", {"class": "error", role: "alert", text: (data.path ? data.path + ": " : "") + data.error}));
          return;
        }
        result.appendChild(el("p", {"class": "count", "data-testid": "preview-count",
          text: (data.estimated ? "about " : "") + data.count + " contact" + (data.count === 1 ? "" : "s") + " match"}));
        result.appendChild(el("p", {"class": "muted small", text: data.estimated
          ? "estimated from " + data.sampled + " contacts (95%: " + data.count_low + "–" + data.count_high +
            ") in " + Math.round(data.sql_ms) + " ms; saving the segment counts exactly"
          : "counted in " + Math.round(data.sql_ms) + " ms"}));
        var list = el("ul", {"class": "plain"});
        data.sample.forEach(function (c) { list.appendChild(el("li", {text: (c.name || c.email || ("contact " + c.id)) + (c.company ? " · " + c.company : "")})); });
        result.appendChild(list);
      })
      .catch(function () { result.textContent = "Could not count right now."; });
  }

  root.querySelector("[data-add]").addEventListener("click", function () {
    addRow(root.querySelector("[data-new-type]").value, {}, false); changed();
  });
  matchSel.addEventListener("change", changed);
  advanced.addEventListener("input", function () {
    jsonMode = true; output.value = advanced.value; clearTimeout(timer); timer = setTimeout(preview, 350);
  });

  var initial = null;
  try { initial = output.value ? JSON.parse(output.value) : null; } catch (e) { initial = null; }
  if (initial && !load(initial)) {
    jsonMode = true; advanced.value = JSON.stringify(initial, null, 2);
    document.getElementById("advanced-box").open = true;
    root.querySelector("[data-rows-note]").hidden = false;
  } else if (!initial) {
    addRow("field", {field: "engagement_score", op: "gte", value: 40}, false);
  }
  if (!jsonMode) { changed(); } else { preview(); }
  var typeChoices = root.querySelector("[data-new-type]");
  TYPES.forEach(function (t) { typeChoices.appendChild(el("option", {value: t[0], text: t[1]})); });
})();
