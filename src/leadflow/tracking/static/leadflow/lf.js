/* LeadFlow tracking script: anonymous id, page views with UTM and referrer, identify/track, forms.
 *
 * <script src="https://leadflow.example.com/t/lf.js" data-write-key="lfw_..." async></script>
 * <div data-leadflow-form="WORKSPACE/FORM"></div>   (embeds that hosted form, linked to the visitor)
 */
(function () {
  "use strict";
  var script = document.currentScript ||
    document.querySelector('script[src*="/t/lf.js"]');
  if (!script || window.leadflow && window.leadflow.loaded) { return; }
  var host = script.getAttribute("data-host") || new URL(script.src, location.href).origin;
  var writeKey = script.getAttribute("data-write-key") || "";
  var YEAR = 365 * 24 * 3600;

  function uuid() {
    if (window.crypto && crypto.randomUUID) { return crypto.randomUUID(); }
    return "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx".replace(/[xy]/g, function (c) {
      var r = Math.random() * 16 | 0; return (c === "x" ? r : (r & 3 | 8)).toString(16);
    });
  }
  function cookie(name, value) {
    if (value === undefined) {
      var m = document.cookie.match(new RegExp("(?:^|; )" + name + "=([^;]*)"));
      return m ? decodeURIComponent(m[1]) : "";
    }
    document.cookie = name + "=" + encodeURIComponent(value) + "; path=/; max-age=" + YEAR + "; SameSite=Lax";
    return value;
  }
  function store(name, value) {
    try {
      if (value === undefined) { return localStorage.getItem(name) || ""; }
      if (value === null) { localStorage.removeItem(name); } else { localStorage.setItem(name, value); }
    } catch (e) { /* storage blocked */ }
    return value || "";
  }

  var anonymousId = cookie("lf_aid") || store("lf_aid") || uuid();
  cookie("lf_aid", anonymousId); store("lf_aid", anonymousId);
  var userId = store("lf_uid");

  var UTM = { utm_source: "source", utm_medium: "medium", utm_campaign: "name", utm_term: "term",
              utm_content: "content" };
  function campaign() {
    var params = new URLSearchParams(location.search), found = {}, any = false;
    Object.keys(UTM).forEach(function (key) {
      if (params.get(key)) { found[UTM[key]] = params.get(key); any = true; }
    });
    try {
      if (any) { sessionStorage.setItem("lf_campaign", JSON.stringify(found)); return found; }
      var kept = sessionStorage.getItem("lf_campaign");
      return kept ? JSON.parse(kept) : null;
    } catch (e) { return any ? found : null; }
  }
  function context() {
    var ctx = {
      page: { url: location.href, path: location.pathname, search: location.search,
              referrer: document.referrer, title: document.title },
      userAgent: navigator.userAgent, locale: navigator.language,
      library: { name: "leadflow.js", version: "1" }
    };
    try { ctx.timezone = Intl.DateTimeFormat().resolvedOptions().timeZone; } catch (e) { /* old browser */ }
    var c = campaign();
    if (c) { ctx.campaign = c; }
    return ctx;
  }
  function send(message) {
    if (!writeKey) { return; }
    var now = new Date().toISOString();
    message.messageId = uuid();
    message.anonymousId = anonymousId;
    if (userId) { message.userId = userId; }
    message.timestamp = now;
    message.sentAt = now;
    message.context = context();
    message.writeKey = writeKey;
    var body = JSON.stringify(message);
    // text/plain keeps the request "simple": no CORS preflight.
    if (window.fetch) {
      fetch(host + "/v1/" + message.type, { method: "POST", body: body, keepalive: true,
        headers: { "Content-Type": "text/plain" }, credentials: "omit" }).catch(function () {});
    } else if (navigator.sendBeacon) {
      navigator.sendBeacon(host + "/v1/" + message.type, body);
    }
  }

  var api = {
    loaded: true,
    anonymousId: function () { return anonymousId; },
    page: function (name, properties) {
      send({ type: "page", name: name || "", properties: properties || {} });
    },
    track: function (event, properties) {
      send({ type: "track", event: event, properties: properties || {} });
    },
    identify: function (id, traits) {
      if (id && typeof id === "object") { traits = id; id = ""; }
      if (id) { userId = String(id); store("lf_uid", userId); }
      send({ type: "identify", traits: traits || {} });
    },
    reset: function () {
      userId = ""; store("lf_uid", null);
      anonymousId = uuid(); cookie("lf_aid", anonymousId); store("lf_aid", anonymousId);
    },
    embedForms: function () {
      var nodes = document.querySelectorAll("[data-leadflow-form]");
      Array.prototype.forEach.call(nodes, function (node) {
        if (node.getAttribute("data-leadflow-embedded")) { return; }
        node.setAttribute("data-leadflow-embedded", "1");
        var ref = node.getAttribute("data-leadflow-form").split("/");
        var params = new URLSearchParams({ embed: "1", aid: anonymousId, page: location.href,
                                           referrer: document.referrer });
        var c = campaign() || {};
        Object.keys(UTM).forEach(function (key) { if (c[UTM[key]]) { params.set(key, c[UTM[key]]); } });
        var frame = document.createElement("iframe");
        frame.src = host + "/f/" + encodeURIComponent(ref[0]) + "/" + encodeURIComponent(ref[1]) +
          "/?" + params.toString();
        frame.title = node.getAttribute("data-title") || "Form";
        frame.style.cssText = "width:100%;border:0;min-height:420px";
        frame.setAttribute("loading", "lazy");
        node.appendChild(frame);
        window.addEventListener("message", function (e) {
          if (e.source === frame.contentWindow && e.data && e.data.leadflowFormHeight) {
            frame.style.height = (e.data.leadflowFormHeight + 8) + "px";
          }
        });
      });
    }
  };
  window.leadflow = api;
  if (script.getAttribute("data-auto-page") !== "false") { api.page(); }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", api.embedForms);
  } else {
    api.embedForms();
  }
})();
