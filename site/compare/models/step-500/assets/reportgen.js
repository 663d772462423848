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

  function newReady() {
    rg.ready = new Promise(function (resolve) {
      resolveReady = resolve;
    });
  }
  newReady();
  rg.view = null;
  var textDone = Promise.resolve(); // the page text's update for the last selection change

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
    var tokens = view.signal(names.tokens);
    return {
      query: tokens[value.i],
      key: tokens[value.j],
      "query position": value.i,
      "key position": value.j,
      saliency: value.share.toFixed(4),
    };
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
   * any dataflow run still going. */
  function onSelection(view, callback) {
    var pending = false;
    function later() {
      if (pending) return;
      pending = true;
      textDone = new Promise(function (resolve) {
        setTimeout(function () {
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

  function mountExample(root, data, view) {
    datasets = { heat: markData(data.spec, names.heat_mark) };
    var caption = find(root, "caption");
    function update() {
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
      caption.textContent = text;
    }
    onSelection(view, update);
    update();
    find(root, "png").addEventListener("click", function () {
      view.toImageURL("png", 2).then(function (url) {
        download(url, data.name + ".png");
      });
    });
    find(root, "svg").addEventListener("click", function () {
      view.toSVG().then(function (svg) {
        var url = URL.createObjectURL(new Blob([svg], { type: "image/svg+xml" }));
        download(url, data.name + ".svg");
        setTimeout(function () {
          URL.revokeObjectURL(url);
        }, 5000);
      });
    });
  }

  function mountIndex(root, data, view) {
    var table = find(root, "table");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var caption = find(root, "caption");
    var heads = data.heads;
    // uint32 little-endian, one row of layers × heads per input
    var scoresOf = new DataView(base64Bytes(data.scores).buffer);
    var perInput = data.per_input;
    function rank() {
      var chosen = rg.selection();
      var scores = rows.map(function (row) {
        var n = +row.getAttribute("data-row");
        var s = 0;
        chosen.forEach(function (h) {
          s += scoresOf.getUint32(4 * (n * perInput + (h[0] - 1) * heads + (h[1] - 1)), true);
        });
        return s / data.scale;
      });
      var order = rows.map(function (row, k) {
        return k;
      });
      if (chosen.length) {
        order.sort(function (a, b) {
          return scores[b] - scores[a] || a - b;
        });
      }
      var frag = document.createDocumentFragment();
      order.forEach(function (k) {
        var cell = find(rows[k], "score");
        cell.textContent = chosen.length ? percent(scores[k]) : "–";
        frag.appendChild(rows[k]);
      });
      body.appendChild(frag);
      caption.textContent = chosen.length
        ? "Ranked by " + describe(chosen) + " (its share of each input's saliency)."
        : "In input order.";
    }
    onSelection(view, rank);
  }

  function mount(root, data) {
    names = data.names || null;
    if (!data.spec) {
      rg.view = null;
      resolveReady(null);
      return Promise.resolve(null);
    }
    return Promise.resolve()
      .then(function () {
        return embed(root, data.spec); // a spec Vega cannot parse rejects here, not throws
      })
      .then(function (view) {
        rg.view = view;
        if (data.kind === "example") mountExample(root, data, view);
        if (data.kind === "index") mountIndex(root, data, view);
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
      inflate(section.querySelector("script.rg-page-data")).then(function (text) {
        if (current === key) mount(section, JSON.parse(text));
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
