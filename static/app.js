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
    // Inside a grid (the similar strip) the arrows move between thumbnails instead.
    if (document.activeElement && document.activeElement.closest(".grid")) return;
    var rel = event.key === "ArrowLeft" ? "prev" : event.key === "ArrowRight" ? "next" : null;
    var link = rel && document.querySelector("a[rel=" + rel + "][data-arrow]");
    if (link) { window.location = link.href; }
  });

  // Close buttons: <button data-close=".picker"> removes its closest such element (an
  // attribute and not onclick="...": the CSP allows no inline script).
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-close]");
    var target = button && button.closest(button.getAttribute("data-close"));
    if (target) target.remove();
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

  // Upload: one pick-or-drop area; each file one row with a preview, a progress bar (XHR upload
  // events), then the server's answer and live indexing status; one line above the rows counts
  // the batch ("3 of 45 indexed"), and indexed rows shrink to a line.
  // The server keeps 255 characters of a file's name and reads about 1 KB of a part's
  // headers: a longer name is shortened here (its extension kept) rather than refused there.
  function uploadName(name) {
    var chars = Array.from(name);
    if (chars.length <= 150) return name;
    var dot = name.lastIndexOf(".");
    var extension = dot > 0 && name.length - dot <= 10 ? name.slice(dot) : "";
    return chars.slice(0, 150 - Array.from(extension).length).join("") + extension;
  }

  function uploadInit(zone) {
    var input = document.getElementById(zone.getAttribute("data-input"));
    var list = document.getElementById(zone.getAttribute("data-list"));
    var progress = document.getElementById(zone.getAttribute("data-progress"));
    var form = input.form;
    var counts = { sent: 0, indexed: 0, refused: 0, waiting: 0 };
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
      // With JS the files went already; the plain form is for those without it.
      if (!input.files.length) event.preventDefault();
    });

    function count() {
      var parts = [counts.indexed + " of " + counts.sent + " indexed"];
      if (counts.waiting) parts.push(counts.waiting + " waiting for the model");
      if (counts.refused) parts.push(counts.refused + " refused");
      progress.textContent = parts.join(" · ");
      progress.hidden = false;
    }

    function send(file) {
      var row = document.createElement("li");
      var preview = document.createElement("img");
      preview.alt = "";
      // A HEIC from a phone is an image the browser may not show: the server's JPEG replaces it.
      var shown = /^image\/(jpeg|png|webp|gif|bmp|avif)$/.test(file.type);
      if (shown) preview.src = URL.createObjectURL(file);
      var body = document.createElement("div");
      var name = document.createElement("div");
      name.className = "name";
      name.textContent = file.name;
      var bar = document.createElement("progress");
      bar.max = 100; bar.value = 0;
      bar.setAttribute("aria-label", "Uploading " + file.name);
      var status = document.createElement("div");
      status.className = "status muted";
      status.textContent = "uploading…";
      body.append(name, bar, status);
      row.append(preview, body);
      list.append(row);
      counts.sent += 1;
      count();

      var maxBytes = Number(zone.getAttribute("data-max-bytes")) || 0;
      var tooLarge = file.name + " is " + (file.size / 1e6).toFixed(1) + " MB; the limit is " +
        zone.getAttribute("data-limit") + " per image";
      if (maxBytes && file.size > maxBytes) {
        // Refused here: sending it would only be answered 413 after the whole upload.
        refuse(row, status, bar, tooLarge);
        return;
      }
      var data = new FormData();
      data.append("file", file, uploadName(file.name));
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
        try { answer = JSON.parse(xhr.responseText); } catch (e) { answer = { error: answerReason(xhr.status, tooLarge) }; }
        bar.value = 100;
        if (xhr.status >= 400 || answer.error) {
          refuse(row, status, bar, answer.error || "refused");
          return;
        }
        status.className = "status";
        status.innerHTML = "";
        if (!shown && answer.thumbnail_url) preview.src = answer.thumbnail_url;
        var link = document.createElement("a");
        link.href = answer.url;
        link.textContent = answer.message;
        status.append(link);
        if (answer.status_url) poll(answer.status_url, row, status, bar);
      });
      xhr.addEventListener("error", function () {
        refuse(row, status, bar, "the upload failed: the connection was lost");
      });
      xhr.send(data);
    }

    function refuse(row, status, bar, reason) {
      row.classList.add("refused");
      status.className = "status error";
      status.textContent = reason;
      bar.remove();
      counts.sent -= 1;
      counts.refused += 1;
      count();
    }

    // A status without a JSON body (a proxy in front of the site answered) in plain words.
    function answerReason(code, tooLarge) {
      if (code === 413) return tooLarge;
      if (code === 429) return "too many uploads in a short time; wait a minute and try again";
      if (code >= 500) return "the server failed (" + code + "); try again in a minute";
      return "the server answered " + code;
    }

    // Each row's last known state, so the batch line counts every file once.
    function settle(row, state) {
      var before = row.getAttribute("data-state");
      if (before === state) return;
      if (before === "ready") counts.indexed -= 1;
      if (before === "blocked") counts.waiting -= 1;
      if (state === "ready") counts.indexed += 1;
      if (state === "blocked") counts.waiting += 1;
      row.setAttribute("data-state", state);
      row.classList.toggle("done", state === "ready");
      count();
    }

    function poll(url, row, status, bar) {
      var badge = document.createElement("span");
      badge.className = "badge";
      status.append(" ", badge);
      var tick = function () {
        fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
          .then(function (r) { return r.json(); })
          .then(function (s) {
            badge.textContent = s.label;
            badge.className = "badge " + s.state;
            badge.title = s.reason || "";
            settle(row, s.state);
            if (s.state === "pending") { setTimeout(tick, 1500); return; }
            bar.remove();
            // Waiting for the model can end (an admin provides the weights): keep asking, slower.
            if (s.state === "blocked") setTimeout(tick, 10000);
          })
          .catch(function () { setTimeout(tick, 5000); });
      };
      tick();
    }
  }

  // A <select data-remember="key"> keeps its last choice in this browser (the upload's
  // visibility: chosen once, not before every batch).
  function rememberInit(select) {
    var key = "remember:" + select.getAttribute("data-remember");
    try {
      var kept = window.localStorage.getItem(key);
      if (kept && select.querySelector("option[value='" + kept + "']")) select.value = kept;
    } catch (e) { /* storage refused (private mode): the default stands */ }
    select.addEventListener("change", function () {
      try { window.localStorage.setItem(key, select.value); } catch (e) { /* not kept */ }
    });
  }

  // Search with an image from the search bar: the camera button picks a file, and an image
  // dropped or pasted on the search field is sent the same way, through the bar's image form
  // (a plain POST to the search-by-image page, which redirects to its results).
  function imageQueryInit(form) {
    var input = form.querySelector("input[type=file]");
    var field = document.querySelector("[data-slash-focus]");
    var pick = document.querySelector("[data-image-pick]");
    function isImage(file) { return file && (file.type.indexOf("image/") === 0 || /\.hei[cf]$/i.test(file.name)); }
    function go() {
      var model = document.getElementById("top-model");
      if (model) {
        var action = new URL(form.action, window.location.href);
        action.searchParams.set("model", model.value);
        form.action = action.toString();
      }
      if (pick) pick.classList.add("busy");
      form.submit();
    }
    function sendFiles(files) {
      var file = Array.prototype.find.call(files || [], isImage);
      if (!file) return false;
      var transfer = new DataTransfer();
      transfer.items.add(file);
      input.files = transfer.files;
      go();
      return true;
    }
    if (pick) pick.addEventListener("click", function () { input.click(); });
    input.addEventListener("change", function () { if (input.files.length) go(); });
    if (!field) return;
    var box = field.closest("form") || field;
    ["dragenter", "dragover"].forEach(function (name) {
      box.addEventListener(name, function (event) {
        if (event.dataTransfer && Array.prototype.indexOf.call(event.dataTransfer.types, "Files") >= 0) {
          event.preventDefault();
          box.classList.add("dragover");
        }
      });
    });
    ["dragleave", "drop"].forEach(function (name) {
      box.addEventListener(name, function () { box.classList.remove("dragover"); });
    });
    box.addEventListener("drop", function (event) {
      if (!event.dataTransfer || !event.dataTransfer.files.length) return;  // dropped text
      // A file that is not an image is ignored rather than opened in place of the site.
      event.preventDefault();
      sendFiles(event.dataTransfer.files);
    });
    field.addEventListener("paste", function (event) {
      if (event.clipboardData && sendFiles(event.clipboardData.files)) event.preventDefault();
    });
  }

  // <select data-autosubmit> sends its form when changed (its Apply button is for no-JS only).
  document.addEventListener("change", function (event) {
    var select = event.target.closest && event.target.closest("select[data-autosubmit]");
    if (select && select.form) select.form.requestSubmit();
  });

  // A save picker that would run past the right edge of the screen opens leftwards instead.
  document.addEventListener("htmx:afterSettle", function () {
    document.querySelectorAll(".picker:not(.picker-end)").forEach(function (picker) {
      if (picker.getBoundingClientRect().right > document.documentElement.clientWidth - 4) {
        picker.classList.add("picker-end");
      }
    });
  });

  // Day headers: a page appended by "Older images" / "More results" starts with the header of
  // its first day, which the page above may already end with; the repeat goes.
  document.addEventListener("htmx:afterSettle", function () {
    var previous = null;
    document.querySelectorAll(".day-header").forEach(function (header) {
      if (previous && previous.dataset.day === header.dataset.day) {
        var section = header.closest("section");
        header.remove();
        if (section && section.previousElementSibling && section.previousElementSibling.matches("section")) {
          var grid = section.querySelector(".grid");
          var above = section.previousElementSibling.querySelector(".grid");
          if (grid && above) { while (grid.firstChild) above.appendChild(grid.firstChild); section.remove(); }
        }
        return;
      }
      previous = header;
    });
  });

  // Selection mode: a checkbox per card (signed in), shift-click ticks a range, and a bar that
  // saves the selection to a collection or deletes it, one POST each. The checkboxes belong to
  // the bar's form (form="selection"), which works without this script (a plain post and a
  // redirect back); here the bar shows only while something is ticked and answers in place.
  function selectionInit(bar) {
    var last = null;
    bar.querySelector("[data-selection-summary]").innerHTML = "<span data-selection-count>0</span> selected";
    var count = bar.querySelector("[data-selection-count]");
    var message = bar.querySelector("[data-selection-message]");
    var remove = bar.querySelector("[data-selection-delete]");
    function boxes() { return Array.prototype.slice.call(document.querySelectorAll("input[data-select]")); }
    function chosen() { return boxes().filter(function (b) { return b.checked; }); }
    function refresh() {
      var picked = chosen();
      bar.hidden = picked.length === 0 && !message.textContent;
      document.body.classList.toggle("selecting", picked.length > 0);
      count.textContent = picked.length;
      // Delete is offered only when every selected image is one's own (the server checks too).
      remove.hidden = !picked.length || !picked.every(function (b) { return b.hasAttribute("data-own"); });
      boxes().forEach(function (b) { b.closest(".result").classList.toggle("selected", b.checked); });
    }
    function ticked(box, shift) {
      if (shift && last && last !== box && document.contains(last)) {
        var all = boxes();
        var from = all.indexOf(last), to = all.indexOf(box);
        all.slice(Math.min(from, to), Math.max(from, to) + 1).forEach(function (b) { b.checked = box.checked; });
      }
      last = box;
      message.textContent = "";
      refresh();
    }
    document.addEventListener("click", function (event) {
      var box = event.target.closest("input[data-select]");
      if (box) { ticked(box, event.shiftKey); return; }
      // While selecting, a click on a thumbnail ticks it rather than opening the image.
      var thumb = event.target.closest(".result .thumb");
      var own = thumb && thumb.closest(".result").querySelector("input[data-select]");
      if (own && (document.body.classList.contains("selecting") || event.shiftKey)) {
        event.preventDefault();
        own.checked = !own.checked;
        ticked(own, event.shiftKey);
      }
    });
    function send(url, data, button, done) {
      button.disabled = true;
      fetch(url, { method: "POST", body: data, credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) { return r.json().catch(function () { return { error: "the server answered " + r.status }; }); })
        .then(function (answer) {
          message.className = "selection-message " + (answer.error ? "error" : "success");
          message.textContent = answer.error || answer.message;
          if (!answer.error) done(answer);
        })
        .catch(function () { message.className = "selection-message error"; message.textContent = "the connection was lost; try again"; })
        .then(function () { button.disabled = false; refresh(); });
    }
    function save(button) {
      send(bar.action, new FormData(bar), button, function (answer) {
        var select = bar.querySelector("select[name=collection_id]");
        var name = bar.querySelector("[name=new_name]");
        if (name.value && select && !select.querySelector("option[value='" + answer.collection.id + "']")) {
          select.add(new Option(answer.collection.name, answer.collection.id, true, true));
        }
        name.value = "";
        var link = document.createElement("a");
        link.href = answer.collection.url;
        link.textContent = "open";
        message.append(" ", link);
      });
    }
    function removeChosen() {
      var picked = chosen();
      if (!window.confirm("Delete " + picked.length + " image" + (picked.length === 1 ? "" : "s") + "? This cannot be undone.")) return;
      var data = new FormData();
      data.append("csrfmiddlewaretoken", bar.querySelector("[name=csrfmiddlewaretoken]").value);
      picked.forEach(function (b) { data.append("image_id", b.value); });
      send(remove.formAction, data, remove, function (answer) {
        answer.deleted.forEach(function (id) {
          var card = document.querySelector(".result[data-image-id='" + id + "']");
          if (card) card.remove();
        });
      });
    }
    bar.addEventListener("submit", function (event) {
      event.preventDefault();
      // Enter in the name field submits with the first button, Save.
      if (event.submitter === remove) removeChosen();
      else save(bar.querySelector("button[type=submit]"));
    });
    // Clear is the form's reset button; the boxes are unticked once the reset has run.
    bar.addEventListener("reset", function () {
      message.textContent = "";
      setTimeout(refresh, 0);
    });
    // Escape leaves selection mode (after closing a picker, which the handler above does).
    document.addEventListener("keydown", function (event) {
      if (event.key === "Escape" && document.body.classList.contains("selecting")) bar.reset();
    });
    bar.setAttribute("data-enhanced", "");
    // Boxes the browser ticked again on back/forward show the bar at once.
    refresh();
  }

  // Collection page: a move or a removal redraws every card (the server sends the new order),
  // so a note still being typed on another card would be lost; it is carried over, unsaved.
  var unsavedNotes = null;
  document.addEventListener("htmx:beforeSwap", function (event) {
    var target = event.detail.target;
    if (!target || target.id !== "collection-items") return;
    unsavedNotes = {};
    target.querySelectorAll("textarea[name=note]").forEach(function (box) {
      if (box.value !== box.defaultValue) unsavedNotes[box.id] = box.value;
    });
  });
  document.addEventListener("htmx:afterSettle", function () {
    if (!unsavedNotes) return;
    Object.keys(unsavedNotes).forEach(function (id) {
      var box = document.getElementById(id);
      if (box) box.value = unsavedNotes[id];
    });
    unsavedNotes = null;
  });

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-remember]").forEach(rememberInit);
    document.querySelectorAll("[data-dropzone]").forEach(uploadInit);
    document.querySelectorAll("form#image-search").forEach(imageQueryInit);
    document.querySelectorAll("[data-selection-bar]").forEach(selectionInit);
  });
  // Result and browse grids: arrow keys move the focus between thumbnails (up and down by the
  // number of columns the layout shows now), Home and End to the first and last, so a grid of
  // sixty results is not sixty Tab presses.
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || event.shiftKey) return;
    var current = document.activeElement;
    if (!current || !current.matches(".grid a.thumb")) return;
    var links = Array.prototype.slice.call(document.querySelectorAll(".grid a.thumb"));
    var index = links.indexOf(current);
    // Columns: the thumbnails on the first row of this grid (its last row may be short).
    var own = Array.prototype.slice.call(current.closest(".grid").querySelectorAll("a.thumb"));
    var top = own[0].getBoundingClientRect().top;
    var columns = own.filter(function (link) {
      return Math.abs(link.getBoundingClientRect().top - top) < 2;
    }).length || 1;
    var target = {
      ArrowLeft: index - 1, ArrowRight: index + 1,
      ArrowUp: index - columns, ArrowDown: index + columns,
      Home: 0, End: links.length - 1,
    }[event.key];
    if (target === undefined) return;
    event.preventDefault();
    var next = links[Math.max(0, Math.min(links.length - 1, target))];
    next.focus();
    next.scrollIntoView({ block: "nearest" });
  });
})();

