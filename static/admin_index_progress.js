/* The admin's Embedding models page: the Search index column follows a running index build
   (workers.admin.EmbeddingModelAdmin.index_progress_view, every 2 s) and stops asking when
   no build runs. A page that shows an index still to build asks for a while too (30 s), since
   a build queued from this page starts when a worker takes it. Without script, or when the
   endpoint stops answering JSON (signed out), the column keeps what the page was served with
   and its Reload link. */
(function () {
  "use strict";
  var POLL_MS = 2000;
  var WAIT_FOR_START_POLLS = 15;

  function states() {
    return Array.prototype.slice.call(document.querySelectorAll("[data-index-model]"));
  }

  function show(models) {
    models.forEach(function (model) {
      states().forEach(function (state) {
        if (state.getAttribute("data-index-model") !== model.model_id) return;
        state.textContent = model.text;
        state.setAttribute("data-index-status", model.status);
        var reload = state.parentNode.querySelector(".index-reload");
        if (reload && model.status !== "building") reload.remove();
      });
    });
  }

  function start() {
    var shown = states();
    if (!shown.length) return;
    var url = shown[0].getAttribute("data-index-progress-url");
    var statuses = shown.map(function (state) {
      return state.getAttribute("data-index-status");
    });
    var waiting = statuses.some(function (status) {
      return status !== "ready" && status !== "building";
    }) ? WAIT_FOR_START_POLLS : 0;
    if (statuses.indexOf("building") < 0 && !waiting) return;

    function poll() {
      fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (response) {
          if (!response.ok) throw new Error("index progress: HTTP " + response.status);
          return response.json();
        })
        .then(function (data) {
          show(data.models);
          waiting = data.building ? 0 : waiting - 1;
          if (data.building || waiting > 0) window.setTimeout(poll, POLL_MS);
        })
        .catch(function () {
          /* Leave the page as served: its Reload link still works. */
        });
    }
    window.setTimeout(poll, POLL_MS);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
