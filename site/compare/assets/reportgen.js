/* reportgen page code: mounts the page's chart and wires its controls. Classic script, no
 * network, no storage (it must work from file:// and inside <iframe sandbox="allow-scripts">).
 *
 * Public surface, window.reportgen:
 *   view          the Vega view of the current page (null until rendered, and on the About page)
 *   ready         a Promise of that view, resolved once it has rendered (null without a chart);
 *                 in the single-file report, replaced by a new Promise on every page switch
 *   data(name)    rows of a dataset of the view: "heat" (the heatmap cells drawn: i, j, share,
 *                 query, key), "cells" (packed per-head rows), "heads" (the grid), or any Vega
 *                 dataset name
 *   selection()   the selected heads as [[layer, head], ...], 1-based, sorted
 *   settled()     a Promise, resolved once the view has run and the page's own text (the
 *                 caption, the index's order) shows the current selection: that text follows
 *                 a selection in a task of its own, after the chart has been drawn
 *   show(key)     single-file report only: switch to a page ("index", "about", "example-3")
 *   long          a long input's page only: its zoomable token map (see mountLong): state(),
 *                 drawn() (what the canvas shows), zoom([r0, r1, c0, c1]) in blocks, back()
 * Tokens are shown as the model read them; where it read its unknown token (e.g. [UNK]), the
 * page's `data.unknown` ([position, word] pairs) gives the word it replaced, which tooltips,
 * the text alternative and a long input's token strip add, marked as not read by the model.
 * Selections are the Vega-Lite params "pick" (click a head) and "brush" (drag a block).
 * The names of marks, selections, their stores and datasets come in each page's data
 * (`data.names`, made by reportgen.charts.names): none is spelled here.
 */
