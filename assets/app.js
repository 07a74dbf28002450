// The "processing your authorization" page: polls the subscription (with the session cookie) until the binding
// is decided, then reloads so that the server renders the outcome. No framework, no third-party code.
(function () {
  "use strict";
  var el = document.querySelector("[data-poll]");
  if (!el) { return; }
  var url = el.getAttribute("data-poll");
  var delay = 500;
  var tries = 0;
  function poll() {
    tries += 1;
    fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" }, cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (v) {
        var status = v && v.binding ? v.binding.status : null;
        if (status && status !== "pending") {
          window.location.reload();
          return;
        }
        schedule();
      })
      .catch(schedule);
  }
  function schedule() {
    // Quick at first, then at most every 5 s; a reload after a while in case the page itself changed.
    delay = Math.min(5000, Math.round(delay * 1.5));
    if (tries > 120) { window.location.reload(); return; }
    window.setTimeout(poll, delay);
  }
  window.setTimeout(poll, delay);
})();