// === Issue 23, items 5-8: copy a text element (the new API token) ===========================
// <button data-copy-text="#element-id"> copies the element's text and says "Copied" on the
// button and in its status line; without clipboard access the text is selected instead.
(function () {
  "use strict";
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy-text]");
    if (!button) return;
    var source = document.querySelector(button.getAttribute("data-copy-text"));
    if (!source) return;
    var status = document.getElementById(button.getAttribute("aria-describedby") || "");
    var select = function () {
      var range = document.createRange();
      range.selectNodeContents(source);
      var selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
    };
    var done = function () {
      button.textContent = "Copied";
      if (status) status.textContent = "Copied to the clipboard.";
    };
    var fallback = function () {
      select();
      try {
        if (document.execCommand("copy")) { done(); return; }
      } catch (e) { /* left selected for the person to copy */ }
      if (status) status.textContent = "Selected: press Ctrl+C (⌘C) to copy.";
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(source.textContent.trim()).then(done, fallback);
    } else {
      fallback();
    }
  });
})();

// === Issue 24, part 5: a saved search's owner pins and hides results ========================
// The card's pin and hide buttons (and the Hidden list's "Show again") are plain forms that
// post and come back to the page; here they are sent in the background instead: a pinned
// card moves to the end of the pinned group at the top, a hidden one leaves the grid for the
// Hidden list, and the status line offers to undo the hide.
(function () {
  "use strict";
  var removed = {}; // image id -> where a card hidden on this page stood, to put it back

  function say(text, undo) {
    var line = document.getElementById("smart-status");
    if (!line) return;
    line.textContent = text;
    if (!undo) return;
    var button = document.createElement("button");
    button.type = "button";
    button.textContent = "Undo";
    button.addEventListener("click", function () { line.textContent = ""; undo(); });
    line.append(" ", button);
  }

  // One request per form at a time; the button says it is working (aria-busy) but keeps its
  // focus, which disabling it would lose.
  function post(form, override, done) {
    if (form.getAttribute("data-busy")) return;
    var data = new FormData(form);
    if (override) data.set(override[0], override[1]);
    var button = form.querySelector("button");
    form.setAttribute("data-busy", "1");
    if (button) button.setAttribute("aria-busy", "true");
    fetch(form.action, { method: "POST", body: data, credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.json().catch(function () { return { error: "the server answered " + r.status }; }); })
      .then(function (answer) { if (answer.error) say(answer.error); else done(answer); })
      .catch(function () { say("The connection was lost; try again."); })
      .then(function () {
        form.removeAttribute("data-busy");
        if (button) button.removeAttribute("aria-busy");
      });
  }

  function setPinned(card, on) {
    card.classList.toggle("pinned", on);
    var form = card.querySelector("form[data-smart=pin]");
    var button = form.querySelector("button");
    form.querySelector("[name=pinned]").value = on ? "0" : "1";
    button.setAttribute("aria-pressed", on ? "true" : "false");
    button.title = on ? "Unpin: list it among the matches again" : "Pin to the top of this saved search";
    var badge = card.querySelector(".pin-badge");
    if (on && !badge) {
      badge = document.createElement("span");
      badge.className = "badge pin-badge";
      badge.title = "Pinned: listed first";
      badge.textContent = "pinned";
      card.querySelector(".card-meta").prepend(badge);
    } else if (!on && badge) {
      badge.remove();
    }
  }

  // Pinned cards lead the grid; a card pinned or unpinned goes just after the others.
  function placeAfterPinned(card) {
    var grid = card.parentNode;
    var pinned = Array.prototype.filter.call(grid.querySelectorAll(":scope > .result.pinned"), function (c) { return c !== card; });
    if (pinned.length) pinned[pinned.length - 1].after(card);
    else grid.prepend(card);
  }

  function hiddenCount(delta) {
    var list = document.getElementById("smart-hidden");
    if (!list) return;
    var count = list.querySelector("[data-smart-hidden-count]");
    var n = Math.max(0, parseInt(count.textContent, 10) + delta);
    count.textContent = String(n);
    list.hidden = n === 0;
  }

  // The Hidden list's row for a card just hidden: its thumbnail, name and "Show again".
  function listHidden(card, hideForm) {
    var list = document.querySelector("#smart-hidden .smart-hidden-list");
    if (!list) return;
    var img = card.querySelector(".thumb img");
    var row = document.createElement("li");
    row.setAttribute("data-image-id", card.getAttribute("data-image-id"));
    var thumb = document.createElement("img");
    thumb.src = img.src;
    thumb.alt = "";
    thumb.width = 48;
    thumb.height = 48;
    var name = document.createElement("span");
    name.className = "smart-hidden-name";
    name.textContent = name.title = img.alt;
    var form = document.createElement("form");
    form.method = "post";
    form.action = hideForm.action;
    form.className = "inline";
    form.setAttribute("data-smart", "unhide");
    form.append(hideForm.querySelector("[name=csrfmiddlewaretoken]").cloneNode());
    var flag = document.createElement("input");
    flag.type = "hidden";
    flag.name = "hidden";
    flag.value = "0";
    var button = document.createElement("button");
    button.type = "submit";
    button.textContent = "Show again";
    button.setAttribute("aria-label", "Show " + img.alt.slice(0, 60) + " again");
    form.append(flag, button);
    row.append(thumb, name, form);
    list.prepend(row);
    hiddenCount(1);
  }

  function unlistHidden(id) {
    var row = document.querySelector("#smart-hidden li[data-image-id='" + id + "']");
    if (row) { row.remove(); hiddenCount(-1); }
  }

  // Put a card hidden on this page back where it stood; false when it was not on this page.
  function restore(id) {
    var place = removed[id];
    if (!place) return false;
    delete removed[id];
    if (place.next && place.next.parentNode === place.parent) place.parent.insertBefore(place.card, place.next);
    else place.parent.append(place.card);
    return place.card;
  }

  function pin(form) {
    var card = form.closest(".result");
    var on = form.querySelector("[name=pinned]").value !== "0";
    post(form, null, function () {
      setPinned(card, on);
      placeAfterPinned(card);
      form.querySelector("button").focus();
      say(on ? "Pinned to the top." : "Unpinned.");
    });
  }

  function hide(form) {
    var card = form.closest(".result");
    var id = card.getAttribute("data-image-id");
    var wasPinned = card.classList.contains("pinned");
    post(form, null, function () {
      var next = card.nextElementSibling;
      removed[id] = { card: card, parent: card.parentNode, next: card.nextSibling };
      card.remove();
      listHidden(card, form);
      say("Hidden from this saved search.", function () {
        // Hiding a pinned card unpinned it; undoing pins it again (which also shows it).
        var undoForm = wasPinned ? card.querySelector("form[data-smart=pin]") : form;
        post(undoForm, wasPinned ? ["pinned", "1"] : ["hidden", "0"], function () {
          unlistHidden(id);
          var back = restore(id);
          if (back) back.querySelector(".thumb").focus();
          say("Shown again.");
        });
      });
      // Keyboard users carry on from the next card (or the Undo, after the last one).
      var focus = (next && next.querySelector(".thumb")) || document.querySelector("#smart-status button");
      if (focus) focus.focus();
    });
  }

  function unhide(form) {
    var row = form.closest("li");
    var id = row.getAttribute("data-image-id");
    post(form, null, function () {
      unlistHidden(id);
      var back = restore(id);
      // Hiding unpinned it: it comes back among the matches, after the pinned cards.
      if (back && back.classList.contains("pinned")) { setPinned(back, false); placeAfterPinned(back); }
      say(back ? "Shown again." : "Shown again: it is back among the matches when the page is next opened.");
    });
  }

  document.addEventListener("submit", function (event) {
    var form = event.target.closest("form[data-smart]");
    if (!form) return;
    event.preventDefault();
    var kind = form.getAttribute("data-smart");
    if (kind === "pin") pin(form);
    else if (kind === "hide") hide(form);
    else unhide(form);
  });
})();
