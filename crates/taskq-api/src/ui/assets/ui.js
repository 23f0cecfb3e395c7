// taskq dashboard: keyboard navigation and selection helpers. No inline script is
// allowed by the page's Content-Security-Policy, so everything is wired here.
(function () {
  "use strict";
  function rows() {
    return Array.prototype.slice.call(document.querySelectorAll("tr[data-href]"));
  }
  document.addEventListener("keydown", function (e) {
    var t = e.target;
    var typing = t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT");
    if (e.key === "/" && !typing) {
      var s = document.getElementById("search");
      if (s) { e.preventDefault(); s.focus(); s.select(); }
      return;
    }
    if (typing || e.altKey || e.ctrlKey || e.metaKey) { return; }
    var list = rows();
    if (!list.length) { return; }
    var i = list.indexOf(document.activeElement);
    if (e.key === "j" || e.key === "ArrowDown") {
      e.preventDefault();
      list[Math.min(i + 1, list.length - 1)].focus();
    } else if (e.key === "k" || e.key === "ArrowUp") {
      e.preventDefault();
      list[Math.max(i - 1, 0)].focus();
    } else if (e.key === "Enter" && i >= 0) {
      window.location.href = list[i].getAttribute("data-href");
    } else if (e.key === "x" && i >= 0) {
      var box = list[i].querySelector("input[type=checkbox]");
      if (box) { box.checked = !box.checked; }
    }
  });
  document.addEventListener("change", function (e) {
    var t = e.target;
    if (t && t.id === "select-all") {
      var boxes = document.querySelectorAll("input[name=ids]");
      for (var j = 0; j < boxes.length; j++) { boxes[j].checked = t.checked; }
    }
  });
})();
