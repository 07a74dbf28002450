// The operator console: live countdowns of pending timers and retries, and the service clock in the footer.
// Service time may run scaled (demos, black-box tests): the page carries the service clock's `now` when it was
// rendered and its scale, and service time goes on from there at that scale. No framework, no third-party code.
(function () {
  "use strict";
  var body = document.body;
  var renderedNow = Date.parse(body.getAttribute("data-now") || "");
  var scale = parseFloat(body.getAttribute("data-scale") || "1");
  if (isNaN(renderedNow)) { return; }
  if (!isFinite(scale) || scale < 0) { scale = 1; }
  var loadedAt = Date.now();

  function serviceNow() {
    return renderedNow + (Date.now() - loadedAt) * scale;
  }

  // "4m 12s", "2h 5m", "3d 4h": the two largest units, like the server renders it.
  function span(ms) {
    var s = Math.floor(Math.abs(ms) / 1000);
    var d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    s = s % 60;
    if (d > 0) { return d + "d " + h + "h"; }
    if (h > 0) { return h + "h " + m + "m"; }
    if (m > 0) { return m + "m " + s + "s"; }
    return s + "s";
  }

  function remaining(due, now) {
    var ms = due - now;
    if (ms >= 0) { return "in " + span(ms); }
    return "due " + span(ms) + " ago";
  }

  function pad(n) { return (n < 10 ? "0" : "") + n; }

  function clockText(t) {
    var d = new Date(t);
    return d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) + " " +
      pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) + ":" + pad(d.getUTCSeconds()) + " UTC";
  }

  var countdowns = Array.prototype.slice.call(document.querySelectorAll(".countdown[data-due]")).map(function (el) {
    return { el: el, due: Date.parse(el.getAttribute("data-due")) };
  }).filter(function (c) { return !isNaN(c.due); });
  var clocks = Array.prototype.slice.call(document.querySelectorAll("[data-clock]"));

  function tick() {
    var now = serviceNow();
    countdowns.forEach(function (c) {
      var text = remaining(c.due, now);
      if (c.el.textContent !== text) { c.el.textContent = text; }
      c.el.classList.toggle("overdue", c.due <= now);
    });
    clocks.forEach(function (el) { el.textContent = clockText(now); });
  }

  tick();
  if (scale > 0) {
    // Fast enough that a scaled clock's seconds show; a real clock's second changes at most every 250 ms anyway.
    window.setInterval(tick, 250);
  }
})();
