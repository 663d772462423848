/* reportgen index table: every input of the run, from the index page's data (`data.rows`, one
 * list per column), sorted, filtered and paged here, so an index of 10,000 inputs draws 50 rows
 * at a time. Classic script, no network, no storage (file:// and <iframe sandbox>). Loaded
 * before reportgen.js, which calls window.reportgen.indexTable(root, data, api) once the
 * index's grid is drawn; the HTML's first rows are what a browser without JavaScript shows.
 *
 * Public surface, window.reportgen.index (the table of the current index page):
 *   order()       the inputs (0-based) the table holds after its filters, in its order
 *   shown()       the inputs of the page of rows on screen
 *   sort(key, descending)  sort by a column: index, id, text, target, predicted, value, top,
 *                 delta_top, delta_random, selected
 *   filter(f)     set filters ({text, target, correct: "correct"|"incorrect"|"none", top: flat
 *                 head index, min, max: Δ top-k bounds, pages: true}), as the controls do
 *   headInputs()  the inputs listed for the selected heads (those whose strongest head is one
 *                 of them), in the listed order
 * Links to input pages come in the data (`data.hrefs`, null for an input without a page).
 */
(function () {
  "use strict";

  var rg = (window.reportgen = window.reportgen || {});
  var LISTED = 20; // inputs listed by name under the grid for the selected heads

  function find(root, name) {
    return root.querySelector('[data-rg="' + name + '"]');
  }

  function base64Bytes(text) {
    var binary = atob(text);
    var bytes = new Uint8Array(binary.length);
    for (var k = 0; k < binary.length; k++) bytes[k] = binary.charCodeAt(k);
    return bytes;
  }

  function number(x, digits) {
    if (x === null || x === undefined) return "–";
    return String(Number(x.toPrecision(digits))).replace("-", "−");
  }

  function signed(x) {
    if (x === null || x === undefined) return "–";
    return (x > 0 ? "+" : x === 0 ? "+" : "") + number(x, 3);
  }

  function percent(x) {
    return (100 * x).toFixed(1) + "%";
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  rg.indexTable = function (root, data, api) {
    var rows = data.rows;
    var count = rows.id.length;
    var hrefs = data.hrefs;
    var heads = data.heads;
    var perInput = data.per_input;
    var scores = new DataView(base64Bytes(data.scores).buffer);
    var table = find(root, "table");
    var body = table.tBodies[0];
    var caption = find(root, "caption");
    var status = find(root, "page-status");
    var state = { key: "index", descending: false, page: 0, size: 50 };
    var filters = {};
    var chosen = []; // selected heads, 1-based [layer, head]
    var selected = null; // Float64Array of the selected heads' summed share per input
    var order = null; // the filtered, sorted inputs
    var listed = [];
    var collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });
    var ranks = {}; // per text column: each input's rank in collation order (made once)
    var haystack = null;

    function headLabel(flat) {
      return "L" + (Math.floor(flat / heads) + 1) + " H" + ((flat % heads) + 1);
    }

    function rankOf(key) {
      if (ranks[key]) return ranks[key];
      var values = rows[key];
      var all = [];
      for (var i = 0; i < count; i++) if (values[i] !== null) all.push(i);
      all.sort(function (a, b) {
        return collator.compare(values[a], values[b]) || a - b;
      });
      var rank = new Int32Array(count).fill(count); // no value: after every value
      for (var k = 0; k < all.length; k++) rank[all[k]] = k;
      return (ranks[key] = rank);
    }

    function keyOf(key) {
      // a number per input to sort by (null: no value, always last)
      if (key === "index") return null;
      if (key === "selected") return selected;
      if (key === "id" || key === "text" || key === "target" || key === "predicted") {
        return rankOf(key);
      }
      if (key === "top") {
        var top = new Float64Array(count);
        for (var i = 0; i < count; i++) top[i] = rows.top[i] - rows.top_score[i] / 2; // head, then share
        return top;
      }
      return rows[key];
    }

    function passes(i) {
      var f = filters;
      if (f.text) {
        if (!haystack) {
          haystack = new Array(count);
          for (var k = 0; k < count; k++) {
            haystack[k] = [rows.id[k], rows.text[k], rows.target[k] || "", rows.predicted[k] || ""]
              .join("\n")
              .toLowerCase();
          }
        }
        if (haystack[i].indexOf(f.text) < 0) return false;
      }
      if (f.target !== undefined && f.target !== "" && rows.target[i] !== f.target) return false;
      if (f.correct) {
        var given = rows.given[i] === 1;
        var right = given && rows.predicted[i] === rows.target[i];
        if (f.correct === "none" ? given : !given || right !== (f.correct === "correct")) {
          return false;
        }
      }
      if (f.top !== undefined && f.top !== "" && rows.top[i] !== +f.top) return false;
      var d = rows.delta_top[i];
      if (f.min !== undefined && f.min !== "" && !(d !== null && d >= +f.min)) return false;
      if (f.max !== undefined && f.max !== "" && !(d !== null && d <= +f.max)) return false;
      if (f.pages && hrefs[i] === null) return false;
      return true;
    }

    function compute() {
      var kept = [];
      for (var i = 0; i < count; i++) if (passes(i)) kept.push(i);
      var values = keyOf(state.key);
      if (values) {
        var sign = state.descending ? -1 : 1;
        kept.sort(function (a, b) {
          var x = values[a];
          var y = values[b];
          var none = (x === null) - (y === null);
          if (none) return none;
          return (x === null ? 0 : sign * (x - y)) || a - b;
        });
      } else if (state.descending) {
        kept.reverse();
      }
      order = kept;
    }

    function cell(row, text, className) {
      var td = el("td", className, text);
      row.appendChild(td);
      return td;
    }

    function drawRow(i) {
      var tr = el("tr");
      tr.setAttribute("data-row", String(i));
      cell(tr, String(i + 1), "rg-n");
      var name = cell(tr, undefined);
      if (hrefs[i] !== null) {
        var a = el("a", "", rows.id[i]);
        a.href = hrefs[i];
        name.appendChild(a);
      } else {
        name.textContent = rows.id[i] + " ";
        var tag = el("span", "rg-tag", "no page");
        tag.title = "no page for this input here";
        name.appendChild(tag);
      }
      cell(tr, rows.text[i], "rg-text");
      var target = cell(tr, rows.target[i] === null ? "–" : rows.target[i]);
      if (!rows.given[i] && rows.target[i] !== null) {
        target.appendChild(document.createTextNode(" "));
        var pred = el("span", "rg-tag", "pred");
        pred.title = "no target given: the model's prediction";
        target.appendChild(pred);
      }
      cell(tr, rows.predicted[i] === null ? "–" : rows.predicted[i]);
      cell(tr, number(rows.value[i], 3), "rg-n");
      var top = cell(tr, headLabel(rows.top[i]) + " ", "rg-nowrap");
      top.appendChild(el("span", "rg-muted", percent(rows.top_score[i])));
      cell(tr, signed(rows.delta_top[i]), "rg-n");
      cell(tr, signed(rows.delta_random[i]), "rg-n");
      cell(tr, selected ? percent(selected[i]) : "–", "rg-n").setAttribute("data-rg", "score");
      return tr;
    }

    function draw() {
      var pages = Math.max(1, Math.ceil(order.length / state.size));
      state.page = Math.min(state.page, pages - 1);
      var start = state.page * state.size;
      var frag = document.createDocumentFragment();
      order.slice(start, start + state.size).forEach(function (i) {
        frag.appendChild(drawRow(i));
      });
      body.textContent = "";
      body.appendChild(frag);
      var shown = order.length
        ? "rows " + (start + 1) + "–" + Math.min(start + state.size, order.length) + " of " +
          order.length
        : "no input matches";
      if (order.length !== count) shown += " (filtered from " + count + ")";
      status.textContent = shown + " · page " + (state.page + 1) + " of " + pages;
      find(root, "page-prev").disabled = state.page === 0;
      find(root, "page-next").disabled = state.page >= pages - 1;
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
        var key = th.getAttribute("data-sort");
        th.setAttribute(
          "aria-sort",
          key === state.key ? (state.descending ? "descending" : "ascending") : "none"
        );
      });
      var what = table.querySelector('th[data-sort="' + state.key + '"]');
      if (state.key === "selected" && chosen.length) {
        caption.textContent =
          "Ranked by " + api.describe(chosen) + " (its share of each input's saliency).";
      } else if (state.key === "index" && !state.descending) {
        caption.textContent = "In input order.";
      } else {
        caption.textContent =
          "Sorted by " + (what ? what.textContent : state.key) +
          (state.descending ? ", largest first." : ", smallest first.");
      }
    }

    function update() {
      compute();
      draw();
    }

    function listHeads() {
      var panel = find(root, "head-inputs");
      var list = find(root, "head-inputs-list");
      listed = [];
      if (!chosen.length) {
        panel.hidden = true;
        return;
      }
      var wanted = {};
      chosen.forEach(function (h) {
        wanted[(h[0] - 1) * heads + (h[1] - 1)] = true;
      });
      for (var i = 0; i < count; i++) if (wanted[rows.top[i]]) listed.push(i);
      listed.sort(function (a, b) {
        return selected[b] - selected[a] || a - b;
      });
      var label = api.describe(chosen);
      find(root, "head-inputs-title").textContent =
        "Inputs where " + (chosen.length === 1 ? label + " is" : "one of " + label + " is") +
        " the strongest head";
      find(root, "head-inputs-caption").textContent =
        listed.length + " of " + count + " inputs (" + percent(listed.length / count) + ")" +
        (listed.length > LISTED ? "; the " + LISTED + " where it holds the largest share:" : ".");
      var frag = document.createDocumentFragment();
      listed.slice(0, LISTED).forEach(function (i) {
        var li = el("li");
        li.setAttribute("data-row", String(i));
        if (hrefs[i] !== null) {
          var a = el("a", "", rows.id[i]);
          a.href = hrefs[i];
          li.appendChild(a);
        } else {
          li.appendChild(document.createTextNode(rows.id[i] + " (no page)"));
        }
        li.appendChild(
          el("span", "rg-muted", " " + headLabel(rows.top[i]) + " " + percent(rows.top_score[i]))
        );
        frag.appendChild(li);
      });
      list.textContent = "";
      list.appendChild(frag);
      find(root, "head-inputs-filter").hidden = !(chosen.length === 1 && listed.length);
      panel.hidden = false;
    }

    function select() {
      var before = chosen.length;
      chosen = api.selection();
      if (chosen.length) {
        selected = new Float64Array(count);
        for (var i = 0; i < count; i++) {
          var s = 0;
          for (var h = 0; h < chosen.length; h++) {
            var at = i * perInput + (chosen[h][0] - 1) * heads + (chosen[h][1] - 1);
            s += scores.getUint16(2 * at, true); // uint16 little-endian, score × data.scale
          }
          selected[i] = s / data.scale;
        }
        state.key = "selected";
        state.descending = true;
      } else {
        selected = null;
        if (before && state.key === "selected") {
          state.key = "index";
          state.descending = false;
        }
      }
      state.page = 0;
      listHeads();
      update();
    }

    // --- controls ---------------------------------------------------------------------------
    var targetSelect = find(root, "filter-target");
    var targets = {};
    rows.target.forEach(function (t) {
      if (t !== null) targets[t] = (targets[t] || 0) + 1;
    });
    Object.keys(targets)
      .sort(function (a, b) {
        return targets[b] - targets[a] || collator.compare(a, b);
      })
      .forEach(function (t) {
        var option = el("option", "", t + " (" + targets[t] + ")");
        option.value = t;
        targetSelect.appendChild(option);
      });
    var topSelect = find(root, "filter-top");
    var tops = {};
    rows.top.forEach(function (t) {
      tops[t] = (tops[t] || 0) + 1;
    });
    Object.keys(tops)
      .map(Number)
      .sort(function (a, b) {
        return a - b;
      })
      .forEach(function (t) {
        var option = el("option", "", headLabel(t) + " (" + tops[t] + ")");
        option.value = String(t);
        topSelect.appendChild(option);
      });

    function read() {
      filters = {
        text: find(root, "filter-text").value.trim().toLowerCase(),
        target: targetSelect.value,
        correct: find(root, "filter-correct").value,
        top: topSelect.value,
        min: find(root, "filter-effect-min").value,
        max: find(root, "filter-effect-max").value,
        pages: find(root, "filter-pages").checked,
      };
      state.page = 0;
      update();
    }

    var controls = find(root, "filters");
    controls.addEventListener("input", function (event) {
      if (event.target.getAttribute("data-rg") === "page-size") return;
      read();
    });
    find(root, "page-size").addEventListener("change", function (event) {
      state.size = +event.target.value;
      state.page = 0;
      draw();
    });
    find(root, "page-prev").addEventListener("click", function () {
      state.page -= 1;
      draw();
    });
    find(root, "page-next").addEventListener("click", function () {
      state.page += 1;
      draw();
    });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
      var key = th.getAttribute("data-sort");
      if (!key) return;
      var button = el("button", "rg-sort", th.textContent);
      button.type = "button";
      button.title = (th.title ? th.title + "; " : "") + "sort by this column";
      th.textContent = "";
      th.appendChild(button);
      button.addEventListener("click", function () {
        if (key === "selected" && !chosen.length) return;
        var descending = state.key === key ? !state.descending : key === "selected";
        sort(key, descending);
      });
    });
    find(root, "head-inputs-filter").addEventListener("click", function () {
      if (chosen.length !== 1) return;
      topSelect.value = String((chosen[0][0] - 1) * heads + (chosen[0][1] - 1));
      read();
      find(root, "inputs").scrollIntoView({ block: "start" });
    });

    function sort(key, descending) {
      state.key = key;
      state.descending = !!descending;
      state.page = 0;
      update();
    }

    controls.hidden = false;
    find(root, "pager").hidden = false;
    update();

    rg.index = {
      order: function () {
        return order.slice();
      },
      shown: function () {
        var start = state.page * state.size;
        return order.slice(start, start + state.size);
      },
      sort: sort,
      filter: function (f) {
        var set = function (name, value) {
          var input = find(root, name);
          if (input.type === "checkbox") input.checked = !!value;
          else input.value = value === undefined || value === null ? "" : String(value);
        };
        set("filter-text", f.text);
        set("filter-target", f.target);
        set("filter-correct", f.correct);
        set("filter-top", f.top);
        set("filter-effect-min", f.min);
        set("filter-effect-max", f.max);
        set("filter-pages", f.pages);
        read();
      },
      headInputs: function () {
        return listed.slice();
      },
    };
    return { select: select };
  };
})();
