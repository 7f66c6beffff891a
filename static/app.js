/* Small behaviours htmx does not cover. No build step: plain ES2017, loaded with defer. */
(function () {
  "use strict";

  // "/" focuses the search field, unless the person is typing somewhere already.
  document.addEventListener("keydown", function (event) {
    if (event.key !== "/" || event.ctrlKey || event.metaKey || event.altKey) return;
    var tag = (document.activeElement && document.activeElement.tagName) || "";
    if (/^(INPUT|TEXTAREA|SELECT)$/.test(tag) || document.activeElement.isContentEditable) return;
    var field = document.querySelector("[data-slash-focus]");
    if (field) { event.preventDefault(); field.focus(); field.select(); }
  });

  // Escape closes an open collection picker or menu.
  document.addEventListener("keydown", function (event) {
    if (event.key !== "Escape") return;
    document.querySelectorAll(".picker").forEach(function (p) { p.remove(); });
    document.querySelectorAll("details.menu[open]").forEach(function (d) { d.open = false; });
  });

  // Image page: arrow keys move to the previous / next image.
  document.addEventListener("keydown", function (event) {
    var tag = (document.activeElement && document.activeElement.tagName) || "";
    if (/^(INPUT|TEXTAREA|SELECT)$/.test(tag)) return;
    var rel = event.key === "ArrowLeft" ? "prev" : event.key === "ArrowRight" ? "next" : null;
    var link = rel && document.querySelector("a[rel=" + rel + "][data-arrow]");
    if (link) { window.location = link.href; }
  });

  // Copy-link buttons: <button data-copy="#input-id">.
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (!button) return;
    var field = document.querySelector(button.getAttribute("data-copy"));
    if (!field) return;
    var done = function () { button.textContent = "Copied"; };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(field.value).then(done, function () { field.select(); });
    } else {
      field.select();
      try { document.execCommand("copy"); done(); } catch (e) { /* selected for the person */ }
    }
  });

  // Upload: a drop zone that also takes a click; each file one row with a preview, a progress
  // bar (XHR upload events), then the server's answer and live indexing status.
  function uploadInit(zone) {
    var input = document.getElementById(zone.getAttribute("data-input"));
    var list = document.getElementById(zone.getAttribute("data-list"));
    var form = input.form;
    zone.addEventListener("click", function () { input.click(); });
    zone.addEventListener("keydown", function (event) {
      if (event.key === "Enter" || event.key === " ") { event.preventDefault(); input.click(); }
    });
    ["dragenter", "dragover"].forEach(function (name) {
      zone.addEventListener(name, function (event) { event.preventDefault(); zone.classList.add("dragover"); });
    });
    ["dragleave", "drop"].forEach(function (name) {
      zone.addEventListener(name, function () { zone.classList.remove("dragover"); });
    });
    zone.addEventListener("drop", function (event) {
      event.preventDefault();
      Array.prototype.forEach.call(event.dataTransfer.files, send);
    });
    input.addEventListener("change", function () {
      Array.prototype.forEach.call(input.files, send);
      input.value = "";
    });
    form.addEventListener("submit", function (event) {
      // With JS the files went already; the button stays for those without it.
      if (!input.files.length) event.preventDefault();
    });

    function send(file) {
      var row = document.createElement("li");
      var preview = document.createElement("img");
      preview.alt = "";
      if (file.type.indexOf("image/") === 0) preview.src = URL.createObjectURL(file);
      var body = document.createElement("div");
      var name = document.createElement("div");
      name.className = "name";
      name.textContent = file.name;
      var bar = document.createElement("progress");
      bar.max = 100; bar.value = 0;
      bar.setAttribute("aria-label", "Uploading " + file.name);
      var status = document.createElement("div");
      status.className = "status muted";
      status.setAttribute("role", "status");
      status.textContent = "uploading…";
      body.append(name, bar, status);
      row.append(preview, body);
      list.append(row);

      var data = new FormData();
      data.append("file", file);
      data.append("visibility", form.querySelector("[name=visibility]").value);
      data.append("csrfmiddlewaretoken", form.querySelector("[name=csrfmiddlewaretoken]").value);
      var xhr = new XMLHttpRequest();
      xhr.open("POST", form.action);
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.addEventListener("progress", function (event) {
        if (event.lengthComputable) bar.value = Math.round(100 * event.loaded / event.total);
      });
      xhr.addEventListener("load", function () {
        var answer = {};
        try { answer = JSON.parse(xhr.responseText); } catch (e) { answer = { error: "the server answered " + xhr.status }; }
        bar.value = 100;
        if (xhr.status >= 400 || answer.error) {
          row.classList.add("refused");
          status.className = "status error";
          status.textContent = answer.error || "refused";
          bar.remove();
          return;
        }
        status.className = "status";
        status.innerHTML = "";
        var link = document.createElement("a");
        link.href = answer.url;
        link.textContent = answer.message;
        status.append(link);
        if (answer.status_url) poll(answer.status_url, status, bar);
      });
      xhr.addEventListener("error", function () {
        status.className = "status error";
        status.textContent = "the upload failed: the connection was lost";
      });
      xhr.send(data);
    }

    function poll(url, status, bar) {
      var badge = document.createElement("span");
      badge.className = "badge";
      status.append(" ", badge);
      var tick = function () {
        fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
          .then(function (r) { return r.json(); })
          .then(function (s) {
            badge.textContent = s.label;
            badge.className = "badge " + s.state;
            if (s.state === "pending") setTimeout(tick, 1500);
            else bar.remove();
          })
          .catch(function () { setTimeout(tick, 5000); });
      };
      tick();
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-dropzone]").forEach(uploadInit);
  });
})();
