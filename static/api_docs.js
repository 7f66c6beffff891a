/* /api/docs: what Swagger UI's markup lacks for keyboard and screen-reader users, added as it
   renders (it re-renders parts as operations open, so a MutationObserver keeps at it):
   - each parameter's <select> gets the parameter's name as its accessible name;
   - the deep link inside an operation's toggle button loses its href (a link inside a button
     is two controls in one, and Swagger UI cancels its clicks anyway; the button still opens
     the operation and puts its deep link in the address bar);
   - a scrolling code example can be reached with the keyboard to scroll it. */
(function () {
  "use strict";
  var root = document.getElementById("swagger-ui");
  if (!root) return;
  function fix() {
    root.querySelectorAll("tr[data-param-name] select:not([aria-label])").forEach(function (s) {
      var row = s.closest("tr[data-param-name]");
      s.setAttribute("aria-label", row.getAttribute("data-param-name"));
    });
    root.querySelectorAll(".opblock-summary-control a[href]").forEach(function (a) {
      a.removeAttribute("href");
    });
    root.querySelectorAll("pre.microlight:not([tabindex])").forEach(function (pre) {
      pre.setAttribute("tabindex", "0");
      pre.setAttribute("aria-label", "Example");
    });
  }
  new MutationObserver(fix).observe(root, { childList: true, subtree: true });
  fix();
})();