(function () {
  "use strict";

  var rg = (window.reportgen = window.reportgen || {});
  var resolveReady = null;
  var datasets = {};
  var names = null; // the page's data.names: heat_mark, selections, stores, tokens, cells

  /* A new page's promise. A caller still waiting on the last one (taken before the single
   * file's router had shown its first page, say) is resolved with this one, never left waiting. */
  function newReady() {
    var previous = resolveReady;
    rg.ready = new Promise(function (resolve) {
      resolveReady = resolve;
    });
    if (previous) previous(rg.ready);
  }
  newReady();
  rg.view = null;
  var textDone = Promise.resolve(); // the page text's update for the last selection change
  var unknown = Object.create(null); // position -> the word read as the unknown token

  function unknownWords(pairs) {
    var out = Object.create(null);
    (pairs || []).forEach(function (pair) {
      out[pair[0]] = String(pair[1]);
    });
    return out;
  }

  /* A token as the model read it, and for an unknown token the word it stands for. */
  function tokenLabel(tokens, p) {
    var word = unknown[p];
    var token = String(tokens[p]);
    return word === undefined ? token : token + " for “" + word + "” (not in the vocabulary)";
  }

  function find(root, name) {
    return root.querySelector('[data-rg="' + name + '"]');
  }

  function markData(spec, markName) {
    var marks = (spec && spec.marks) || [];
    for (var k = 0; k < marks.length; k++) {
      var mark = marks[k];
      if (mark.name === markName && mark.from && mark.from.data) return mark.from.data;
      var inner = markData(mark, markName);
      if (inner) return inner;
    }
    return null;
  }

  rg.data = function (name) {
    if (!rg.view) return [];
    var rows = rg.view.data(datasets[name] || name);
    if (name !== "heat") return rows;
    if (nothingSelected(rg.view)) return []; // the zero cells that keep the colour scale finite
    var tokens = rg.view.signal(names.tokens);
    return rows.map(function (d) {
      return { i: d.i, j: d.j, share: d.share, query: tokens[d.i], key: tokens[d.j] };
    });
  };

  /* Tooltips, drawn by the page: one floating element, filled with textContent only, so a token
   * is text whatever it holds. Vega calls the handler with the hovered item's tooltip value (an
   * object of label: value, or null to hide). A heatmap cell hands over its datum: building a
   * tooltip object for each of ~1,000 cells on every click cost more than drawing them, so the
   * cell's text is made here, for the one cell hovered. */
  var tooltipBox = null;

  function tooltipValue(view, item, value) {
    if (!(names && item && item.mark && item.mark.name === names.heat_mark)) return value;
    if (nothingSelected(view)) return null;
    var tokens = view.signal(names.tokens);
    var label = showsSigned(view) ? "signed share of selection" : "share of selection";
    var text = {
      query: tokenLabel(tokens, value.i),
      key: tokenLabel(tokens, value.j),
      "query position": value.i,
      "key position": value.j,
    };
    text[label] = value.share.toFixed(4);
    return text;
  }

  function tooltip(handler, event, item, value) {
    var box = tooltipBox;
    if (value == null || value === "") {
      if (box) box.hidden = true;
      return;
    }
    if (!box || !box.isConnected) {
      box = tooltipBox = document.createElement("div");
      box.className = "rg-tooltip";
      box.setAttribute("data-rg", "tooltip");
      box.setAttribute("role", "tooltip");
      document.body.appendChild(box);
    }
    value = tooltipValue(this, item, value);
    box.textContent = "";
    if (typeof value === "object") {
      var table = document.createElement("table");
      Object.keys(value).forEach(function (label) {
        var row = table.insertRow();
        row.insertCell().textContent = label;
        row.insertCell().textContent = String(value[label]);
      });
      box.appendChild(table);
    } else {
      box.textContent = String(value);
    }
    box.hidden = false;
    // beside the pointer, flipped to the other side near the window's edges (measured at the
    // window's corner, where nothing squeezes it)
    box.style.left = "0px";
    box.style.top = "0px";
    var gap = 12;
    var x = event.clientX + gap;
    var y = event.clientY + gap;
    if (x + box.offsetWidth > window.innerWidth) x = event.clientX - gap - box.offsetWidth;
    if (y + box.offsetHeight > window.innerHeight) y = event.clientY - gap - box.offsetHeight;
    box.style.left = Math.max(0, x) + "px";
    box.style.top = Math.max(0, y) + "px";
  }

  function storeHeads(view, store) {
    var heads = [];
    var tuples;
    try {
      tuples = view.data(store) || [];
    } catch (err) {
      return heads;
    }
    tuples.forEach(function (tuple) {
      var got = {};
      tuple.fields.forEach(function (f, k) {
        var value = tuple.values[k];
        got[f.field] = Array.isArray(value) ? value : [value];
      });
      (got.layer || []).forEach(function (layer) {
        (got.head || []).forEach(function (head) {
          heads.push([layer, head]);
        });
      });
      // the comparison page brushes units by their labels: "L4 H7", or "L4" per layer
      (got.unit || []).forEach(function (unit) {
        var m = /^L(\d+)(?: H(\d+))?$/.exec(String(unit));
        if (m) heads.push([Number(m[1]), m[2] ? Number(m[2]) : 1]);
      });
    });
    return heads;
  }

  rg.selection = function () {
    if (!rg.view) return [];
    var seen = {};
    var heads = [];
    names.stores
      .reduce(function (all, store) {
        return all.concat(storeHeads(rg.view, store));
      }, [])
      .forEach(function (h) {
        var key = h[0] + ":" + h[1];
        if (!seen[key]) {
          seen[key] = true;
          heads.push(h);
        }
      });
    return heads.sort(function (a, b) {
      return a[0] - b[0] || a[1] - b[1];
    });
  };

  function headLabel(h) {
    return "L" + h[0] + " H" + h[1];
  }

  function percent(x) {
    return (100 * x).toFixed(1) + "%";
  }

  function describe(heads) {
    if (!heads.length) return "No head selected: click a head, or drag a box over several.";
    var names = heads.slice(0, 6).map(headLabel).join(", ");
    if (heads.length > 6) names += ", …";
    return heads.length === 1 ? headLabel(heads[0]) : heads.length + " heads: " + names;
  }

  function base64Bytes(text) {
    if (Uint8Array.fromBase64) return Uint8Array.fromBase64(text);
    var binary = atob(text);
    var bytes = new Uint8Array(binary.length);
    for (var k = 0; k < binary.length; k++) bytes[k] = binary.charCodeAt(k);
    return bytes;
  }

  function download(url, filename) {
    var a = document.createElement("a");
    a.href = url;
    a.download = filename;
    a.rel = "noopener";
    document.body.appendChild(a);
    a.click();
    a.remove();
  }

  rg.settled = function () {
    if (!rg.view) return Promise.resolve(null);
    return rg.view.runAsync().then(function (view) {
      return textDone.then(function () {
        return view;
      });
    });
  };

  /* Calls `callback` after the selection changed: once per burst of changes, in a task after
   * the one that handled the event, so that the page's text stays off the path from a click to
   * the drawn heatmap (issue 6). Text written in the event's task is laid out in the heatmap's
   * frame; and a view.runAfter() callback made Vega draw the whole canvas a second time (the
   * store's nested run and the event's run each drew). The callback's own runAsync() waits for
   * any dataflow run still going. With `soon` (a long input's page, whose token map is drawn by
   * the callback, not by Vega) the callback runs in the event's own task, after Vega's run, so
   * that the map is drawn in the grid's frame; the page's text follows in a later task. */
  function onSelection(view, callback, soon) {
    var pending = false;
    function later() {
      if (pending) return;
      pending = true;
      textDone = new Promise(function (resolve) {
        (soon ? queueMicrotask : setTimeout)(function () {
          pending = false;
          view
            .runAsync()
            .then(function () {
              if (view === rg.view) callback();
            })
            .catch(function (err) {
              console.error(err);
            })
            .then(resolve);
        }, 0);
      });
    }
    names.selections.forEach(function (name) {
      try {
        view.addSignalListener(name, later);
      } catch (err) {
        /* the index grid has no brush */
      }
    });
  }

  /* Draw the page's Vega spec (compiled from Vega-Lite when the site was built) on a canvas.
   * Resolves the view once it has run. Vega compiles the spec's expressions with Function
   * (the pages' CSP allows eval, not inline scripts), unless the bundle carries vega-interpreter
   * as `vega.expressionInterpreter`: then they are evaluated from their syntax trees, under a
   * CSP without 'unsafe-eval' (as benchmarks/csp.py measures it). */
  function embed(root, spec) {
    var el = find(root, "chart");
    if (!window.vega) throw new Error("reportgen: the Vega bundle (assets/vega.js) did not load");
    var interpreter = window.vega.expressionInterpreter;
    spec = arranged(themed(spec, isDark()), narrow(el));
    var runtime = interpreter
      ? window.vega.parse(spec, null, { ast: true })
      : window.vega.parse(spec);
    var view = new window.vega.View(runtime, {
      renderer: "canvas",
      container: el,
      tooltip: tooltip,
      logLevel: window.vega.Warn,
      expr: interpreter,
    });
    return view.runAsync();
  }

  /* The caption of an example page: the selection and how much of its saliency is drawn. */
  function exampleCaption(data, view) {
    var heads = rg.selection();
    var text = describe(heads);
    if (heads.length) {
      var chosen = {};
      heads.forEach(function (h) {
        chosen[h[0] + ":" + h[1]] = true;
      });
      var cut = Math.ceil(data.budget / heads.length);
      var kept = 0;
      var total = 0;
      view.data(names.cells).forEach(function (row) {
        if (!chosen[row.layer + ":" + row.head]) return;
        total += row.tot;
        if (row.v.length <= cut) {
          kept += row.kept;
        } else {
          for (var k = 0; k < cut; k++) kept += row.v[k];
        }
      });
      if (total > 0) text += " · the cells drawn carry " + percent(kept / total) + " of its saliency";
    }
    return text;
  }

  function mountExample(root, data, view) {
    datasets = { heat: markData(data.spec, names.heat_mark) };
    var caption = find(root, "caption");
    var long = data.long ? mountLong(root, data, view, update) : null;
    function update() {
      if (long) {
        caption.textContent = long.caption(describe(rg.selection()));
        return;
      }
      caption.textContent = exampleCaption(data, view);
      altCells(root, view);
    }
    onSelection(
      view,
      function () {
        if (long) long.update();
        update();
      },
      !!long
    );
    update();
    if (root.rgWired) return; // a single-file page shown again, or a view drawn anew
    root.rgWired = true;
    find(root, "png").addEventListener("click", function () {
      var made = long ? longImage(rg.view, long.image()) : rg.view.toImageURL("png", 2);
      made.then(function (url) {
        save(root, url, current.data.name + ".png", "PNG");
      });
    });
    var svgButton = find(root, "svg");
    if (long) {
      svgButton.disabled = true;
      svgButton.title = "a long input's token map is drawn on a canvas: save it as PNG";
    }
    svgButton.addEventListener("click", function () {
      rg.view.toSVG().then(function (svg) {
        if (downloadsBlocked()) {
          save(root, "data:image/svg+xml;charset=utf-8," + encodeURIComponent(svg), "", "SVG");
          return;
        }
        var url = URL.createObjectURL(new Blob([svg], { type: "image/svg+xml" }));
        download(url, current.data.name + ".svg");
        setTimeout(function () {
          URL.revokeObjectURL(url);
        }, 5000);
      });
    });
    find(root, "json").addEventListener("click", function () {
      saveText(root, JSON.stringify(pageData(!!long), null, 1), current.data.name + ".json");
    });
    wireSigned(root);
  }

  /* The current input's data as the page has it: every head's score (the grid's rows), the
   * selected heads and the cells the heatmap draws for them (share of the selection; a long
   * input's token map is a canvas, its cells are not exported). */
  function pageData(isLong) {
    var heads = rg.data("heads").map(function (row) {
      var out = {};
      Object.keys(row).forEach(function (k) {
        out[k] = row[k];
      });
      return out;
    });
    var cells = isLong
      ? []
      : rg.data("heat").map(function (d) {
          return { query: d.i, key: d.j, share: d.share, query_token: d.query, key_token: d.key };
        });
    var words = (current.data.unknown || []).map(function (pair) {
      return { position: pair[0], word: pair[1] };
    });
    return { input: current.data.name, selection: rg.selection(), heads: heads, cells: cells, unknown: words };
  }

  /* ---- Long inputs: the zoomable overview ------------------------------------------------
   * A page whose input is longer than the block threshold carries `data.long` (made by
   * reportgen.charts.packing.pack_overview): per head its exact total and n × n block sums
   * (float16 in base64, scaled by `bmax`), and its top-k cells. The grid's Vega view has no
   * heatmap then; this code draws it on a canvas of its own: the overview of the selected
   * heads' summed block sums (all the saliency), or, after a click or a drag, a region of
   * whole blocks at token resolution from the kept cells, with the share they carry of the
   * region's exact sum. Public: window.reportgen.long (state, drawn, zoom, back). */

  var HALF = null;

  function halfTable() {
    if (HALF) return HALF;
    HALF = new Float32Array(65536);
    for (var h = 0; h < 65536; h++) {
      var exp = (h >> 10) & 31;
      var frac = h & 1023;
      var v = exp === 0 ? frac * Math.pow(2, -24) : exp === 31 ? NaN : (1 + frac / 1024) * Math.pow(2, exp - 15);
      HALF[h] = h & 32768 ? -v : v;
    }
    return HALF;
  }

  function decodeLong(long) {
    var heads = long.layers * long.heads;
    var nb = long.edges.length - 1;
    var half = new Uint16Array(base64Bytes(long.blocks).buffer);
    var table = halfTable();
    var blocks = new Float32Array(heads * nb * nb);
    for (var h = 0; h < heads; h++) {
      var scale = long.bmax[h];
      for (var k = 0; k < nb * nb; k++) {
        var at = h * nb * nb + k;
        blocks[at] = table[half[at]] * scale;
      }
    }
    var starts = new Int32Array(heads + 1);
    for (var s = 0; s < heads; s++) starts[s + 1] = starts[s] + long.counts[s];
    return {
      T: long.tokens,
      nb: nb,
      edges: long.edges,
      blocks: blocks,
      tot: long.tot,
      starts: starts,
      cells: new Int32Array(base64Bytes(long.cells).buffer),
      values: new Float32Array(base64Bytes(long.values).buffer),
      heads: long.heads,
    };
  }

  function viridis() {
    var interp = window.vega.scheme("viridis");
    var out = [];
    for (var k = 0; k < 256; k++) out.push(String(interp(k / 255)));
    return out;
  }

  var LONG_LAYOUT = { left: 150, top: 6, right: 76, bottom: 130, gap: 22, side: 640 };

  function mountLong(root, data, view, setCaption) {
    var long = data.long;
    var d = decodeLong(long);
    var T = d.T;
    var nb = d.nb;
    var edges = d.edges;
    var rowsAreKeys = !!long.keys_as_rows;
    var tokens = long.text;
    var colors = viridis();
    var L = LONG_LAYOUT;
    var side = L.side;
    var host = find(root, "heat-canvas");
    var back = find(root, "zoom-out");
    var where = find(root, "zoom-where");
    var strip = find(root, "token-strip");
    var search = find(root, "token-search");
    var hitsText = find(root, "token-hits");
    var width = L.left + side + L.right;
    var height = L.top + side + L.bottom;
    var ratio = window.devicePixelRatio || 1;
    function layer() {
      var c = document.createElement("canvas");
      c.width = Math.round(width * ratio);
      c.height = Math.round(height * ratio);
      c.style.width = width + "px";
      c.style.height = height + "px";
      host.appendChild(c);
      var g = c.getContext("2d");
      g.scale(ratio, ratio);
      return { canvas: c, g: g };
    }
    host.textContent = "";
    host.style.width = width + "px";
    host.style.height = height + "px";
    var base = layer(); // the cells, the picked row and column, search hits, the legend's figures
    var axes = layer(); // labels, brackets and the colour bar: drawn again only when the range changes
    var over = layer(); // the brush being dragged; takes the pointer
    over.canvas.className = "rg-long-overlay";

    // state: the zoom stack of regions [rowBlock0, rowBlock1, colBlock0, colBlock1) (empty:
    // the overview), the selected heads (0-based flat indices), the chosen query and key
    var stack = [];
    var chosenHeads = [];
    var picked = null; // {query, key} token positions
    var hits = [];
    var drawn = null; // what is on the canvas: {mode, items, share of region, ...}
    var state = { draws: 0 };

    function region() {
      return stack.length ? stack[stack.length - 1] : [0, nb, 0, nb];
    }
    function tokenRange(r) {
      return [edges[r[0]], edges[r[1]], edges[r[2]], edges[r[3]]];
    }
    function blockSum(h, rb, cb) {
      // display (row block, column block) -> stored (query block, key block)
      var q = rowsAreKeys ? cb : rb;
      var k = rowsAreKeys ? rb : cb;
      return d.blocks[h * nb * nb + q * nb + k];
    }

    function compute() {
      var r = region();
      var total = 0;
      chosenHeads.forEach(function (h) {
        total += d.tot[h];
      });
      var regionSum = 0;
      var rb, cb;
      var blocksHere = [];
      for (rb = r[0]; rb < r[1]; rb++) {
        for (cb = r[2]; cb < r[3]; cb++) {
          var s = 0;
          for (var n = 0; n < chosenHeads.length; n++) s += blockSum(chosenHeads[n], rb, cb);
          regionSum += s;
          if (s > 0) blocksHere.push({ rb: rb, cb: cb, sum: s });
        }
      }
      var out = { mode: stack.length ? "zoom" : "overview", total: total, regionSum: regionSum };
      var t = tokenRange(r);
      out.rows = [t[0], t[1]];
      out.cols = [t[2], t[3]];
      if (!stack.length) {
        out.items = blocksHere.map(function (b) {
          return {
            row0: edges[b.rb],
            row1: edges[b.rb + 1],
            col0: edges[b.cb],
            col1: edges[b.cb + 1],
            share: total > 0 ? b.sum / total : 0,
          };
        });
        out.drawnSum = regionSum;
        return out;
      }
      var acc = new Map();
      var drawnSum = 0;
      chosenHeads.forEach(function (h) {
        for (var m = d.starts[h]; m < d.starts[h + 1]; m++) {
          var c = d.cells[m];
          var i = Math.floor(c / T);
          var j = c - i * T;
          var row = rowsAreKeys ? j : i;
          var col = rowsAreKeys ? i : j;
          if (row < t[0] || row >= t[1] || col < t[2] || col >= t[3]) continue;
          var key = row * T + col;
          acc.set(key, (acc.get(key) || 0) + d.values[m]);
          drawnSum += d.values[m];
        }
      });
      var items = [];
      acc.forEach(function (v, key) {
        var row = Math.floor(key / T);
        items.push({ row: row, col: key - row * T, share: total > 0 ? v / total : 0 });
      });
      out.items = items;
      out.drawnSum = drawnSum;
      return out;
    }

    function px(pos, lo, hi) {
      return ((pos - lo) / (hi - lo)) * side;
    }

    function drawLabels(g, t) {
      // rows on the left, columns below; a label per block (overview) or token (zoom), thinned
      g.fillStyle = "#3d3d3d";
      g.font = "9px " + "system-ui, sans-serif";
      var zoom = stack.length > 0;
      function labels(lo, hi, place) {
        var list = [];
        if (zoom) {
          for (var p = lo; p < hi; p++) list.push([p, p + 1, tokens[p]]);
        } else {
          for (var b = 0; b < nb; b++) list.push([edges[b], edges[b + 1], long.labels[b]]);
        }
        var last = -1e9;
        list.forEach(function (item) {
          var mid = (px(item[0], lo, hi) + px(item[1], lo, hi)) / 2;
          if (mid - last < 10) return;
          last = mid;
          place(mid, String(item[2]).slice(0, 24));
        });
      }
      g.textAlign = "right";
      g.textBaseline = "middle";
      labels(t[0], t[1], function (mid, text) {
        g.fillText(text, L.left - L.gap - 3, L.top + mid, L.left - L.gap - 6);
      });
      labels(t[2], t[3], function (mid, text) {
        g.save();
        g.translate(L.left + mid, L.top + side + L.gap + 3);
        g.rotate(-Math.PI / 2);
        g.fillText(text, 0, 0, L.bottom - L.gap - 24);
        g.restore();
      });
      // axis titles
      g.fillStyle = "#1f1f1f";
      g.font = "600 12px system-ui, sans-serif";
      g.textAlign = "center";
      var rowTitle = rowsAreKeys ? long.titles.key : long.titles.query;
      var colTitle = rowsAreKeys ? long.titles.query : long.titles.key;
      g.fillText(colTitle, L.left + side / 2, height - 8);
      g.save();
      g.translate(10, L.top + side / 2);
      g.rotate(-Math.PI / 2);
      g.fillText(rowTitle, 0, 0);
      g.restore();
    }

    function drawBrackets(g, t) {
      g.strokeStyle = "#555";
      g.fillStyle = "#555";
      g.lineWidth = 1;
      g.font = "9px system-ui, sans-serif";
      long.spans.forEach(function (span) {
        var name = span[0].charAt(0) === "<" ? span[0] : "<" + span[0] + ">";
        // columns: under the plot
        var a = Math.max(span[1], t[2]);
        var b = Math.min(span[2], t[3]);
        if (a < b) {
          var x0 = L.left + px(a, t[2], t[3]) + 1;
          var x1 = L.left + px(b, t[2], t[3]) - 1;
          var y = L.top + side;
          g.beginPath();
          g.moveTo(x0, y + 2);
          g.lineTo(x0, y + 6);
          g.lineTo(x1, y + 6);
          g.lineTo(x1, y + 2);
          g.stroke();
          g.textAlign = "center";
          g.textBaseline = "top";
          if (x1 - x0 > 20) g.fillText(name, (x0 + x1) / 2, y + 8, x1 - x0);
        }
        a = Math.max(span[1], t[0]);
        b = Math.min(span[2], t[1]);
        if (a < b) {
          var y0 = L.top + px(a, t[0], t[1]) + 1;
          var y1 = L.top + px(b, t[0], t[1]) - 1;
          var x = L.left;
          g.beginPath();
          g.moveTo(x - 2, y0);
          g.lineTo(x - 6, y0);
          g.lineTo(x - 6, y1);
          g.lineTo(x - 2, y1);
          g.stroke();
          if (y1 - y0 > 20) {
            g.save();
            g.translate(x - 9, (y0 + y1) / 2);
            g.rotate(-Math.PI / 2);
            g.textAlign = "center";
            g.textBaseline = "bottom";
            g.fillText(name, 0, 0, y1 - y0);
            g.restore();
          }
        }
      });
    }

    function drawMarks(g, t) {
      // search hits as ticks outside both axes, the picked query and key as lines
      g.fillStyle = "#ff7a00";
      hits.forEach(function (p) {
        if (p >= t[0] && p < t[1]) g.fillRect(L.left + side + 2, L.top + px(p, t[0], t[1]), 6, Math.max(1.5, px(p + 1, t[0], t[1]) - px(p, t[0], t[1])));
        if (p >= t[2] && p < t[3]) g.fillRect(L.left + px(p, t[2], t[3]), L.top - 5, Math.max(1.5, px(p + 1, t[2], t[3]) - px(p, t[2], t[3])), 4);
      });
      if (!picked) return;
      var row = rowsAreKeys ? picked.key : picked.query;
      var col = rowsAreKeys ? picked.query : picked.key;
      g.strokeStyle = long.outline;
      g.lineWidth = 1.5;
      if (row >= t[0] && row < t[1]) {
        g.strokeRect(L.left, L.top + px(row, t[0], t[1]), side, Math.max(1, px(row + 1, t[0], t[1]) - px(row, t[0], t[1])));
      }
      if (col >= t[2] && col < t[3]) {
        g.strokeRect(L.left + px(col, t[2], t[3]), L.top, Math.max(1, px(col + 1, t[2], t[3]) - px(col, t[2], t[3])), side);
      }
    }

    function legendBar(g) {
      var x = L.left + side + 14;
      var top = L.top + 10;
      var h = Math.min(200, side - 20);
      for (var k = 0; k < h; k++) {
        g.fillStyle = colors[Math.round(255 * (1 - k / (h - 1)))];
        g.fillRect(x, top + k, 12, 1);
      }
    }

    var axesRange = null;
    function drawAxes(t) {
      var key = t.join();
      if (key === axesRange) return;
      axesRange = key;
      var g = axes.g;
      g.clearRect(0, 0, width, height);
      drawLabels(g, t);
      drawBrackets(g, t);
      legendBar(g);
    }

    /* Rectangles by colour: one fillStyle (a CSS colour parsed) per colour, not per rectangle. */
    function fillByColour(g, items, scale, rect) {
      var byColour = new Array(256);
      items.forEach(function (it) {
        var c = Math.round(it.share * scale);
        (byColour[c] || (byColour[c] = [])).push(it);
      });
      byColour.forEach(function (list, c) {
        g.fillStyle = colors[c];
        list.forEach(rect);
      });
    }

    function drawLegend(g, max) {
      var x = L.left + side + 14;
      var top = L.top + 10;
      var h = Math.min(200, side - 20);
      g.fillStyle = "#3d3d3d";
      g.font = "9px system-ui, sans-serif";
      g.textAlign = "left";
      g.textBaseline = "middle";
      g.fillText((100 * max).toPrecision(2) + "%", x + 15, top);
      g.fillText("0", x + 15, top + h);
      g.font = "600 10px system-ui, sans-serif";
      g.fillText("share", x, top - 8 < 0 ? 0 : top + h + 14);
    }

    function draw() {
      drawn = compute();
      var g = base.g;
      var t = [drawn.rows[0], drawn.rows[1], drawn.cols[0], drawn.cols[1]];
      g.clearRect(0, 0, width, height);
      g.fillStyle = colors[0];
      g.fillRect(L.left, L.top, side, side);
      var max = 0;
      drawn.items.forEach(function (it) {
        if (it.share > max) max = it.share;
      });
      var scale = max > 0 ? 255 / max : 0;
      if (drawn.mode === "overview") {
        fillByColour(g, drawn.items, scale, function (it) {
          var x0 = px(it.col0, t[2], t[3]);
          var y0 = px(it.row0, t[0], t[1]);
          g.fillRect(L.left + x0, L.top + y0, px(it.col1, t[2], t[3]) - x0, px(it.row1, t[0], t[1]) - y0);
        });
      } else {
        var w = Math.max(1, side / (t[3] - t[2]));
        var h = Math.max(1, side / (t[1] - t[0]));
        fillByColour(g, drawn.items, scale, function (it) {
          g.fillRect(L.left + px(it.col, t[2], t[3]), L.top + px(it.row, t[0], t[1]), w, h);
        });
      }
      drawAxes(t);
      drawMarks(g, t);
      drawLegend(g, max);
      back.disabled = !stack.length;
      where.textContent = drawn.mode === "overview"
        ? "overview: " + nb + " × " + nb + " blocks of ~" + Math.round(T / nb) + " tokens"
        : "zoomed: " + rangeText(rowsAreKeys ? "keys" : "queries", t[0], t[1]) + " × " + rangeText(rowsAreKeys ? "queries" : "keys", t[2], t[3]);
      altSoon();
      state.draws += 1;
      if (typeof api.onDraw === "function") api.onDraw(state.draws);
    }

    // The text alternative is written in a task after the map's (off the path from a click to
    // the drawn map); rg.settled() waits for it.
    var altPending = false;
    function altSoon() {
      if (altPending) return;
      altPending = true;
      textDone = textDone.then(function () {
        return new Promise(function (resolve) {
          setTimeout(function () {
            altPending = false;
            if (rg.view === view) longAlt();
            resolve();
          }, 0);
        });
      });
    }

    // the text alternative: the view's strongest blocks (overview) or cells (zoomed) as a table
    function longAlt() {
      var table = find(root, "alt-cells");
      if (!table) return;
      var body = table.tBodies[0];
      body.textContent = "";
      // the strongest ALT_CELLS in one pass (no sort of every block on each click); ties keep
      // the items' order, rows then columns
      var items = [];
      drawn.items.forEach(function (it) {
        if (!(it.share > 0)) return;
        var at = items.length;
        while (at > 0 && items[at - 1].share < it.share) at--;
        if (at < ALT_CELLS) {
          items.splice(at, 0, it);
          if (items.length > ALT_CELLS) items.pop();
        }
      });
      function where(a, b) {
        return b - a > 1 ? tokenLabel(tokens, a) + " … " + tokenLabel(tokens, b - 1) + " (" + a + "–" + (b - 1) + ")" : tokenLabel(tokens, a) + " (" + a + ")";
      }
      items.slice(0, ALT_CELLS).forEach(function (it) {
        var rows = it.row0 === undefined ? [it.row, it.row + 1] : [it.row0, it.row1];
        var cols = it.col0 === undefined ? [it.col, it.col + 1] : [it.col0, it.col1];
        var q = rowsAreKeys ? cols : rows;
        var k = rowsAreKeys ? rows : cols;
        var tr = body.insertRow();
        tr.insertCell().textContent = where(q[0], q[1]);
        tr.insertCell().textContent = where(k[0], k[1]);
        var share = tr.insertCell();
        share.className = "rg-n";
        share.textContent = (100 * it.share).toFixed(2) + "%";
      });
      if (!items.length) {
        var cell = body.insertRow().insertCell();
        cell.colSpan = 3;
        cell.textContent = !chosenHeads.length ? "Nothing selected." : "No stored cell of the selection lies in this region.";
      }
      var caption = find(root, "alt-cells-caption");
      if (caption) {
        caption.textContent = drawn.mode === "overview" ? "Strongest blocks of the selection" : "Strongest cells of the zoomed region";
      }
    }

    function rangeText(what, a, b) {
      return what + " " + a + "–" + (b - 1);
    }

    function caption(text) {
      if (!drawn || !chosenHeads.length || !(drawn.total > 0)) return text;
      if (drawn.mode === "overview") {
        return text + " · the overview's blocks carry " + percent(drawn.regionSum / drawn.total) + " of its saliency";
      }
      var inRegion = drawn.regionSum / drawn.total;
      var carried = drawn.regionSum > 0 ? drawn.drawnSum / drawn.regionSum : 1;
      return (
        text + " · this region holds " + percent(inRegion) + " of its saliency; the " + drawn.items.length +
        " cells drawn carry " + percent(carried) + " of the region's"
      );
    }

    function selectHeads() {
      chosenHeads = rg.selection().map(function (h) {
        return (h[0] - 1) * d.heads + (h[1] - 1);
      });
    }

    function zoom(r) {
      var cur = region();
      var next = [
        Math.max(cur[0], Math.min(r[0], r[1])),
        Math.min(cur[1], Math.max(r[0], r[1])),
        Math.max(cur[2], Math.min(r[2], r[3])),
        Math.min(cur[3], Math.max(r[2], r[3])),
      ];
      if (next[0] >= next[1] || next[2] >= next[3]) return;
      if (next.join() === cur.join()) return;
      stack.push(next);
      draw();
      setCaption();
    }

    function zoomOut() {
      if (!stack.length) return;
      stack.pop();
      draw();
      setCaption();
    }

    // pointer position -> (token row, token column) in the current range, or null
    function at(event) {
      var box = over.canvas.getBoundingClientRect();
      var x = event.clientX - box.left - L.left;
      var y = event.clientY - box.top - L.top;
      if (x < 0 || y < 0 || x >= side || y >= side) return null;
      var t = [drawn.rows[0], drawn.rows[1], drawn.cols[0], drawn.cols[1]];
      return {
        x: x,
        y: y,
        row: Math.min(t[1] - 1, t[0] + Math.floor((y / side) * (t[1] - t[0]))),
        col: Math.min(t[3] - 1, t[2] + Math.floor((x / side) * (t[3] - t[2]))),
      };
    }
    function blockOf(pos) {
      var b = 0;
      while (b + 1 < nb && edges[b + 1] <= pos) b++;
      return b;
    }
    function tokenText(a, b) {
      var shown = tokens.slice(a, Math.min(b, a + 6)).join(" ");
      return b - a > 6 ? shown + " …" : shown;
    }

    function hover(event, p) {
      if (!p) {
        tooltip.call(null, null, event, null, null);
        return;
      }
      var value;
      var rowName = rowsAreKeys ? "keys" : "queries";
      var colName = rowsAreKeys ? "queries" : "keys";
      if (drawn.mode === "overview") {
        var rb = blockOf(p.row);
        var cb = blockOf(p.col);
        var s = 0;
        chosenHeads.forEach(function (h) {
          s += blockSum(h, rb, cb);
        });
        value = {};
        value[rowName] = edges[rb] + "–" + (edges[rb + 1] - 1) + ": " + tokenText(edges[rb], edges[rb + 1]);
        value[colName] = edges[cb] + "–" + (edges[cb + 1] - 1) + ": " + tokenText(edges[cb], edges[cb + 1]);
        value.saliency = drawn.total > 0 ? (s / drawn.total).toFixed(4) : "0";
      } else {
        var q = rowsAreKeys ? p.col : p.row;
        var k = rowsAreKeys ? p.row : p.col;
        var share = 0;
        drawn.items.forEach(function (it) {
          if (it.row === p.row && it.col === p.col) share = it.share;
        });
        value = { query: tokenLabel(tokens, q), key: tokenLabel(tokens, k), "query position": q, "key position": k, saliency: share.toFixed(4) };
      }
      tooltip.call(null, null, event, null, value);
    }

    var dragging = null;
    function drawBrush(a, b) {
      var g = over.g;
      g.clearRect(0, 0, width, height);
      if (!a || !b) return;
      g.fillStyle = "rgba(255, 214, 10, 0.15)";
      g.strokeStyle = long.outline;
      g.lineWidth = 1.5;
      var x = L.left + Math.min(a.x, b.x);
      var y = L.top + Math.min(a.y, b.y);
      g.fillRect(x, y, Math.abs(a.x - b.x), Math.abs(a.y - b.y));
      g.strokeRect(x, y, Math.abs(a.x - b.x), Math.abs(a.y - b.y));
    }
    over.canvas.addEventListener("pointerdown", function (event) {
      var p = at(event);
      if (!p) return;
      dragging = { from: p, to: p };
      try {
        over.canvas.setPointerCapture(event.pointerId);
      } catch (err) {
        /* synthetic pointers have no capture */
      }
      event.preventDefault();
    });
    over.canvas.addEventListener("pointermove", function (event) {
      var p = at(event);
      if (dragging) {
        if (p) dragging.to = p;
        drawBrush(dragging.from, dragging.to);
        return;
      }
      hover(event, p);
    });
    over.canvas.addEventListener("pointerleave", function (event) {
      if (!dragging) hover(event, null);
    });
    over.canvas.addEventListener("pointerup", function (event) {
      if (!dragging) return;
      var a = dragging.from;
      var b = at(event) || dragging.to;
      dragging = null;
      drawBrush(null, null);
      tooltip.call(null, null, event, null, null);
      var moved = Math.abs(a.x - b.x) + Math.abs(a.y - b.y) > 4;
      if (!moved && stack.length) {
        var q = rowsAreKeys ? a.col : a.row;
        var k = rowsAreKeys ? a.row : a.col;
        pick(q, k);
        return;
      }
      var r0 = blockOf(Math.min(a.row, b.row));
      var r1 = blockOf(Math.max(a.row, b.row)) + 1;
      var c0 = blockOf(Math.min(a.col, b.col));
      var c1 = blockOf(Math.max(a.col, b.col)) + 1;
      zoom([r0, r1, c0, c1]);
    });
    back.addEventListener("click", zoomOut);
    document.addEventListener("keydown", function (event) {
      if (event.key === "Escape" && rg.view === view && stack.length) zoomOut();
    });

    // the token strip: every token once, the picked query and key and the search hits marked;
    // made in a task after the map's first draw (thousands of elements)
    var spans = [];
    function buildStrip() {
      var frag = document.createDocumentFragment();
      tokens.forEach(function (text, p) {
        var el = document.createElement("span");
        el.className = "rg-tok";
        el.textContent = text;
        el.setAttribute("data-pos", String(p));
        if (unknown[p] !== undefined) {
          el.className += " rg-tok-unk";
          el.title = tokenLabel(tokens, p);
          var word = document.createElement("del");
          word.className = "rg-unk-word";
          word.textContent = unknown[p];
          el.appendChild(word);
        }
        frag.appendChild(el);
        frag.appendChild(document.createTextNode(" "));
        spans.push(el);
      });
      strip.textContent = "";
      strip.appendChild(frag);
    }
    setTimeout(buildStrip, 0);
    strip.addEventListener("click", function (event) {
      var el = event.target.closest ? event.target.closest(".rg-tok") : null;
      if (!el) return;
      var p = +el.getAttribute("data-pos");
      pick(p, p);
    });
    function pick(q, k) {
      if (!spans.length) buildStrip();
      if (picked) {
        spans[picked.query].classList.remove("rg-tok-query");
        spans[picked.key].classList.remove("rg-tok-key");
      }
      picked = { query: q, key: k };
      spans[q].classList.add("rg-tok-query");
      spans[k].classList.add("rg-tok-key");
      spans[q].scrollIntoView({ block: "nearest" });
      draw();
    }
    search.addEventListener("input", function () {
      if (!spans.length) buildStrip();
      hits.forEach(function (p) {
        spans[p].classList.remove("rg-tok-hit");
      });
      var needle = search.value.trim().toLowerCase();
      hits = [];
      if (needle) {
        tokens.forEach(function (text, p) {
          if (String(text).toLowerCase().indexOf(needle) >= 0) hits.push(p);
        });
      }
      hits.forEach(function (p) {
        spans[p].classList.add("rg-tok-hit");
      });
      hitsText.textContent = needle ? hits.length + " found" : "";
      if (hits.length) spans[hits[0]].scrollIntoView({ block: "nearest" });
      draw();
    });

    // the map as drawn, its cells and its axes in one canvas (the PNG's right half)
    function image() {
      var out = document.createElement("canvas");
      out.width = base.canvas.width;
      out.height = base.canvas.height;
      var g = out.getContext("2d");
      g.drawImage(base.canvas, 0, 0);
      g.drawImage(axes.canvas, 0, 0);
      return out;
    }

    var api = {
      state: function () {
        return { mode: stack.length ? "zoom" : "overview", region: region().slice(), heads: chosenHeads.slice(), picked: picked, hits: hits.slice(), draws: state.draws };
      },
      drawn: function () {
        return drawn;
      },
      zoom: zoom,
      back: zoomOut,
      layout: function () {
        var box = over.canvas.getBoundingClientRect();
        return { left: box.left + L.left, top: box.top + L.top, side: side };
      },
      image: image,
      onDraw: null,
    };
    rg.long = api;
    selectHeads();
    draw();
    return {
      update: function () {
        selectHeads();
        draw();
      },
      caption: caption,
      image: image,
    };
  }

  /* The grid (Vega, at twice its size) and a long input's token map side by side, as PNG. */
  function longImage(view, heat) {
    return view.toCanvas(2).then(function (grid) {
      var out = document.createElement("canvas");
      var scale = 2 / (window.devicePixelRatio || 1);
      out.width = grid.width + heat.width * scale;
      out.height = Math.max(grid.height, heat.height * scale);
      var g = out.getContext("2d");
      g.fillStyle = "white";
      g.fillRect(0, 0, out.width, out.height);
      g.drawImage(grid, 0, 0);
      g.drawImage(heat, grid.width, 0, heat.width * scale, heat.height * scale);
      return out.toDataURL("image/png");
    });
  }

  /* The index: its table and head list are reportgen-index.js's (rg.indexTable); a change of
   * the grid's selection ranks the table by the selected heads and lists the inputs where
   * they are strongest. */
  function mountIndex(root, data, view) {
    if (!rg.indexTable) throw new Error("reportgen: assets/reportgen-index.js did not load");
    var table = rg.indexTable(root, data, { selection: rg.selection, describe: describe });
    onSelection(view, table.select);
  }

  /* ---- Theme: light or dark, from prefers-color-scheme or the header's button ------------
   * The CSS follows the system through light-dark(); the charts are drawn on a canvas, so
   * their colours are chosen when the view is made: `themed` swaps the specs' ink colours for
   * their dark counterparts (data rows are passed through untouched). The choice lasts for
   * the page (pages keep no storage). */
  var darkQuery = window.matchMedia ? window.matchMedia("(prefers-color-scheme: dark)") : null;
  var themeChoice = null; // null: follow the system; else "light" or "dark"
  var DARK = {
    background: "#1f1f27", // --paper
    ink: {
      white: "#1f1f27",
      "#3d3d3d": "#c5c5cf",
      "#1f1f1f": "#e8e8ee",
      "#888": "#8a8a96",
      "#555": "#b0b0bb",
      "#444": "#c5c5cf",
      "#ececf1": "#2a2a33",
      "#2b2b30": "#e8e8ee",
    },
    text: "#e8e8ee",
    label: "#c5c5cf",
  };

  function isDark() {
    return themeChoice ? themeChoice === "dark" : !!(darkQuery && darkQuery.matches);
  }

  function recolor(node, key) {
    if (typeof node === "string") return DARK.ink.hasOwnProperty(node) ? DARK.ink[node] : node;
    // rows and the tokens param's list stay as they are (a token may read "white")
    if (!node || typeof node !== "object" || key === "values") return node;
    if (key === "value" && Array.isArray(node)) return node;
    if (Array.isArray(node)) {
      return node.map(function (item) {
        return recolor(item, null);
      });
    }
    var out = {};
    Object.keys(node).forEach(function (k) {
      out[k] = recolor(node[k], k);
    });
    return out;
  }

  function themed(spec, dark) {
    if (!dark) return spec;
    var out = recolor(spec, null);
    out.background = DARK.background;
    var config = (out.config = out.config || {});
    ["axis", "legend", "title"].forEach(function (k) {
      config[k] = config[k] || {};
    });
    config.axis.labelColor = DARK.label;
    config.axis.titleColor = DARK.text;
    config.legend.labelColor = DARK.label;
    config.legend.titleColor = DARK.text;
    config.title.color = DARK.text;
    config.text = Object.assign({}, config.text, { fill: DARK.text });
    return out;
  }

  function applyTheme() {
    var button = document.querySelector('[data-rg="theme"]');
    var dark = isDark();
    if (themeChoice) {
      document.documentElement.setAttribute("data-theme", themeChoice);
      var meta = document.querySelector('meta[name="color-scheme"]');
      if (meta) meta.setAttribute("content", themeChoice); // light-dark() follows it
    }
    if (button) {
      button.hidden = false;
      button.textContent = dark ? "Light" : "Dark";
      button.setAttribute("aria-pressed", String(dark));
      button.setAttribute("aria-label", dark ? "switch to the light theme" : "switch to the dark theme");
    }
  }

  /* ---- Height for a host page (a notebook's output cell) ----------------------------------
   * A report inside a frame tells its parent how tall it is, so the host can size the frame to
   * the report (reportgen.site.iframe_html listens). Only the height leaves the frame, and only
   * when it changes; a sandboxed frame may post messages. */
  function postHeight() {
    if (window.parent === window || typeof ResizeObserver === "undefined") return;
    var last = -1;
    function send() {
      var height = Math.ceil(document.documentElement.scrollHeight);
      if (Math.abs(height - last) < 2) return;
      last = height;
      window.parent.postMessage({ reportgen: "height", height: height }, "*");
    }
    new ResizeObserver(send).observe(document.documentElement);
    send();
  }

  function wireTheme() {
    var button = document.querySelector('[data-rg="theme"]');
    if (button) {
      button.addEventListener("click", function () {
        themeChoice = isDark() ? "light" : "dark";
        applyTheme();
        redraw();
      });
    }
    if (darkQuery && darkQuery.addEventListener) {
      darkQuery.addEventListener("change", function () {
        if (themeChoice) return;
        applyTheme();
        redraw();
      });
    }
    applyTheme();
  }

  /* ---- Layout: below ~800 px the grid goes above the heatmap ------------------------------
   * and the legends of the views of names.fit (grid, heatmap, the charts by layer; on the
   * index, the whole view, Vega's group names.root) go under them. At any width `fitted`
   * shrinks those views to the chart's width once drawn: side by side, a long-ish input's
   * heatmap takes what the grid leaves it, rather than scrolling its row labels away. */
  var NARROW = 800;
  var FIT_MIN = 120; // px: the narrowest a fitted view gets

  function narrow(el) {
    var width = (el && el.clientWidth) || window.innerWidth;
    return width < NARROW;
  }

  function fits() {
    return (names && names.fit) || [];
  }

  function legendUnder(legend, widthSignal) {
    var under = Object.assign({}, legend, { orient: "bottom" });
    if (legend.gradientLength !== undefined) {
      under.direction = "horizontal";
      under.gradientLength = { signal: "clamp(" + widthSignal + ", 64, 240)" };
    } else {
      under.direction = "vertical";
    }
    return under;
  }

  function arranged(spec, isNarrow) {
    if (!isNarrow || !names) return spec;
    var widths = {};
    fits().forEach(function (f) {
      widths[f[0]] = f[1];
    });
    function stack(node) {
      var marks = node.marks || [];
      var copy = node;
      var width = widths[node === spec ? names.root : node.name];
      if (width && node.legends) {
        copy = Object.assign({}, node, {
          legends: node.legends.map(function (legend) {
            return legendUnder(legend, width);
          }),
        });
      }
      var hasGrid = marks.some(function (m) {
        return m.name === names.grid_group;
      });
      var hasHeat = marks.some(function (m) {
        return m.name === names.heat_group;
      });
      if (hasGrid && hasHeat && node.layout) {
        copy = Object.assign({}, copy);
        copy.layout = Object.assign({}, node.layout, { columns: 1, padding: 24 });
      }
      if (!marks.length) return copy;
      var changed = false;
      var next = marks.map(function (m) {
        var n = m.type === "group" ? stack(m) : m;
        if (n !== m) changed = true;
        return n;
      });
      return changed ? Object.assign({}, copy, { marks: next }) : copy;
    }
    return stack(spec);
  }

  /* The right edge of each named group mark, in the view's coordinates (legends and axis
   * labels included). */
  function rightEdges(view) {
    var found = {};
    (function walk(mark, ox) {
      if (!mark || mark.marktype !== "group") return;
      mark.items.forEach(function (g) {
        if (mark.name && g.bounds) found[mark.name] = ox + g.bounds.x2;
        (g.items || []).forEach(function (child) {
          walk(child, ox + (g.x || 0));
        });
      });
    })(view.scenegraph().root, 0);
    return found;
  }

  /* Each view of names.fit narrows by what it overflows the chart's width (its height in
   * proportion where given: grid cells and the heatmap stay square), down to FIT_MIN px, or
   * widens again as far as its size in the spec. Its cells get smaller, the axes' greedy
   * label overlap thins their labels, and the segment brackets follow (they are placed from
   * the size signals). A view left of the chart's edge (the grid beside the heatmap) keeps
   * its size. Labels thinned differently can move an edge again: up to three passes. */
  function fitted(view, el, passes) {
    if (passes === undefined) passes = 3;
    var room = el ? el.clientWidth : 0;
    if (!fits().length || !room) return Promise.resolve(view);
    var spec = current.data.spec;
    var full = { width: spec.width, height: spec.height }; // a single view's size
    (spec.signals || []).forEach(function (s) {
      full[s.name] = s.value;
    });
    var pad = view.padding();
    var left = pad.left + view.origin()[0];
    var edges = rightEdges(view);
    var changed = false;
    fits().forEach(function (f) {
      var group = f[0];
      var width = f[1];
      var height = f[2];
      if (edges[group] === undefined || typeof full[width] !== "number") return;
      var over = left + edges[group] + pad.right - room;
      var was = view.signal(width);
      var next = Math.floor(Math.max(FIT_MIN, Math.min(full[width], was - over)));
      if (next === was) return;
      view.signal(width, next);
      if (height) view.signal(height, Math.round((full[height] * next) / full[width]));
      changed = true;
    });
    if (!changed) return Promise.resolve(view);
    return view
      .resize()
      .runAsync()
      .then(function () {
        return passes > 1 ? fitted(view, el, passes - 1) : view;
      });
  }

  /* ---- Drawing again (theme switch, crossing the narrow width), keeping the selection ---- */
  var current = null; // {root, data} of the page on screen
  var drawnNarrow = null;

  function redraw() {
    // a long input's overview keeps its own canvas and state: its view is not drawn again
    if (!current || !rg.view || !current.data.spec || current.data.long) {
      return Promise.resolve(null);
    }
    var old = rg.view;
    var kept = {};
    names.stores.forEach(function (store) {
      try {
        kept[store] = old.data(store).map(function (t) {
          return { unit: t.unit, fields: t.fields, values: t.values };
        });
      } catch (err) {
        /* the index grid has no brush */
      }
    });
    var signed = hasSigned(old) ? old.signal(names.signed) : null;
    var keys = keyState;
    old.finalize();
    rg.view = null;
    newReady();
    var root = current.root;
    find(root, "chart").textContent = "";
    return mount(root, current.data, function (view) {
      Object.keys(kept).forEach(function (store) {
        view.data(store, kept[store]);
      });
      if (signed !== null) view.signal(names.signed, signed);
      keyState = keys;
    });
  }

  function watchWidth() {
    window.addEventListener("resize", function () {
      if (!current || !rg.view) return;
      var el = find(current.root, "chart");
      if (narrow(el) !== drawnNarrow) redraw();
      else fitted(rg.view, el);
    });
  }

  /* ---- Keyboard: the chart is focusable; arrows move the selected head ------------------- */
  var keyState = null; // {cursor: [layer, head], anchor: [layer, head]}

  function gridShape(view) {
    var layers = 0;
    var heads = 0;
    view.data(names.heads).forEach(function (row) {
      layers = Math.max(layers, row.layer);
      heads = Math.max(heads, row.head);
    });
    return [layers, heads];
  }

  function pickTuples(heads) {
    var fields = [
      { type: "E", field: "layer" },
      { type: "E", field: "head" },
    ];
    return heads.map(function (h) {
      return { unit: names.grid_unit, fields: fields, values: [h[0], h[1]] };
    });
  }

  function block(a, b) {
    var heads = [];
    for (var l = Math.min(a[0], b[0]); l <= Math.max(a[0], b[0]); l++) {
      for (var h = Math.min(a[1], b[1]); h <= Math.max(a[1], b[1]); h++) heads.push([l, h]);
    }
    return heads;
  }

  function select(view, heads) {
    view.data(names.stores[0], pickTuples(heads));
    names.stores.slice(1).forEach(function (store) {
      try {
        view.data(store, []);
      } catch (err) {
        /* no brush */
      }
    });
    return view.runAsync();
  }

  function announcer(el) {
    var live = el.parentNode.querySelector('[data-rg="announce"]');
    if (!live) {
      live = document.createElement("p");
      live.className = "rg-sr";
      live.setAttribute("data-rg", "announce");
      live.setAttribute("aria-live", "polite");
      el.parentNode.insertBefore(live, el.nextSibling);
    }
    return live;
  }

  var MOVES = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };

  /* The comparison page's units in the heatmap's row order (by the last checkpoint's score). */
  function rankedUnits(view) {
    var rows = view.data(names.heads);
    var last = 0;
    rows.forEach(function (r) {
      if (r.c > last) last = r.c;
    });
    return rows
      .filter(function (r) {
        return r.c === last;
      })
      .sort(function (a, b) {
        return a.rank - b.rank;
      })
      .map(function (r) {
        return [r.layer, r.head];
      });
  }

  // Ranked pages (the comparison): up and down move along the rows, Shift extends a run.
  function rankedKey(event, view, move, enter, escape) {
    var order = rankedUnits(view);
    var at = function (h) {
      for (var n = 0; n < order.length; n++) if (order[n][0] === h[0] && order[n][1] === h[1]) return n;
      return 0;
    };
    if (!keyState) {
      var chosen = rg.selection();
      var start = chosen.length ? at(chosen[0]) : 0;
      keyState = { cursor: start, anchor: start };
    }
    var heads;
    if (escape) {
      heads = [];
    } else if (enter) {
      keyState.anchor = keyState.cursor;
      heads = [order[keyState.cursor]];
    } else {
      var step = move[0] || move[1];
      var c = Math.max(0, Math.min(order.length - 1, keyState.cursor + step));
      keyState.cursor = c;
      if (!event.shiftKey) keyState.anchor = c;
      var lo = Math.min(keyState.anchor, c);
      var hi = Math.max(keyState.anchor, c);
      heads = event.shiftKey ? order.slice(lo, hi + 1) : [order[c]];
    }
    return heads;
  }

  function onKey(event) {
    var view = rg.view;
    if (!view || !names || event.altKey || event.ctrlKey || event.metaKey) return;
    var move = MOVES[event.key];
    var enter = event.key === "Enter" || event.key === " ";
    var escape = event.key === "Escape";
    if (!move && !enter && !escape) return;
    if (names.ranked) {
      event.preventDefault();
      var chosen = rankedKey(event, view, move, enter, escape);
      var said = announcer(event.currentTarget);
      select(view, chosen).then(function () {
        said.textContent = chosen.length ? describe(chosen) + " selected" : "Nothing selected";
      });
      return;
    }
    // a long input's zoomed map: Escape zooms out (the page's own handler), the selection stays
    if (escape && current && current.data.long && rg.long && rg.long.state().mode === "zoom") return;
    event.preventDefault();
    var shape = gridShape(view);
    var chosen = rg.selection();
    if (!keyState) {
      var start = chosen.length ? chosen[0] : [1, 1];
      keyState = { cursor: start.slice(), anchor: start.slice() };
    }
    var heads;
    if (escape) {
      heads = [];
    } else if (enter) {
      keyState.anchor = keyState.cursor.slice();
      heads = [keyState.cursor];
    } else {
      var c = keyState.cursor;
      c = [
        Math.max(1, Math.min(shape[0], c[0] + move[0])),
        Math.max(1, Math.min(shape[1], c[1] + move[1])),
      ];
      keyState.cursor = c;
      if (!event.shiftKey) keyState.anchor = c.slice();
      heads = event.shiftKey ? block(keyState.anchor, c) : [c];
    }
    var live = announcer(event.currentTarget);
    select(view, heads).then(function () {
      live.textContent = heads.length
        ? describe(heads) + " selected"
        : "Nothing selected";
    });
  }

  function wireKeys(root) {
    var el = find(root, "chart");
    if (!el || el.rgKeys) return;
    el.rgKeys = true;
    el.addEventListener("keydown", onKey);
  }

  /* A click on a layer of a chart by layer (names.layer_marks: rollout's layer × token chart)
   * selects that layer's heads in the grid, as Shift+arrows select a block: the heatmap and
   * everything else that follows the grid's selection follow. */
  function wireLayerClicks(view) {
    var layerMarks = (names && names.layer_marks) || [];
    view.addEventListener("click", function (event, item) {
      if (!item || !item.datum || !item.mark || layerMarks.indexOf(item.mark.name) < 0) return;
      var layer = item.datum.layer;
      var heads = gridShape(view)[1];
      keyState = { cursor: [layer, heads], anchor: [layer, 1] };
      select(view, block(keyState.anchor, keyState.cursor));
    });
  }

  /* ---- Signed values (a signed method's page): the toggle to magnitudes ------------------ */
  function hasSigned(view) {
    if (!(names && names.signed && view)) return false;
    try {
      view.signal(names.signed);
      return true;
    } catch (err) {
      return false; // an unsigned method's page has no such param
    }
  }

  function showsSigned(view) {
    return hasSigned(view) && !!view.signal(names.signed);
  }

  function nothingSelected(view) {
    try {
      return !!(names && names.nothing && view.signal(names.nothing));
    } catch (err) {
      return false; // a view without the param (the static figure)
    }
  }

  function wireSigned(root) {
    var button = find(root, "signed");
    if (!button) return;
    button.hidden = false;
    button.addEventListener("click", function () {
      var view = rg.view;
      if (!hasSigned(view)) return;
      var signed = !view.signal(names.signed);
      view
        .signal(names.signed, signed)
        .runAsync()
        .then(function () {
          button.setAttribute("aria-pressed", String(signed));
          button.textContent = signed ? "Show magnitudes" : "Show signed values";
          find(root, "values-signed").hidden = !signed;
          find(root, "values-magnitude").hidden = signed;
          altCells(root, view);
        });
    });
  }

  /* The comparison page's text alternative: the picked units' mean share at each checkpoint. */
  function mountCompare(root, view) {
    function fill() {
      var table = find(root, "alt-picked");
      if (!table || view !== rg.view) return;
      var chosen = {};
      rg.selection().forEach(function (h) {
        chosen[h[0] + ":" + h[1]] = true;
      });
      var rows = view.data(names.heads).filter(function (r) {
        return chosen[r.layer + ":" + r.head];
      });
      var body = table.tBodies[0];
      body.textContent = "";
      rows
        .sort(function (a, b) {
          return a.rank - b.rank || a.c - b.c;
        })
        .forEach(function (r) {
          var tr = body.insertRow();
          tr.insertCell().textContent = r.unit;
          tr.insertCell().textContent = r.checkpoint;
          var mean = tr.insertCell();
          mean.className = "rg-n";
          mean.textContent = (100 * r.mean).toFixed(2) + "%";
        });
      if (!rows.length) {
        var cell = body.insertRow().insertCell();
        cell.colSpan = 3;
        cell.textContent = "Nothing selected.";
      }
    }
    onSelection(view, fill);
    fill();
  }

  /* ---- The text alternative: the heatmap's strongest cells as a table -------------------- */
  var ALT_CELLS = 10;

  function altCells(root, view) {
    var table = find(root, "alt-cells");
    if (!table || view !== rg.view) return;
    var body = table.tBodies[0];
    var tokens = view.signal(names.tokens);
    var rows = rg.data("heat").sort(function (a, b) {
      return Math.abs(b.share) - Math.abs(a.share) || a.i - b.i || a.j - b.j;
    });
    body.textContent = "";
    rows.slice(0, ALT_CELLS).forEach(function (d) {
      var tr = body.insertRow();
      tr.insertCell().textContent = tokenLabel(tokens, d.i) + " (" + d.i + ")";
      tr.insertCell().textContent = tokenLabel(tokens, d.j) + " (" + d.j + ")";
      var share = tr.insertCell();
      share.className = "rg-n";
      share.textContent = (100 * d.share).toFixed(2) + "%";
    });
    if (!rows.length) {
      var cell = body.insertRow().insertCell();
      cell.colSpan = 3;
      cell.textContent = "Nothing selected.";
    }
    var caption = find(root, "alt-cells-caption");
    if (caption) {
      caption.textContent =
        "Strongest cells of the selection" + (showsSigned(view) ? " (signed)" : "");
    }
  }

  /* ---- Export where downloads are blocked (a sandboxed iframe without allow-downloads) ---
   * A sandboxed frame has an opaque origin ("null"); a page there cannot download, so the
   * image is shown under the buttons, to save with the browser's own menu. */
  function downloadsBlocked() {
    try {
      return window.self !== window.top && window.origin === "null";
    } catch (err) {
      return true;
    }
  }

  function save(root, url, filename, kind) {
    if (!downloadsBlocked()) {
      download(url, filename);
      return;
    }
    var box = find(root, "export");
    if (!box) {
      box = document.createElement("div");
      box.className = "rg-export";
      box.setAttribute("data-rg", "export");
      var toolbar = root.querySelector(".rg-toolbar");
      toolbar.parentNode.insertBefore(box, toolbar.nextSibling);
    }
    box.textContent = "";
    var note = document.createElement("p");
    note.className = "rg-note";
    note.textContent =
      "This frame cannot download files: right-click the " + kind + " image below and save it.";
    var img = document.createElement("img");
    img.alt = "the current view as " + kind;
    img.src = url;
    box.appendChild(note);
    box.appendChild(img);
  }

  function saveText(root, text, filename) {
    if (!downloadsBlocked()) {
      var url = URL.createObjectURL(new Blob([text], { type: "application/json" }));
      download(url, filename);
      setTimeout(function () {
        URL.revokeObjectURL(url);
      }, 5000);
      return;
    }
    var box = find(root, "export");
    if (!box) {
      box = document.createElement("div");
      box.className = "rg-export";
      box.setAttribute("data-rg", "export");
      var toolbar = root.querySelector(".rg-toolbar");
      toolbar.parentNode.insertBefore(box, toolbar.nextSibling);
    }
    box.textContent = "";
    var note = document.createElement("p");
    note.className = "rg-note";
    note.textContent = "This frame cannot download files: copy the data below.";
    var area = document.createElement("textarea");
    area.readOnly = true;
    area.rows = 8;
    area.setAttribute("aria-label", "the input's data as JSON");
    area.value = text;
    box.appendChild(note);
    box.appendChild(area);
  }

  function mount(root, data, restore) {
    names = data.names || null;
    unknown = unknownWords(data.unknown);
    current = { root: root, data: data };
    if (!data.spec) {
      rg.view = null;
      resolveReady(null);
      return Promise.resolve(null);
    }
    if (!restore) keyState = null;
    return Promise.resolve()
      .then(function () {
        drawnNarrow = narrow(find(root, "chart"));
        return embed(root, data.spec); // a spec Vega cannot parse rejects here, not throws
      })
      .then(function (view) {
        if (restore) restore(view);
        return view.runAsync();
      })
      .then(function (view) {
        return fitted(view, find(root, "chart"));
      })
      .then(function (view) {
        rg.view = view;
        wireKeys(root);
        wireLayerClicks(view);
        if (data.kind === "example") mountExample(root, data, view);
        if (data.kind === "index") mountIndex(root, data, view);
        if (data.kind === "compare") mountCompare(root, view);
        return view.runAsync();
      })
      .then(function (view) {
        resolveReady(view);
        return view;
      })
      .catch(function (err) {
        var el = find(root, "chart");
        if (el) el.textContent = "The chart could not be drawn: " + err;
        console.error(err);
        resolveReady(null);
        return null;
      });
  }

  /* The single file carries the Vega bundle and each page's data gzipped, in base64. */
  function inflate(element) {
    var bytes = base64Bytes(element.textContent.trim());
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    return new Response(stream).text();
  }

  /* Single-file report: every page is a hidden <section>; a fragment link switches pages. */
  function router() {
    var sections = {};
    Array.prototype.forEach.call(document.querySelectorAll("section.rg-page"), function (s) {
      sections[s.getAttribute("data-key")] = s;
    });
    var current = null;
    var baseTitle = document.title;

    rg.show = function (key) {
      if (!sections[key]) key = "index";
      if (key === current) return rg.ready;
      if (current) sections[current].hidden = true;
      if (rg.view) {
        rg.view.finalize();
        rg.view = null;
      }
      if (tooltipBox) tooltipBox.hidden = true;
      newReady();
      current = key;
      var section = sections[key];
      section.hidden = false;
      var title = section.getAttribute("data-title");
      document.title = key === "index" ? baseTitle : title + " · " + baseTitle;
      var chart = find(section, "chart");
      if (chart) chart.textContent = "";
      inflate(section.querySelector("script.rg-page-data"))
        .then(function (text) {
          if (current === key) return mount(section, JSON.parse(text));
        })
        .catch(function (err) {
          if (chart) chart.textContent = "This page could not be read: " + err;
          console.error(err);
          if (current === key) resolveReady(null);
        });
      window.scrollTo(0, 0);
      return rg.ready;
    };

    function fromHash() {
      var hash = "";
      try {
        hash = window.location.hash.replace(/^#/, "");
      } catch (err) {
        hash = "";
      }
      return hash;
    }

    document.addEventListener("click", function (event) {
      var a = event.target.closest ? event.target.closest("a[href^='#']") : null;
      if (!a) return;
      event.preventDefault();
      var key = a.getAttribute("href").slice(1);
      rg.show(key);
      try {
        history.pushState(null, "", "#" + key);
      } catch (err) {
        /* sandboxed documents may refuse history changes; the page still switches */
      }
    });
    window.addEventListener("hashchange", function () {
      rg.show(fromHash());
    });
    window.addEventListener("popstate", function () {
      rg.show(fromHash());
    });
    rg.show(fromHash());
  }

  wireTheme();
  watchWidth();
  postHeight();
  var boot = JSON.parse(document.getElementById("rg-data").textContent);
  if (boot.kind === "single") {
    inflate(document.getElementById("rg-vega"))
      .then(function (source) {
        (0, eval)(source); // the bundle defines window.vega
        router();
      })
      .catch(function (err) {
        document.getElementById("rg-main").textContent =
          "This report needs a browser with DecompressionStream (2023 or later): " + err;
        resolveReady(null);
      });
  } else {
    mount(document, boot);
  }
})();
