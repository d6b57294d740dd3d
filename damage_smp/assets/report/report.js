/* damage-smp report: a little vanilla JavaScript, no libraries, no network.
 *
 * Gallery overlays are painted on <canvas> from class-index masks that ship as zlib-compressed bytes inside
 * small script files beside the page (report_files/masks/NNNN.js, loaded on demand with <script src>, which
 * works from file:// in Chromium and Firefox). The masks are never read back from a canvas or an <img>: that
 * would taint the canvas from file:// and is randomised by anti-fingerprinting modes; they are inflated with
 * DecompressionStream and written with putImageData. Confidence maps (predict --save prob,uncertainty) travel
 * the same way (report_files/conf/NNNN.js, 8-bit levels) and are coloured by a lookup that the page data holds.
 */
(function () {
  "use strict";
  var dataEl = document.getElementById("report-data");
  if (!dataEl) return;
  var DATA = JSON.parse(dataEl.textContent);
  initSortableTables();
  if (DATA.kind === "gallery") initGallery(DATA);

  // ------------------------------------------------------------------------------------ sortable tables
  function initSortableTables() {
    var tables = document.querySelectorAll("table.sortable");
    Array.prototype.forEach.call(tables, function (table) {
      var heads = table.tHead ? table.tHead.rows[0].cells : [];
      Array.prototype.forEach.call(heads, function (th, col) {
        th.tabIndex = 0;
        th.title = "Sort by " + th.textContent.trim();
        var go = function () { sortTable(table, col, th); };
        th.addEventListener("click", go);
        th.addEventListener("keydown", function (e) {
          if (e.key === "Enter" || e.key === " ") { e.preventDefault(); go(); }
        });
      });
    });
  }

  function sortTable(table, col, th) {
    var body = table.tBodies[0];
    var asc = th.getAttribute("aria-sort") !== "ascending";
    Array.prototype.forEach.call(th.parentNode.cells, function (c) { c.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    var rows = Array.prototype.slice.call(body.rows);
    var key = function (row) {
      var cell = row.cells[col];
      if (!cell) return "";
      var raw = cell.getAttribute("data-value");
      var num = raw === null || raw === "" ? NaN : Number(raw);
      return isNaN(num) ? cell.textContent.trim().toLowerCase() : num;
    };
    rows.sort(function (a, b) {
      var x = key(a), y = key(b);
      var xn = typeof x === "number", yn = typeof y === "number";
      if (xn !== yn) return xn ? -1 : 1; // numbers before blanks/text, whatever the direction
      var r = x < y ? -1 : x > y ? 1 : 0;
      return asc ? r : -r;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }

  // ------------------------------------------------------------------------------------ gallery
  function initGallery(D) {
    var grid = document.getElementById("grid");
    var cards = Array.prototype.slice.call(grid.querySelectorAll(".card"));
    var byIndex = {};
    cards.forEach(function (card) { byIndex[card.getAttribute("data-i")] = card; });
    var drawOn = D.classes.map(function (c) { return !!c.draw; });
    var version = 0;
    var shown = new Set(); // cards near the viewport: the only ones with a painted canvas

    // ---- masks (and confidence maps): script chunks -> inflated bytes, a small LRU of decoded ones
    var chunkData = {}, confData = {}, decoded = new Map(), LRU = 48;
    window.DSMP_MASKS = function (chunk, masks) { chunkData[chunk] = masks; };
    window.DSMP_CONF = function (chunk, maps) { confData[chunk] = maps; };

    function chunkLoader(pattern, store) {
      var promises = {};
      return function (c) {
        if (!promises[c]) {
          promises[c] = new Promise(function (resolve, reject) {
            var s = document.createElement("script");
            s.src = pattern.replace("{}", ("000" + c).slice(-4));
            s.onload = function () { store[c] ? resolve(store[c]) : reject(new Error("empty " + s.src)); };
            s.onerror = function () { reject(new Error("cannot load " + s.src)); };
            document.head.appendChild(s);
          });
        }
        return promises[c];
      };
    }
    var loadChunk = chunkLoader(D.chunk, chunkData), loadConf = D.conf ? chunkLoader(D.conf, confData) : null;

    function inflate(b64) {
      var bin = atob(b64), bytes = new Uint8Array(bin.length);
      for (var k = 0; k < bin.length; k++) bytes[k] = bin.charCodeAt(k);
      var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
      return new Response(stream).arrayBuffer().then(function (buf) { return new Uint8Array(buf); });
    }

    function unpack(e) { return inflate(e[2]).then(function (idx) { return { w: e[0], h: e[1], idx: idx }; }); }

    function cached(key, make) {
      var hit = decoded.get(key);
      if (hit) { decoded.delete(key); decoded.set(key, hit); return hit; }
      var p = make();
      decoded.set(key, p);
      if (decoded.size > LRU) decoded.delete(decoded.keys().next().value);
      return p;
    }

    function maskOf(i) {
      return cached(i, function () { return loadChunk(D.scans[i].m).then(function (masks) { return unpack(masks[i]); }); });
    }

    // what a canvas shows: "classes" (the class mask) or a confidence map ("prob", "uncertainty"; null: none)
    function layerOf(i, which) {
      if (which === "classes") return maskOf(i);
      if (!(D.scans[i].c >= 0)) return Promise.resolve(null);
      return cached(i + ":" + which, function () {
        return loadConf(D.scans[i].c).then(function (maps) {
          var e = maps[i] && maps[i][which];
          return e ? unpack(e) : null;
        });
      });
    }

    var LUTS = {}; // confidence map -> 256 RGBA colours of its levels (computed in Python from a colour map)
    (D.layers || []).forEach(function (l) {
      var bin = atob(l.lut), lut = new Uint32Array(256), b = new Uint8Array(lut.buffer);
      for (var k = 0; k < 256; k++) {
        b[4 * k] = bin.charCodeAt(3 * k); b[4 * k + 1] = bin.charCodeAt(3 * k + 1);
        b[4 * k + 2] = bin.charCodeAt(3 * k + 2); b[4 * k + 3] = 255;
      }
      LUTS[l.kind] = lut;
    });

    function palette(on) {
      var pal = new Uint32Array(256), b = new Uint8Array(pal.buffer);
      D.classes.forEach(function (c, k) {
        if (!on[k]) return;
        b[4 * k] = parseInt(c.color.slice(1, 3), 16);
        b[4 * k + 1] = parseInt(c.color.slice(3, 5), 16);
        b[4 * k + 2] = parseInt(c.color.slice(5, 7), 16);
        b[4 * k + 3] = 255;
      });
      return pal;
    }

    function paint(canvas, m, pal) {
      if (canvas.width !== m.w || canvas.height !== m.h) { canvas.width = m.w; canvas.height = m.h; }
      var ctx = canvas.getContext("2d");
      var img = ctx.createImageData(m.w, m.h), out = new Uint32Array(img.data.buffer), idx = m.idx;
      for (var k = 0; k < idx.length; k++) out[k] = pal[idx[k]];
      ctx.putImageData(img, 0, 0);
    }

    function draw(canvas, m, which, pal) {
      if (!m) { canvas.width = 0; canvas.height = 0; return; } // this scan has no such map: the scan alone
      paint(canvas, m, which === "classes" ? pal : LUTS[which]);
    }

    var pal = palette(drawOn), layer = "classes";
    function drawCard(card) {
      var canvas = card.querySelector("canvas"), v = version, which = layer;
      if (canvas.getAttribute("data-v") === String(v)) return;
      layerOf(Number(card.getAttribute("data-i")), which).then(function (m) {
        if (v !== version || !shown.has(card)) return; // a newer state or scrolled away: that paint wins
        draw(canvas, m, which, pal);
        canvas.setAttribute("data-v", String(v));
      }, function (err) { card.setAttribute("data-error", String(err)); });
    }

    function releaseCard(card) {
      var canvas = card.querySelector("canvas");
      canvas.width = 0; canvas.height = 0; // frees the pixel buffer of scans far from the viewport
      canvas.removeAttribute("data-v");
    }

    function redraw() {
      version += 1;
      pal = palette(drawOn);
      grid.setAttribute("data-version", String(version));
      shown.forEach(drawCard);
    }

    var observer = new IntersectionObserver(function (entries) {
      entries.forEach(function (e) {
        if (e.isIntersecting) { shown.add(e.target); drawCard(e.target); }
        else if (shown.has(e.target)) { shown.delete(e.target); releaseCard(e.target); }
      });
    }, { rootMargin: "600px 0px" });
    cards.forEach(function (card) { observer.observe(card); });
    grid.setAttribute("data-version", "0");

    // ---- class toggles and opacity (the whole gallery)
    var toggles = Array.prototype.slice.call(document.querySelectorAll("#classes input[type=checkbox]"));
    toggles.forEach(function (box) {
      box.addEventListener("change", function () {
        drawOn[Number(box.getAttribute("data-class"))] = box.checked;
        redraw();
      });
    });
    function setAll(on) {
      toggles.forEach(function (box) { box.checked = on; drawOn[Number(box.getAttribute("data-class"))] = on; });
      redraw();
    }
    document.getElementById("all-classes").addEventListener("click", function () { setAll(true); });
    document.getElementById("no-classes").addEventListener("click", function () { setAll(false); });
    // ---- the layer menu (only when the batch saved confidence maps): classes or a colour-mapped map
    function showLayer(scope, which, chips) {
      scope.querySelectorAll(".cbar").forEach(function (bar) { bar.hidden = bar.getAttribute("data-layer") !== which; });
      chips.disabled = which !== "classes"; // class toggles apply to the class mask only
    }
    var layerSel = document.getElementById("layer"), chipBox = document.getElementById("classes");
    if (layerSel) {
      layerSel.addEventListener("change", function () {
        layer = layerSel.value;
        showLayer(document.getElementById("toolbar"), layer, chipBox);
        redraw();
      });
    }
    var opacity = document.getElementById("opacity");
    function applyOpacity() { grid.style.setProperty("--ov", String(Number(opacity.value) / 100)); }
    opacity.addEventListener("input", applyOpacity);
    applyOpacity();

    // ---- sort and filter
    var sortSel = document.getElementById("sort"), fclass = document.getElementById("fclass");
    var fmin = document.getElementById("fmin"), fname = document.getElementById("fname");
    var count = document.getElementById("count");
    var collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });
    function pct(s, k) { var a = s.a[k]; return a ? a[1] : 0; }

    function applySort() {
      var mode = sortSel.value, order = cards.slice();
      var byName = function (a, b) {
        return collator.compare(D.scans[a.getAttribute("data-i")].n, D.scans[b.getAttribute("data-i")].n);
      };
      order.sort(function (a, b) {
        var s = D.scans[a.getAttribute("data-i")], t = D.scans[b.getAttribute("data-i")];
        if (mode === "name") return byName(a, b);
        if (mode === "uncertainty") return t.u - s.u || byName(a, b);
        if (mode.indexOf("class:") === 0) {
          var k = mode.slice(6), r = pct(t, k) - pct(s, k);
          if (r) return r;
        }
        return t.d - s.d || byName(a, b);
      });
      order.forEach(function (card) { grid.appendChild(card); });
    }

    function applyFilter() {
      var k = fclass.value, min = Number(fmin.value) || 0, q = fname.value.trim().toLowerCase(), n = 0;
      cards.forEach(function (card) {
        var s = D.scans[card.getAttribute("data-i")];
        var ok = k === "" ? true : k === "any" ? s.d > min : pct(s, k) > min;
        if (ok && q) ok = s.n.toLowerCase().indexOf(q) >= 0;
        card.hidden = !ok;
        if (ok) n += 1;
      });
      count.textContent = n + " of " + cards.length + " scans shown";
    }
    sortSel.addEventListener("change", applySort);
    [fclass, fmin, fname].forEach(function (el) { el.addEventListener("input", applyFilter); });
    fclass.addEventListener("change", applyFilter);
    applyFilter();

    // ---- the viewer: one scan large, with its own opacity and class toggles
    var dialog = document.getElementById("viewer");
    var vTitle = document.getElementById("viewer-title"), vImg = document.getElementById("viewer-img");
    var vCanvas = document.getElementById("viewer-canvas"), vFrame = document.getElementById("viewer-frame");
    var vOpacity = document.getElementById("viewer-opacity"), vClasses = document.getElementById("viewer-classes");
    var vTable = document.getElementById("viewer-areas"), current = null, vOn = null;
    var vLayer = document.getElementById("viewer-layer"), vWhich = "classes";

    function visibleCards() { return Array.prototype.filter.call(grid.children, function (c) { return !c.hidden; }); }

    function paintViewer() {
      var i = current, which = vWhich;
      layerOf(i, which).then(function (m) {
        if (i !== current || which !== vWhich) return;
        draw(vCanvas, m, which, palette(vOn));
        vCanvas.setAttribute("data-layer", which);
      });
    }

    function openViewer(card) {
      var i = Number(card.getAttribute("data-i")), s = D.scans[i];
      current = i;
      vOn = drawOn.slice();
      vTitle.textContent = s.n;
      vImg.src = s.p;
      vImg.alt = "Scan " + s.n;
      vFrame.style.aspectRatio = s.w + " / " + s.h;
      vFrame.style.width = "min(100%, calc((94vh - 1.2rem) * " + (s.w / s.h).toFixed(5) + "))";
      vOpacity.value = opacity.value;
      vWhich = layer; // the viewer opens on the gallery's layer; its own menu changes only the viewer
      if (vLayer) { vLayer.value = layer; showLayer(dialog, vWhich, vClasses); }
      vCanvas.style.opacity = String(Number(vOpacity.value) / 100);
      vClasses.querySelectorAll(".chip").forEach(function (el) { el.remove(); });
      Object.keys(s.a).sort(function (a, b) { return s.a[b][1] - s.a[a][1]; }).forEach(function (k) {
        var c = D.classes[k], label = document.createElement("label"), box = document.createElement("input");
        var sw = document.createElement("span");
        label.className = "chip";
        box.type = "checkbox";
        box.checked = vOn[k];
        box.setAttribute("data-class", k);
        box.addEventListener("change", function () { vOn[k] = box.checked; paintViewer(); });
        sw.className = "sw";
        sw.style.setProperty("--c", c.color);
        label.appendChild(box);
        label.appendChild(sw);
        label.appendChild(document.createTextNode(c.name));
        vClasses.appendChild(label);
      });
      var areas = card.querySelector("table.areas");
      vTable.innerHTML = areas ? areas.innerHTML : "<caption>no damage found</caption>";
      document.getElementById("viewer-total").innerHTML = card.querySelector(".total").innerHTML;
      paintViewer();
      if (!dialog.open) dialog.showModal();
    }

    function step(delta) {
      var list = visibleCards(), at = list.findIndex(function (c) { return Number(c.getAttribute("data-i")) === current; });
      var next = list[at + delta];
      if (next) openViewer(next);
    }

    grid.addEventListener("click", function (e) {
      var button = e.target.closest("button.open");
      if (button) openViewer(button.closest(".card"));
    });
    if (vLayer) {
      vLayer.addEventListener("change", function () {
        vWhich = vLayer.value;
        showLayer(dialog, vWhich, vClasses);
        paintViewer();
      });
    }
    vOpacity.addEventListener("input", function () { vCanvas.style.opacity = String(Number(vOpacity.value) / 100); });
    document.getElementById("viewer-prev").addEventListener("click", function () { step(-1); });
    document.getElementById("viewer-next").addEventListener("click", function () { step(1); });
    document.getElementById("viewer-close").addEventListener("click", function () { dialog.close(); });
    dialog.addEventListener("keydown", function (e) {
      if (e.target.type === "range") return; // arrows move the slider there
      if (e.key === "ArrowLeft") { e.preventDefault(); step(-1); }
      if (e.key === "ArrowRight") { e.preventDefault(); step(1); }
    });
    dialog.addEventListener("close", function () {
      var card = byIndex[String(current)];
      if (card) card.querySelector("button.open").focus();
    });
  }
})();
