/* attnlens explorer: draws the attention weights embedded in this page.
 *
 * The page carries a JSON header (#ax-header) and the weights as base64 of deflated bytes
 * (#ax-data); see viz/explorer.py for the layout. Nothing is fetched: the data are inflated with
 * the browser's DecompressionStream and every view is drawn on one canvas, from images made once
 * per matrix (one pixel per cell), so a 1,000-token matrix costs a drawImage per frame, not a
 * million DOM nodes. The text view is the exception: one element per token.
 */
(function () {
  "use strict";

  var root = document.getElementById("ax-root");
  var VIEWS = [
    ["head", "One head"],
    ["heads", "Heads of a layer"],
    ["grid", "Layers \u00d7 heads"],
    ["mean", "Head mean"],
    ["rollout", "Rollout"],
    ["text", "Text"],
  ];
  var FONT = 'system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif';
  var MAX_CELL = 46; // px: short inputs get readable cells, not a wall of colour
  var ANNOTATE_CELL = 30; // px: cells at least this big show their weight as text
  var LOG_DECADES = 4; // the log colour scale spans max / 10^4 .. max; smaller weights are darkest
  var LABEL_CHARS = 16; // longer tokens are cut with an ellipsis on the axes (full text on hover)

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (key) {
        if (key === "text") node.textContent = attrs[key];
        else if (key === "className") node.className = attrs[key];
        else node.setAttribute(key, attrs[key]);
      });
    }
    (children || []).forEach(function (child) { node.appendChild(child); });
    return node;
  }

  function fail(message) {
    root.dataset.ready = "error";
    root.dataset.error = message;
    root.innerHTML = "";
    root.appendChild(el("div", { className: "ax-error", text: "The attention explorer could not start: " + message }));
  }

  // ------------------------------------------------------------------------------------------
  // data

  function base64Bytes(text) {
    var binary = atob(text.replace(/\s+/g, ""));
    var bytes = new Uint8Array(binary.length);
    for (var i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes;
  }

  function inflate(bytes) {
    if (typeof DecompressionStream === "undefined") {
      return Promise.reject(new Error("this browser has no DecompressionStream (Chrome 80+, Firefox 113+, Safari 16.4+ have it)"));
    }
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Response(stream).arrayBuffer().then(function (buffer) { return new Uint8Array(buffer); });
  }

  function Section(meta, raw, bits) {
    this.meta = meta;
    this.L = meta.layers;
    this.H = meta.heads;
    this.nq = meta.nq;
    this.nk = meta.nk;
    this.n = meta.nq * meta.nk;
    var offset = meta.codes[0], count = meta.codes[1];
    if (bits === 16) {
      // Two planes, high bytes then low bytes (they deflate better apart).
      var codes = new Uint16Array(count);
      for (var i = 0; i < count; i++) codes[i] = (raw[offset + i] << 8) | raw[offset + count + i];
      this.codes = codes;
    } else {
      this.codes = raw.subarray(offset, offset + count);
    }
    this.mask = meta.mask ? raw.subarray(meta.mask[0], meta.mask[0] + meta.mask[1]) : null;
    this.maxCodes = {};
    this.labelWidths = null;
  }
  Section.prototype.headIndex = function (layer, head) { return layer * this.H + head; };
  Section.prototype.meanIndex = function (layer) { return this.L * this.H + layer; };
  Section.prototype.rolloutIndex = function (layer) { return this.L * this.H + this.L + layer; };
  Section.prototype.code = function (m, row, col) { return this.codes[m * this.n + row * this.nk + col]; };
  Section.prototype.allowed = function (row, col) { return !this.mask || this.mask[row * this.nk + col] === 1; };
  Section.prototype.maxCode = function (m) {
    if (this.maxCodes[m] === undefined) {
      var best = 0, base = m * this.n, mask = this.mask;
      for (var i = 0; i < this.n; i++) {
        var code = this.codes[base + i];
        if (code > best && (!mask || mask[i] === 1)) best = code;
      }
      this.maxCodes[m] = best;
    }
    return this.maxCodes[m];
  };

  // ------------------------------------------------------------------------------------------
  // state

  var header, sections, values, cmap, maskedRGB, numCodes;
  var state = { section: 0, layer: 0, head: 0, view: "head", scale: "linear", textSource: "head", pinned: null, hoverToken: null };
  var zoom = { k: 1, r0: 0, c0: 0 };
  var hover = null; // what the pointer is over on the canvas
  var layout = null; // the last drawn view's geometry, for hit tests
  var ui = {};

  function sec() { return sections[state.section]; }

  function value(code) { return values[code]; }

  function formatWeight(w) { return w.toFixed(header.bits === 16 ? 6 : 5); }

  function shortLabel(text) {
    return text.length > LABEL_CHARS ? text.slice(0, LABEL_CHARS - 1) + "\u2026" : text;
  }

  function quoted(text) { return "\u201c" + text + "\u201d"; }

  // where a weight (as a share of the colour maximum) sits on the colour axis, 0..1
  function scaled(t) {
    t = Math.min(1, t);
    if (state.scale === "sqrt") return Math.sqrt(t);
    if (state.scale === "log") return t > 0 ? Math.max(0, 1 + Math.log10(t) / LOG_DECADES) : 0;
    return t;
  }

  // the weight at position t (0..1) of the colour axis
  function unscaled(t, top) {
    if (state.scale === "sqrt") return top * t * t;
    if (state.scale === "log") return top * Math.pow(10, -LOG_DECADES * (1 - t));
    return top * t;
  }

  function tickText(w) {
    if (w === 0) return "0";
    if (w >= 0.1) return w.toFixed(2);
    if (w >= 0.001) return w.toFixed(3);
    return w.toExponential(0);
  }

  // colour table: code -> colormap index for a given maximum and scale; cached per key
  var colourTables = {};
  function colourTable(maxCode) {
    var key = maxCode + ":" + state.scale;
    if (!colourTables[key]) {
      var table = new Uint8Array(numCodes);
      var top = value(maxCode) || 1;
      for (var code = 0; code < numCodes; code++) table[code] = Math.round(255 * scaled(value(code) / top));
      colourTables[key] = table;
    }
    return colourTables[key];
  }

  // images: one pixel per cell (or per pooled block); a small LRU keeps memory bounded
  var images = new Map();
  function remember(key, make) {
    if (images.has(key)) {
      var hit = images.get(key);
      images.delete(key);
      images.set(key, hit);
      return hit;
    }
    var made = make();
    images.set(key, made);
    while (images.size > 160) images.delete(images.keys().next().value);
    return made;
  }

  function paint(width, height, fill) {
    var canvas = document.createElement("canvas");
    canvas.width = width;
    canvas.height = height;
    var context = canvas.getContext("2d");
    var image = context.createImageData(width, height);
    fill(image.data);
    context.putImageData(image, 0, 0);
    return canvas;
  }

  function matrixImage(s, m, maxCode) {
    return remember([state.section, m, maxCode, state.scale, "full"].join(":"), function () {
      var table = colourTable(maxCode), base = m * s.n;
      return paint(s.nk, s.nq, function (px) {
        for (var i = 0; i < s.n; i++) {
          var o = 4 * i;
          if (s.mask && s.mask[i] !== 1) {
            px[o] = maskedRGB[0]; px[o + 1] = maskedRGB[1]; px[o + 2] = maskedRGB[2];
          } else {
            var c = 3 * table[s.codes[base + i]];
            px[o] = cmap[c]; px[o + 1] = cmap[c + 1]; px[o + 2] = cmap[c + 2];
          }
          px[o + 3] = 255;
        }
      });
    });
  }

  // A panel smaller than its matrix shows each block's largest weight, so a thin diagonal or a
  // single strong key survives the shrinking instead of averaging away.
  function pooledImage(s, m, width, height, maxCode) {
    if (s.nk <= width && s.nq <= height) return matrixImage(s, m, maxCode);
    width = Math.min(width, s.nk);
    height = Math.min(height, s.nq);
    return remember([state.section, m, maxCode, state.scale, width, height].join(":"), function () {
      var pooled = new Int32Array(width * height).fill(-1), base = m * s.n;
      for (var r = 0; r < s.nq; r++) {
        var rowOut = Math.floor((r * height) / s.nq) * width;
        for (var c = 0; c < s.nk; c++) {
          var i = r * s.nk + c;
          if (s.mask && s.mask[i] !== 1) continue;
          var o = rowOut + Math.floor((c * width) / s.nk);
          var code = s.codes[base + i];
          if (code > pooled[o]) pooled[o] = code;
        }
      }
      var table = colourTable(maxCode);
      return paint(width, height, function (px) {
        for (var i = 0; i < pooled.length; i++) {
          var o = 4 * i;
          if (pooled[i] < 0) {
            px[o] = maskedRGB[0]; px[o + 1] = maskedRGB[1]; px[o + 2] = maskedRGB[2];
          } else {
            var c = 3 * table[pooled[i]];
            px[o] = cmap[c]; px[o + 1] = cmap[c + 1]; px[o + 2] = cmap[c + 2];
          }
          px[o + 3] = 255;
        }
      });
    });
  }

  // ------------------------------------------------------------------------------------------
  // the matrix views (one head, head mean, rollout)

  function currentMatrix() {
    var s = sec();
    if (state.view === "mean") return s.meanIndex(state.layer);
    if (state.view === "rollout") return s.rolloutIndex(state.layer);
    if (state.view === "text") {
      if (state.textSource === "mean") return s.meanIndex(state.layer);
      if (state.textSource === "rollout" && s.meta.self) return s.rolloutIndex(state.layer);
    }
    return s.headIndex(state.layer, state.head);
  }

  function matrixTitle() {
    var s = sec(), layerName = s.meta.layer_names[state.layer];
    var where = "layer " + state.layer + (layerName !== "layer " + state.layer ? " (" + layerName + ")" : "");
    if (state.view === "mean") return where + " \u00b7 mean of " + s.H + " heads";
    if (state.view === "rollout") return "rollout through layers 0\u2013" + state.layer + " (heads averaged, residual 0.5)";
    return where + " \u00b7 head " + state.head;
  }

  function measureLabels(context, labels, prefix) {
    var widest = 0;
    for (var i = 0; i < labels.length; i++) {
      var w = context.measureText((prefix ? "0000 " : "") + shortLabel(labels[i])).width;
      if (w > widest) widest = w;
    }
    return widest;
  }

  function labelStep(cell) {
    var need = Math.ceil(13 / cell);
    var steps = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000];
    for (var i = 0; i < steps.length; i++) if (steps[i] >= need) return steps[i];
    return need;
  }

  function matrixLayout(context, width, height) {
    var s = sec();
    if (!s.labelWidths) {
      context.font = "12px " + FONT;
      s.labelWidths = {
        // with the "12 " index prefix that thinned and hovered labels carry
        q: measureLabels(context, s.meta.tokens_q, true),
        k: measureLabels(context, s.meta.tokens_k, true),
      };
    }
    var left = Math.min(190, Math.max(72, s.labelWidths.q + 14)); // room for the "queries" corner label
    var top = 30 + Math.min(170, Math.max(34, s.labelWidths.k + 12));
    var right = 96;
    var plotW = Math.max(60, width - left - right), plotH = Math.max(60, height - top - 12);
    var base = Math.min(plotW / s.nk, plotH / s.nq, MAX_CELL);
    var maxK = Math.max(1, 40 / base);
    zoom.k = Math.min(Math.max(zoom.k, 1), maxK);
    var cell = base * zoom.k;
    // Zooming magnifies inside the rectangle the whole matrix fills, so the cell under the
    // pointer stays under it and the layout never jumps.
    var cols = Math.min(s.nk, (s.nk * base) / cell), rows = Math.min(s.nq, (s.nq * base) / cell);
    zoom.c0 = Math.min(Math.max(zoom.c0, 0), s.nk - cols);
    zoom.r0 = Math.min(Math.max(zoom.r0, 0), s.nq - rows);
    return {
      kind: "matrix", left: left, top: top, cell: cell, base: base, maxK: maxK, rows: rows, cols: cols,
      plotW: cols * cell, plotH: rows * cell, width: width, height: Math.min(height, top + rows * cell + 12),
    };
  }

  function drawColorbar(context, x, y, h, maxCode, label) {
    var top = value(maxCode);
    for (var i = 0; i < h; i++) {
      var t = 1 - i / (h - 1);
      var c = 3 * Math.round(255 * t);
      context.fillStyle = "rgb(" + cmap[c] + "," + cmap[c + 1] + "," + cmap[c + 2] + ")";
      context.fillRect(x, y + i, 14, 1.5);
    }
    context.strokeStyle = "#8a93a3";
    context.lineWidth = 1;
    context.strokeRect(x + 0.5, y + 0.5, 14, h - 1);
    context.fillStyle = "#2a3240";
    context.font = "11px " + FONT;
    context.textAlign = "left";
    context.textBaseline = "middle";
    [0, 0.25, 0.5, 0.75, 1].forEach(function (t) {
      var w = unscaled(t, top);
      var yy = y + (1 - t) * (h - 1);
      context.fillRect(x + 14, Math.round(yy), 4, 1);
      context.fillText((state.scale === "log" && t === 0 ? "\u2264 " : "") + tickText(w), x + 21, yy);
    });
    context.textBaseline = "bottom";
    context.fillText(label, x - 2, y - 6);
    if (sec().mask) {
      context.fillStyle = header.masked_color;
      context.fillRect(x, y + h + 12, 14, 10);
      context.fillStyle = "#2a3240";
      context.textBaseline = "middle";
      context.fillText("masked", x + 21, y + h + 17);
    }
  }

  function drawMatrixView(context, width, height) {
    var s = sec(), m = currentMatrix(), maxCode = s.maxCode(m);
    var g = matrixLayout(context, width, height);
    layout = g;
    layout.m = m;
    var image = matrixImage(s, m, maxCode);
    // Averaging when shrinking (more cells than pixels), hard edges when enlarging (cells).
    context.imageSmoothingEnabled = g.cell < 1;
    context.drawImage(image, zoom.c0, zoom.r0, g.cols, g.rows, g.left, g.top, g.plotW, g.plotH);
    context.imageSmoothingEnabled = true;
    context.strokeStyle = "#8a93a3";
    context.lineWidth = 1;
    context.strokeRect(g.left - 0.5, g.top - 0.5, g.plotW + 1, g.plotH + 1);

    // title and the axis names in the corner
    context.fillStyle = "#1d2430";
    context.font = "600 14px " + FONT;
    context.textAlign = "left";
    context.textBaseline = "top";
    context.fillText(matrixTitle(), 2, 4);
    context.font = "11px " + FONT;
    context.fillStyle = "#6a7384";
    context.textAlign = "right";
    context.textBaseline = "bottom";
    context.fillText("keys \u2192", g.left - 6, g.top - 10);
    context.fillText("queries \u2193", g.left - 6, g.top - 24);

    // token labels of the visible rows and columns
    var stepQ = labelStep(g.cell), fontPx = stepQ === 1 ? Math.max(9, Math.min(13, Math.floor(g.cell * 0.72))) : 10;
    context.font = fontPx + "px " + FONT;
    context.fillStyle = "#2a3240";
    var hr = hover && hover.kind === "cell" ? hover.row : -1, hc = hover && hover.kind === "cell" ? hover.col : -1;
    var r0 = Math.floor(zoom.r0), r1 = Math.min(s.nq, Math.ceil(zoom.r0 + g.rows));
    context.textAlign = "right";
    context.textBaseline = "middle";
    for (var r = r0; r < r1; r++) {
      if (r % stepQ !== 0 || r === hr) continue;
      var y = g.top + (r - zoom.r0 + 0.5) * g.cell;
      if (y < g.top || y > g.top + g.plotH) continue; // a row cut by the edge of a zoomed view
      context.fillText((stepQ > 1 ? r + " " : "") + shortLabel(s.meta.tokens_q[r]), g.left - 6, y);
    }
    var c0 = Math.floor(zoom.c0), c1 = Math.min(s.nk, Math.ceil(zoom.c0 + g.cols));
    context.textAlign = "left";
    for (var c = c0; c < c1; c++) {
      if (c % stepQ !== 0 || c === hc) continue;
      var x = g.left + (c - zoom.c0 + 0.5) * g.cell;
      if (x < g.left || x > g.left + g.plotW) continue;
      context.save();
      context.translate(x, g.top - 6);
      context.rotate(-Math.PI / 2);
      context.fillText((stepQ > 1 ? c + " " : "") + shortLabel(s.meta.tokens_k[c]), 0, 0);
      context.restore();
    }
    if (hr >= 0) {
      // the hovered row and column: outline them and always label them, even between thinned labels
      context.strokeStyle = "rgba(255,255,255,0.9)";
      context.lineWidth = 1;
      var yTop = g.top + (hr - zoom.r0) * g.cell, xLeft = g.left + (hc - zoom.c0) * g.cell;
      context.strokeRect(g.left, yTop, g.plotW, g.cell);
      context.strokeRect(xLeft, g.top, g.cell, g.plotH);
      context.strokeStyle = "#e4572e";
      context.lineWidth = 2;
      context.strokeRect(xLeft - 1, yTop - 1, g.cell + 2, g.cell + 2);
      context.font = "600 12px " + FONT;
      context.fillStyle = "#c2410c";
      context.textAlign = "right";
      context.fillText(hr + " " + shortLabel(s.meta.tokens_q[hr]), g.left - 6, yTop + g.cell / 2);
      context.save();
      context.translate(xLeft + g.cell / 2, g.top - 6);
      context.rotate(-Math.PI / 2);
      context.textAlign = "left";
      context.fillText(hc + " " + shortLabel(s.meta.tokens_k[hc]), 0, 0);
      context.restore();
    }
    if (g.cell >= ANNOTATE_CELL) annotateCells(context, s, m, g);
    var barH = Math.min(240, Math.max(80, g.plotH - 30));
    drawColorbar(context, g.left + g.plotW + 22, g.top + 8, barH, maxCode, "weight");
    return g.height;
  }

  // Big cells carry their weight as text, dark on light colours and light on dark ones.
  function annotateCells(context, s, m, g) {
    var table = colourTable(s.maxCode(m));
    context.font = Math.min(12, Math.floor(g.cell / 3.2)) + "px " + FONT;
    context.textAlign = "center";
    context.textBaseline = "middle";
    var r0 = Math.floor(zoom.r0), r1 = Math.min(s.nq, Math.ceil(zoom.r0 + g.rows));
    var c0 = Math.floor(zoom.c0), c1 = Math.min(s.nk, Math.ceil(zoom.c0 + g.cols));
    for (var r = r0; r < r1; r++) {
      for (var c = c0; c < c1; c++) {
        if (!s.allowed(r, c)) continue;
        var code = s.code(m, r, c), ci = 3 * table[code];
        var light = 0.299 * cmap[ci] + 0.587 * cmap[ci + 1] + 0.114 * cmap[ci + 2] > 128;
        context.fillStyle = light ? "#111" : "#fff";
        context.fillText(value(code).toFixed(2), g.left + (c - zoom.c0 + 0.5) * g.cell, g.top + (r - zoom.r0 + 0.5) * g.cell);
      }
    }
  }

  function matrixHit(x, y) {
    var g = layout, s = sec();
    if (x < g.left || y < g.top || x >= g.left + g.plotW || y >= g.top + g.plotH) return null;
    var col = Math.floor(zoom.c0 + (x - g.left) / g.cell), row = Math.floor(zoom.r0 + (y - g.top) / g.cell);
    if (row < 0 || col < 0 || row >= s.nq || col >= s.nk) return null;
    return { kind: "cell", row: row, col: col };
  }

  function zoomAt(factor, x, y) {
    var g = layout;
    if (!g || g.kind !== "matrix") return;
    var fx = x === undefined ? g.plotW / 2 : x - g.left, fy = y === undefined ? g.plotH / 2 : y - g.top;
    var col = zoom.c0 + fx / g.cell, row = zoom.r0 + fy / g.cell;
    zoom.k = Math.min(Math.max(zoom.k * factor, 1), g.maxK);
    var cell = g.base * zoom.k;
    zoom.c0 = col - fx / cell;
    zoom.r0 = row - fy / cell;
    render();
  }

  function resetZoom() { zoom.k = 1; zoom.r0 = 0; zoom.c0 = 0; render(); }

  // ------------------------------------------------------------------------------------------
  // panels: all heads of a layer, and the layers x heads grid

  function panelBox(s, size) {
    // fit the matrix's aspect in a square box
    var scale = size / Math.max(s.nq, s.nk);
    return { w: Math.max(8, Math.round(s.nk * scale)), h: Math.max(8, Math.round(s.nq * scale)) };
  }

  function drawPanel(context, s, m, x, y, size, maxCode, current) {
    var box = panelBox(s, size);
    var image = pooledImage(s, m, Math.ceil(box.w), Math.ceil(box.h), maxCode);
    context.imageSmoothingEnabled = image.width > box.w;
    context.drawImage(image, x, y, box.w, box.h);
    context.imageSmoothingEnabled = true;
    context.strokeStyle = current ? "#e4572e" : "#c3cad5";
    context.lineWidth = current ? 3 : 1;
    context.strokeRect(x - (current ? 1.5 : 0.5), y - (current ? 1.5 : 0.5), box.w + (current ? 3 : 1), box.h + (current ? 3 : 1));
    return box;
  }

  function drawHeadsView(context, width) {
    var s = sec(), gap = 16, titleH = 18;
    var cols = Math.max(1, Math.min(s.H, Math.floor((width - 110) / 150)));
    var size = Math.min(260, Math.floor((width - 110) / cols) - gap);
    var shared = 0;
    for (var h = 0; h < s.H; h++) shared = Math.max(shared, s.maxCode(s.headIndex(state.layer, h)));
    context.fillStyle = "#1d2430";
    context.font = "600 14px " + FONT;
    context.textAlign = "left";
    context.textBaseline = "top";
    context.fillText("layer " + state.layer + " \u00b7 all " + s.H + " heads on one colour scale (click one to open it)", 2, 4);
    var panels = [], top = 32;
    for (h = 0; h < s.H; h++) {
      var x = (h % cols) * (size + gap) + 4, y = top + Math.floor(h / cols) * (size + gap + titleH) + titleH;
      context.fillStyle = h === state.head ? "#c2410c" : "#2a3240";
      context.font = (h === state.head ? "600 " : "") + "12px " + FONT;
      context.textBaseline = "bottom";
      context.fillText("head " + h, x, y - 3);
      var box = drawPanel(context, s, s.headIndex(state.layer, h), x, y, size, shared, h === state.head);
      panels.push({ x: x, y: y, w: box.w, h: box.h, layer: state.layer, head: h });
    }
    var rowsUsed = Math.ceil(s.H / cols);
    var bottom = top + rowsUsed * (size + gap + titleH);
    drawColorbar(context, cols * (size + gap) + 30, top + 26, Math.min(200, Math.max(80, size)), shared, "weight");
    layout = { kind: "panels", panels: panels, height: bottom + 4 };
    return layout.height;
  }

  function drawGridView(context, width) {
    var s = sec(), left = 64, top = 52, gap = 6;
    var size = Math.max(30, Math.min(120, Math.floor((width - left - 20) / s.H) - gap));
    context.fillStyle = "#1d2430";
    context.font = "600 14px " + FONT;
    context.textAlign = "left";
    context.textBaseline = "top";
    context.fillText(s.L + " layers \u00d7 " + s.H + " heads, each panel on its own colour scale (click one to open it)", 2, 4);
    context.font = "12px " + FONT;
    var panels = [];
    for (var h = 0; h < s.H; h++) {
      context.fillStyle = h === state.head ? "#c2410c" : "#4a5364";
      context.textAlign = "center";
      context.textBaseline = "bottom";
      context.fillText(s.H > 24 ? String(h) : "head " + h, left + h * (size + gap) + size / 2, top - 6);
    }
    for (var l = 0; l < s.L; l++) {
      var y = top + l * (size + gap);
      context.fillStyle = l === state.layer ? "#c2410c" : "#4a5364";
      context.textAlign = "right";
      context.textBaseline = "middle";
      context.fillText("layer " + l, left - 8, y + size / 2);
      for (h = 0; h < s.H; h++) {
        var m = s.headIndex(l, h), x = left + h * (size + gap);
        var box = drawPanel(context, s, m, x, y, size, s.maxCode(m), l === state.layer && h === state.head);
        panels.push({ x: x, y: y, w: box.w, h: box.h, layer: l, head: h });
      }
    }
    layout = { kind: "panels", panels: panels, height: top + s.L * (size + gap) + 8 };
    return layout.height;
  }

  function panelHit(x, y) {
    var panels = layout.panels;
    for (var i = 0; i < panels.length; i++) {
      var p = panels[i];
      if (x >= p.x - 2 && x < p.x + p.w + 2 && y >= p.y - 2 && y < p.y + p.h + 2) return { kind: "panel", layer: p.layer, head: p.head };
    }
    return null;
  }

  // ------------------------------------------------------------------------------------------
  // the text view

  function tokenSpans(box, labels, side) {
    box.innerHTML = "";
    var spans = labels.map(function (label, i) {
      var span = el("span", { className: "ax-tok", "data-side": side, "data-i": String(i), title: i + ": " + label, text: label === "" ? "\u2423" : label });
      box.appendChild(span);
      return span;
    });
    return spans;
  }

  function buildText() {
    var s = sec();
    // For self-attention the two boxes list the same tokens; hovering one in either box selects it.
    ui.keySpans = tokenSpans(ui.keyTokens, s.meta.tokens_k, "k");
    ui.querySpans = tokenSpans(ui.queryTokens, s.meta.tokens_q, "q");
    ui.textBuiltFor = state.section;
  }

  // Until a token is hovered or pinned, the first query stands in, so the view never opens empty.
  function selectedToken() { return state.hoverToken || state.pinned || { side: "q", i: 0 }; }

  function shade(spans, weights, rgb, blocked) {
    var top = 0;
    for (var i = 0; i < weights.length; i++) if (weights[i] > top) top = weights[i];
    spans.forEach(function (span, i) {
      var w = weights ? weights[i] : 0;
      var alpha = top > 0 ? Math.sqrt(w / top) : 0;
      span.style.backgroundColor = alpha > 0.02 ? "rgba(" + rgb + "," + alpha.toFixed(3) + ")" : "";
      span.style.color = alpha > 0.62 ? "#fff" : "";
      span.classList.toggle("ax-blocked", !!(blocked && blocked[i]));
    });
  }

  function topList(labels, weights, count) {
    var order = weights.map(function (w, i) { return i; }).sort(function (a, b) { return weights[b] - weights[a]; });
    return order.slice(0, count).filter(function (i) { return weights[i] > 0; }).map(function (i) {
      return quoted(shortLabel(labels[i])) + " (" + i + ") " + weights[i].toFixed(3);
    }).join(" \u00b7 ");
  }

  function renderText() {
    var s = sec(), m = currentMatrix(), pick = selectedToken();
    if (ui.textBuiltFor !== state.section) buildText();
    ui.keySpans.forEach(function (span) { span.classList.remove("ax-sel"); });
    ui.querySpans.forEach(function (span) { span.classList.remove("ax-sel"); });
    var row = null, col = null;
    if (pick) {
      // A token of a self-attention section is both a query and a key.
      if (pick.side === "q" || s.meta.self) row = pick.i;
      if (pick.side === "k" || s.meta.self) col = pick.i;
    }
    var rowWeights = [], rowBlocked = [], colWeights = [], colBlocked = [];
    if (row !== null) {
      for (var c = 0; c < s.nk; c++) { rowWeights.push(value(s.code(m, row, c))); rowBlocked.push(!s.allowed(row, c)); }
      ui.querySpans[row].classList.add("ax-sel");
      if (s.meta.self) ui.keySpans[row].classList.add("ax-sel");
    }
    if (col !== null) {
      for (var r = 0; r < s.nq; r++) { colWeights.push(value(s.code(m, r, col))); colBlocked.push(!s.allowed(r, col)); }
      ui.keySpans[col].classList.add("ax-sel");
      if (s.meta.self) ui.querySpans[col].classList.add("ax-sel");
    }
    shade(ui.keySpans, row !== null ? rowWeights : [], "37,99,180", row !== null ? rowBlocked : null);
    shade(ui.querySpans, col !== null ? colWeights : [], "226,110,20", col !== null ? colBlocked : null);
    var source = state.textSource === "mean" ? "mean of the heads" : state.textSource === "rollout" && s.meta.self ? "rollout" : "head " + state.head;
    var where = "layer " + state.layer + ", " + source;
    ui.keyTitle.lastChild.textContent = row !== null
      ? "What " + quoted(s.meta.tokens_q[row]) + " (query " + row + ") attends to \u2014 " + where
      : s.meta.self ? "What a token attends to (hover or click a token)" : "Keys: what a query attends to (hover a query on the right)";
    ui.queryTitle.lastChild.textContent = col !== null
      ? "What attends to " + quoted(s.meta.tokens_k[col]) + " (key " + col + ") \u2014 " + where
      : s.meta.self ? "What attends to a token" : "Queries: what attends to a key (hover a key on the left)";
    ui.keyTop.textContent = row !== null ? "strongest: " + topList(s.meta.tokens_k, rowWeights, 5) : "";
    ui.queryTop.textContent = col !== null ? "strongest: " + topList(s.meta.tokens_q, colWeights, 5) : "";
  }

  // ------------------------------------------------------------------------------------------
  // drawing and the controls

  function canvasHeight(width) {
    var avail = window.innerHeight - ui.stage.getBoundingClientRect().top - 12;
    return Math.max(380, Math.min(1600, avail, width));
  }

  function drawView(context, width, height) {
    context.fillStyle = "#fff";
    context.fillRect(0, 0, width, height);
    if (state.view === "heads") return drawHeadsView(context, width);
    if (state.view === "grid") return drawGridView(context, width);
    return drawMatrixView(context, width, height);
  }

  var pending = false;
  function render() {
    if (pending) return;
    pending = true;
    window.requestAnimationFrame(function () { pending = false; renderNow(); });
  }

  // The state as data attributes on the root, for scripts and tests; set as soon as it changes,
  // not at the next animation frame.
  function report() {
    root.dataset.view = state.view;
    root.dataset.section = String(state.section);
    root.dataset.layer = String(state.layer);
    root.dataset.head = String(state.head);
    root.dataset.token = state.pinned ? state.pinned.side + ":" + state.pinned.i : "";
  }

  function renderNow() {
    report();
    syncControls();
    var textView = state.view === "text";
    ui.canvas.style.display = textView ? "none" : "block";
    ui.text.classList.toggle("ax-shown", textView);
    if (textView) {
      renderText();
      ui.tooltip.style.display = "none";
      describe();
      return;
    }
    var width = Math.max(320, ui.stage.clientWidth);
    var dpr = window.devicePixelRatio || 1;
    var probe = ui.canvas.getContext("2d");
    // Panel views know their height only after laying out: draw once to measure, then for real.
    var height = state.view === "heads" || state.view === "grid" ? 4000 : canvasHeight(width);
    var measure = document.createElement("canvas").getContext("2d");
    var used = Math.ceil(drawView(measure, width, height));
    ui.canvas.width = Math.round(width * dpr);
    ui.canvas.height = Math.round(used * dpr);
    ui.canvas.style.width = width + "px";
    ui.canvas.style.height = used + "px";
    probe.setTransform(dpr, 0, 0, dpr, 0, 0);
    drawView(probe, width, used);
    describe();
  }

  function describe() {
    var s = sec(), parts = [];
    if (hover && hover.kind === "cell") {
      var m = layout.m, code = s.code(m, hover.row, hover.col);
      parts.push("query " + hover.row + " " + quoted(s.meta.tokens_q[hover.row]) + " \u2192 key " + hover.col + " " + quoted(s.meta.tokens_k[hover.col]) + ": <b>" + formatWeight(value(code)) + "</b>" + (s.allowed(hover.row, hover.col) ? "" : " (masked)"));
    } else if (hover && hover.kind === "panel") {
      parts.push("layer " + hover.layer + ", head " + hover.head + ": click to open");
    } else {
      parts.push(s.nq + " queries \u00d7 " + s.nk + " keys \u00b7 " + s.L + " layer" + (s.L > 1 ? "s" : "") + " \u00d7 " + s.H + " head" + (s.H > 1 ? "s" : ""));
      if (layout && layout.kind === "matrix" && state.view !== "text") {
        var rows = Math.round(layout.rows), cols = Math.round(layout.cols);
        if (rows < s.nq || cols < s.nk) {
          parts.push("showing queries " + Math.floor(zoom.r0) + "\u2013" + Math.min(s.nq - 1, Math.floor(zoom.r0) + rows - 1) + ", keys " + Math.floor(zoom.c0) + "\u2013" + Math.min(s.nk - 1, Math.floor(zoom.c0) + cols - 1) + " (zoom \u00d7" + zoom.k.toFixed(1) + ")");
        }
        parts.push("colour 0 to " + formatWeight(value(s.maxCode(layout.m))) + { linear: "", sqrt: " (square-root scale)", log: " (log scale)" }[state.scale]);
      }
    }
    ui.readout.innerHTML = parts.join(" \u00b7 ");
  }

  function setState(change) {
    Object.keys(change).forEach(function (key) { state[key] = change[key]; });
    var s = sec();
    state.layer = Math.min(Math.max(state.layer, 0), s.L - 1);
    state.head = Math.min(Math.max(state.head, 0), s.H - 1);
    if (state.view === "rollout" && !s.meta.self) state.view = "head";
    hover = null;
    ui.tooltip.style.display = "none";
    report();
    render();
  }

  function option(valueText, label) { var o = el("option", { value: valueText, text: label }); return o; }

  function fillSelect(select, items) {
    select.innerHTML = "";
    items.forEach(function (item) { select.appendChild(option(item[0], item[1])); });
  }

  function syncControls() {
    var s = sec();
    if (ui.layerFor !== state.section) {
      fillSelect(ui.layer, s.meta.layer_names.map(function (name, i) { return [String(i), name === "layer " + i ? name : i + " \u00b7 " + name]; }));
      fillSelect(ui.head, Array.from({ length: s.H }, function (_, h) { return [String(h), "head " + h]; }));
      ui.layerFor = state.section;
    }
    ui.section.value = String(state.section);
    ui.layer.value = String(state.layer);
    ui.head.value = String(state.head);
    ui.scale.value = state.scale;
    ui.textSource.value = state.textSource;
    ui.textSource.querySelector('option[value="rollout"]').disabled = !s.meta.self;
    ui.tabs.forEach(function (button) {
      button.setAttribute("aria-pressed", button.dataset.view === state.view ? "true" : "false");
      if (button.dataset.view === "rollout") {
        button.disabled = !s.meta.self;
        button.title = s.meta.self ? "attention rollout: how much each input token flows into each position" : "rollout needs self-attention (queries and keys the same tokens)";
      }
    });
    ui.zoomButtons.forEach(function (b) { b.disabled = !(state.view === "head" || state.view === "mean" || state.view === "rollout"); });
  }

  function stepHead(delta) { setState({ head: (state.head + delta + sec().H) % sec().H }); }
  function stepLayer(delta) { setState({ layer: state.layer + delta }); }

  function exportCanvas() {
    var dpr = 2, width, height, canvas, context;
    if (state.view === "text") {
      // Paint the two token boxes as they look: backgrounds, text and titles.
      var boxes = [ui.keyBox, ui.queryBox], rect = ui.text.getBoundingClientRect();
      width = Math.ceil(rect.width);
      height = Math.ceil(rect.height);
      canvas = document.createElement("canvas");
      canvas.width = width * dpr;
      canvas.height = height * dpr;
      context = canvas.getContext("2d");
      context.scale(dpr, dpr);
      context.fillStyle = "#fff";
      context.fillRect(0, 0, width, height);
      boxes.forEach(function (box) {
        var b = box.getBoundingClientRect();
        context.strokeStyle = "#e1e5eb";
        context.strokeRect(b.left - rect.left + 0.5, b.top - rect.top + 0.5, b.width - 1, b.height - 1);
        Array.prototype.forEach.call(box.querySelectorAll(".ax-box-title, .ax-tok, .ax-top"), function (node) {
          var r = node.getBoundingClientRect(), style = getComputedStyle(node);
          if (r.bottom < b.top || r.top > b.bottom) return; // scrolled out of its box
          if (style.backgroundColor && style.backgroundColor !== "rgba(0, 0, 0, 0)") {
            context.fillStyle = style.backgroundColor;
            context.fillRect(r.left - rect.left, r.top - rect.top, r.width, r.height);
          }
          context.fillStyle = style.color;
          context.font = style.fontWeight + " " + style.fontSize + " " + FONT;
          context.textBaseline = "middle";
          context.textAlign = "left";
          var pad = node.classList.contains("ax-tok") ? 4 : 0;
          context.fillText(node.textContent, r.left - rect.left + pad, r.top - rect.top + r.height / 2, r.width - pad);
        });
      });
      return canvas;
    }
    width = parseFloat(ui.canvas.style.width);
    var saved = hover;
    hover = null;
    var measure = document.createElement("canvas").getContext("2d");
    height = Math.ceil(drawView(measure, width, state.view === "heads" || state.view === "grid" ? 4000 : canvasHeight(width)));
    canvas = document.createElement("canvas");
    canvas.width = width * dpr;
    canvas.height = height * dpr;
    context = canvas.getContext("2d");
    context.scale(dpr, dpr);
    drawView(context, width, height);
    hover = saved;
    render();
    return canvas;
  }

  function exportPng() {
    var url = exportCanvas().toDataURL("image/png");
    var link = el("a", { href: url, download: "attention_" + state.view + "_layer" + state.layer + "_head" + state.head + ".png" });
    document.body.appendChild(link);
    link.click();
    link.remove();
    return url;
  }

  function showTooltip(event, htmlText) {
    var rect = ui.stage.getBoundingClientRect();
    var x = event.clientX - rect.left + 14, y = event.clientY - rect.top + 14;
    ui.tooltip.innerHTML = htmlText;
    ui.tooltip.style.display = "block";
    var w = ui.tooltip.offsetWidth;
    if (x + w > rect.width) x = Math.max(0, event.clientX - rect.left - w - 14);
    ui.tooltip.style.left = x + "px";
    ui.tooltip.style.top = y + "px";
  }

  function escapeHtml(text) {
    return text.replace(/[&<>"]/g, function (ch) { return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[ch]; });
  }

  function onPointerMove(event) {
    var rect = ui.canvas.getBoundingClientRect(), x = event.clientX - rect.left, y = event.clientY - rect.top;
    if (drag) {
      var dx = x - drag.x, dy = y - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
      if (drag.moved && layout.kind === "matrix") {
        zoom.c0 = drag.c0 - dx / layout.cell;
        zoom.r0 = drag.r0 - dy / layout.cell;
        ui.canvas.classList.add("ax-grabbing");
        render();
        return;
      }
    }
    var hit = !layout ? null : layout.kind === "matrix" ? matrixHit(x, y) : panelHit(x, y);
    var same = hit && hover && hit.kind === hover.kind && hit.row === hover.row && hit.col === hover.col && hit.layer === hover.layer && hit.head === hover.head;
    ui.canvas.classList.toggle("ax-pointer", !!hit && hit.kind === "panel");
    if (!hit) {
      if (hover) { hover = null; ui.tooltip.style.display = "none"; render(); }
      return;
    }
    if (!same) { hover = hit; render(); }
    var s = sec();
    if (hit.kind === "cell") {
      var code = s.code(layout.m, hit.row, hit.col), blocked = !s.allowed(hit.row, hit.col);
      showTooltip(event,
        "query " + hit.row + " <b>" + escapeHtml(quoted(s.meta.tokens_q[hit.row])) + "</b> \u2192 key " + hit.col + " <b>" + escapeHtml(quoted(s.meta.tokens_k[hit.col])) + "</b><br>" +
        '<span class="ax-tip-value" data-weight="' + formatWeight(value(code)) + '">' + formatWeight(value(code)) + "</span>" + (blocked ? " masked: this key is blocked" : ""));
    } else {
      showTooltip(event, "layer " + hit.layer + " \u00b7 head " + hit.head + "<br>largest weight " + formatWeight(value(s.maxCode(s.headIndex(hit.layer, hit.head)))) + " \u00b7 click to open");
    }
  }

  var drag = null;

  function buildUi() {
    root.innerHTML = "";
    ui.section = el("select", { "aria-label": "attention" });
    fillSelect(ui.section, sections.map(function (s, i) { return [String(i), s.meta.name + " (" + s.nq + "\u00d7" + s.nk + ")"]; }));
    ui.layer = el("select", { "aria-label": "layer" });
    ui.head = el("select", { "aria-label": "head" });
    var prev = el("button", { className: "ax-step", title: "previous head (\u2190)", "aria-label": "previous head", text: "\u25c0" });
    var next = el("button", { className: "ax-step", title: "next head (\u2192)", "aria-label": "next head", text: "\u25b6" });
    ui.tabs = VIEWS.map(function (v) { return el("button", { "data-view": v[0], text: v[1] }); });
    ui.scale = el("select", { "aria-label": "colour scale" });
    fillSelect(ui.scale, [["linear", "linear"], ["sqrt", "square root"], ["log", "log (4 decades)"]]);
    var zoomIn = el("button", { title: "zoom in (+)", text: "+" }), zoomOut = el("button", { title: "zoom out (\u2212)", text: "\u2212" });
    var zoomReset = el("button", { title: "whole matrix (0, or double-click)", text: "reset" });
    ui.zoomButtons = [zoomIn, zoomOut, zoomReset];
    var exportButton = el("button", { className: "ax-export", title: "save the current view as a PNG picture", text: "Save PNG" });

    var controls = el("div", { className: "ax-controls" }, [
      el("label", { className: "ax-field" }, [el("span", { text: "attention" }), ui.section]),
      el("label", { className: "ax-field" }, [el("span", { text: "layer" }), ui.layer]),
      el("span", { className: "ax-field" }, [el("span", { text: "head" }), prev, ui.head, next]),
      el("span", { className: "ax-tabs", role: "group", "aria-label": "view" }, ui.tabs),
      el("label", { className: "ax-field" }, [el("span", { text: "colour" }), ui.scale]),
      el("span", { className: "ax-field" }, [el("span", { text: "zoom" }), zoomIn, zoomOut, zoomReset]),
      exportButton,
    ]);
    if (sections.length < 2) controls.firstChild.style.display = "none";

    ui.readout = el("div", { className: "ax-readout", "aria-live": "polite" });
    ui.canvas = el("canvas", { className: "ax-canvas", "aria-label": "attention weights" });
    ui.tooltip = el("div", { className: "ax-tooltip" });

    ui.textSource = el("select", { "aria-label": "weights for the text view" });
    fillSelect(ui.textSource, [["head", "the selected head"], ["mean", "mean of the heads"], ["rollout", "rollout"]]);
    ui.keyTitle = el("div", { className: "ax-box-title" }, [el("span", { className: "ax-swatch", style: "background:#2563b4" }), document.createTextNode("")]);
    ui.queryTitle = el("div", { className: "ax-box-title" }, [el("span", { className: "ax-swatch", style: "background:#e26e14" }), document.createTextNode("")]);
    ui.keyTokens = el("div", { className: "ax-tokens" });
    ui.queryTokens = el("div", { className: "ax-tokens" });
    ui.keyTop = el("div", { className: "ax-top" });
    ui.queryTop = el("div", { className: "ax-top" });
    ui.keyBox = el("div", { className: "ax-box", "data-role": "attends-to" }, [ui.keyTitle, ui.keyTokens, ui.keyTop]);
    ui.queryBox = el("div", { className: "ax-box", "data-role": "attended-by" }, [ui.queryTitle, ui.queryTokens, ui.queryTop]);
    ui.text = el("div", { className: "ax-text" }, [
      el("div", { className: "ax-text-bar" }, [
        el("label", { className: "ax-field" }, [el("span", { text: "weights" }), ui.textSource]),
        el("span", { text: "Hover a token to see its attention; click to pin it (click again to unpin). Shading grows with the square root of the weight, relative to the strongest." }),
      ]),
      el("div", { className: "ax-text-boxes" }, [ui.keyBox, ui.queryBox]),
    ]);
    ui.stage = el("div", { className: "ax-stage" }, [ui.canvas, ui.text, ui.tooltip]);

    var help = el("div", { className: "ax-help" });
    help.innerHTML =
      "<kbd>\u2190</kbd> <kbd>\u2192</kbd> previous / next head \u00b7 <kbd>\u2191</kbd> <kbd>\u2193</kbd> previous / next layer \u00b7 " +
      "wheel or <kbd>+</kbd> <kbd>\u2212</kbd> zoom, drag to pan, double-click or <kbd>0</kbd> for the whole matrix \u00b7 " +
      "rows are queries (the token looking), columns keys (the tokens looked at); each row sums to 1. " +
      escapeHtml(header.precision_text);

    root.appendChild(el("div", { className: "ax-head" }, [
      el("h1", { text: header.title }),
      el("span", { className: "ax-precision", text: header.precision_text }),
    ]));
    root.appendChild(controls);
    root.appendChild(ui.readout);
    root.appendChild(ui.stage);
    root.appendChild(help);

    ui.section.addEventListener("change", function () {
      zoom.k = 1; zoom.r0 = 0; zoom.c0 = 0;
      setState({ section: Number(ui.section.value), pinned: null, hoverToken: null });
    });
    ui.layer.addEventListener("change", function () { setState({ layer: Number(ui.layer.value) }); });
    ui.head.addEventListener("change", function () { setState({ head: Number(ui.head.value) }); });
    prev.addEventListener("click", function () { stepHead(-1); });
    next.addEventListener("click", function () { stepHead(1); });
    ui.tabs.forEach(function (button) { button.addEventListener("click", function () { setState({ view: button.dataset.view }); }); });
    ui.scale.addEventListener("change", function () { setState({ scale: ui.scale.value }); });
    ui.textSource.addEventListener("change", function () { setState({ textSource: ui.textSource.value }); });
    zoomIn.addEventListener("click", function () { zoomAt(1.5); });
    zoomOut.addEventListener("click", function () { zoomAt(1 / 1.5); });
    zoomReset.addEventListener("click", resetZoom);
    exportButton.addEventListener("click", exportPng);

    ui.canvas.addEventListener("mousemove", onPointerMove);
    ui.canvas.addEventListener("mouseleave", function () { hover = null; drag = null; ui.tooltip.style.display = "none"; render(); });
    ui.canvas.addEventListener("mousedown", function (event) {
      var rect = ui.canvas.getBoundingClientRect();
      drag = { x: event.clientX - rect.left, y: event.clientY - rect.top, c0: zoom.c0, r0: zoom.r0, moved: false };
    });
    window.addEventListener("mouseup", function () { ui.canvas.classList.remove("ax-grabbing"); setTimeout(function () { drag = null; }, 0); });
    ui.canvas.addEventListener("click", function (event) {
      if (drag && drag.moved) return;
      var rect = ui.canvas.getBoundingClientRect();
      if (layout && layout.kind === "panels") {
        var hit = panelHit(event.clientX - rect.left, event.clientY - rect.top);
        if (hit) setState({ layer: hit.layer, head: hit.head, view: "head" });
      }
    });
    ui.canvas.addEventListener("dblclick", resetZoom);
    ui.canvas.addEventListener("wheel", function (event) {
      if (!layout || layout.kind !== "matrix") return;
      event.preventDefault();
      var rect = ui.canvas.getBoundingClientRect();
      zoomAt(event.deltaY < 0 ? 1.25 : 0.8, event.clientX - rect.left, event.clientY - rect.top);
    }, { passive: false });

    function tokenOf(event) {
      var span = event.target.closest ? event.target.closest(".ax-tok") : null;
      return span ? { side: span.dataset.side, i: Number(span.dataset.i) } : null;
    }
    [ui.keyTokens, ui.queryTokens].forEach(function (box) {
      box.addEventListener("mouseover", function (event) {
        var token = tokenOf(event);
        if (token) { state.hoverToken = token; render(); }
      });
      box.addEventListener("mouseleave", function () { state.hoverToken = null; render(); });
      box.addEventListener("click", function (event) {
        var token = tokenOf(event);
        if (!token) return;
        var same = state.pinned && state.pinned.side === token.side && state.pinned.i === token.i;
        setState({ pinned: same ? null : token, hoverToken: null });
      });
    });

    document.addEventListener("keydown", function (event) {
      var tag = (event.target && event.target.tagName) || "";
      if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA" || event.altKey || event.ctrlKey || event.metaKey) return;
      var handled = true;
      if (event.key === "ArrowRight") stepHead(1);
      else if (event.key === "ArrowLeft") stepHead(-1);
      else if (event.key === "ArrowDown") stepLayer(1);
      else if (event.key === "ArrowUp") stepLayer(-1);
      else if (event.key === "+" || event.key === "=") zoomAt(1.5);
      else if (event.key === "-") zoomAt(1 / 1.5);
      else if (event.key === "0") resetZoom();
      else handled = false;
      if (handled) event.preventDefault();
    });
    window.addEventListener("resize", render);
  }

  function start(raw) {
    numCodes = header.bits === 16 ? 65536 : 256;
    values = new Float64Array(numCodes);
    for (var code = 0; code < numCodes; code++) {
      values[code] = header.bits === 16 ? code / 65535 : Math.pow(code / 255, 2);
    }
    var hex = header.colormap;
    cmap = new Uint8Array(hex.length / 2);
    for (var i = 0; i < cmap.length; i++) cmap[i] = parseInt(hex.substr(2 * i, 2), 16);
    var masked = header.masked_color.replace("#", "");
    maskedRGB = [0, 2, 4].map(function (o) { return parseInt(masked.substr(o, 2), 16); });
    sections = header.sections.map(function (meta) { return new Section(meta, raw, header.bits); });
    state.view = header.view || "head";
    if (header.start) {
      state.section = Math.min(header.start.section || 0, sections.length - 1);
      state.layer = Math.min(header.start.layer || 0, sections[state.section].L - 1);
      state.head = Math.min(header.start.head || 0, sections[state.section].H - 1);
    }
    // Long inputs spread their weight thin (1/N each): a log colour scale keeps the tail visible.
    if (sections[state.section].nk > 256) state.scale = "log";
    buildUi();
    renderNow();
    root.dataset.ready = "1";
    // For scripts and tests: read the state, export a picture, find a panel.
    window.attnlensExplorer = {
      state: state,
      zoom: zoom,
      layout: function () { return layout; },
      set: setState,
      exportDataUrl: function () { return exportCanvas().toDataURL("image/png"); },
      exportPng: exportPng,
      renderNow: renderNow,
    };
  }

  try {
    header = JSON.parse(document.getElementById("ax-header").textContent);
    inflate(base64Bytes(document.getElementById("ax-data").textContent))
      .then(start)
      .catch(function (error) { fail(error && error.message ? error.message : String(error)); if (window.console) console.error(error); });
  } catch (error) {
    fail(error.message);
    throw error;
  }
})();
