// steptool viewer (pipeline/viewer.py; docs/architecture.md, "Viewer"). Every text from the run (model output,
// tool responses, judge answers) enters the page as a text node or an attribute value, never as markup.
(function () {
  "use strict";
  var S = window.STEPTOOL || { chunks: {} };
  var app = document.getElementById("app");
  var PAGE = 50, OBS_SHOWN = 600;
  var FILTERS = ["kind", "level", "split", "model", "seed", "round", "strategy", "status", "finish"];
  var LABELS = { id: "trajectory", steps: "steps", failed: "failed calls", "return": "return", chunk: "" };
  var state = { sort: null, desc: false, page: 0, filters: {}, text: "" };

  function el(tag, attrs) {
    var e = document.createElement(tag);
    for (var k in attrs || {}) {
      var v = attrs[k];
      if (v == null) continue;
      if (k === "class") e.className = v;
      else if (k.slice(0, 2) === "on") e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, String(v));
    }
    for (var i = 2; i < arguments.length; i++) add(e, arguments[i]);
    return e;
  }
  function add(parent, child) {
    if (child == null || child === false) return;
    if (Array.isArray(child)) { child.forEach(function (c) { add(parent, c); }); return; }
    parent.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  function fmt(x, digits) {  // with `digits`, always that many (a float that happens to be whole stays 0.0000)
    if (x == null) return "–";
    if (typeof x === "number") return digits != null ? x.toFixed(digits) : Number.isInteger(x) ? String(x) : x.toFixed(3);
    return String(x);
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }
  function done(view) { document.body.setAttribute("data-view", view); window.STEPTOOL_READY = performance.now(); }
  function fail(msg) { clear(app); add(app, el("p", { class: "error" }, msg)); done("error"); }

  if (!S.index) { fail("js/index.js is missing: build the viewer with `steptool view` (or `dvc repro view`)."); return; }
  var I = S.index, C = I.columns, col = {};
  C.forEach(function (c, i) { col[c] = i; });
  var rows = I.values;
  var byId = {};
  rows.forEach(function (r) { byId[r[col.id]] = r; });
  add(document.getElementById("summary"),
      rows.length + " trajectories (" + rows.filter(function (r) { return r[col.kind] === "collect"; }).length +
      " collected, " + rows.filter(function (r) { return r[col.kind] === "eval"; }).length + " evaluated)");

  function loadChunk(c) {
    return new Promise(function (resolve, reject) {
      if (S.chunks[c]) { resolve(S.chunks[c]); return; }
      var s = document.createElement("script");
      s.src = "js/chunk-" + ("00000" + c).slice(-5) + ".js";
      s.onload = function () { S.chunks[c] ? resolve(S.chunks[c]) : reject(new Error(s.src + " holds no chunk")); };
      s.onerror = function () { reject(new Error("cannot load " + s.src)); };
      document.head.appendChild(s);
    });
  }
  function detail(id) {
    var r = byId[id];
    if (!r) return Promise.reject(new Error("no trajectory " + id));
    return loadChunk(String(r[col.chunk])).then(function (chunk) { return chunk[id]; });
  }

  // ---- the index: filters, sort, pages ------------------------------------------------------------------
  function visible() {
    var out = rows.filter(function (r) {
      for (var f in state.filters) {
        if (state.filters[f] !== "" && String(r[col[f]]) !== state.filters[f]) return false;
      }
      return !state.text || String(r[col.task]).toLowerCase().indexOf(state.text.toLowerCase()) >= 0;
    });
    if (state.sort) {
      var i = col[state.sort], sign = state.desc ? -1 : 1;
      out = out.slice().sort(function (a, b) {
        var x = a[i], y = b[i];
        if (x == null && y == null) return 0;
        if (x == null) return 1;
        if (y == null) return -1;
        return (x < y ? -1 : x > y ? 1 : 0) * sign;
      });
    }
    return out;
  }

  function renderIndex() {
    clear(app);
    var filters = el("div", { class: "filters" });
    FILTERS.forEach(function (f) {
      var values = Array.from(new Set(rows.map(function (r) { return String(r[col[f]]); }))).sort();
      var sel = el("select", { id: "filter-" + f, onchange: function () { state.filters[f] = sel.value; state.page = 0; renderIndex(); } },
                   el("option", { value: "" }, "all"),
                   values.map(function (v) { return el("option", { value: v }, v === "null" ? "–" : v); }));
      sel.value = state.filters[f] || "";
      add(filters, el("label", null, f, sel));
    });
    var text = el("input", { id: "filter-task", type: "search", placeholder: "task id contains…", value: state.text });
    text.addEventListener("change", function () { state.text = text.value; state.page = 0; renderIndex(); });
    add(filters, el("label", null, "task", text));
    add(app, filters);

    var shown = visible(), pages = Math.max(1, Math.ceil(shown.length / PAGE));
    state.page = Math.min(state.page, pages - 1);
    var head = el("tr");
    C.forEach(function (c) {
      if (c === "chunk") return;
      var th = el("th", { "data-col": c, onclick: function () {
        state.desc = state.sort === c ? !state.desc : false; state.sort = c; renderIndex(); } },
        LABELS[c] != null ? LABELS[c] : c);
      if (state.sort === c) th.className = state.desc ? "sorted-desc" : "sorted-asc";
      if (c === "return") th.title = "collected: G_0 under " + (I.return_of || "–") + "; evaluated: the pass score";
      add(head, th);
    });
    var body = el("tbody");
    shown.slice(state.page * PAGE, (state.page + 1) * PAGE).forEach(function (r) {
      var tr = el("tr", { "data-id": r[col.id] });
      C.forEach(function (c) {
        if (c === "chunk") return;
        var v = r[col[c]];
        if (c === "id") v = el("a", { href: "#t/" + encodeURIComponent(r[col.id]) }, String(v).slice(0, 24));
        else if (c === "task" && r[col.kind] === "eval") v = [String(v), " ", el("a", { href: "#c/" + encodeURIComponent(String(v)), title: "the models side by side" }, "compare")];
        else v = fmt(v, c === "return" ? 3 : null);  // one width down the column: 1.000 beside 0.950, not 1
        add(tr, el("td", { class: typeof r[col[c]] === "number" ? "num" : null }, v));
      });
      add(body, tr);
    });
    add(app, el("table", { id: "index" }, el("thead", null, head), body));
    add(app, el("div", { class: "pager" },
      el("button", { id: "prev", disabled: state.page === 0 ? "" : null, onclick: function () { state.page--; renderIndex(); } }, "previous"),
      el("span", { id: "page" }, "page " + (state.page + 1) + " of " + pages + " · " + shown.length + " shown"),
      el("button", { id: "next", disabled: state.page >= pages - 1 ? "" : null, onclick: function () { state.page++; renderIndex(); } }, "next")));
    add(app, chart());
    add(app, audit());
    done("index");
  }

  // ---- run-wide figures ---------------------------------------------------------------------------------
  function chart() {
    var data = I.advantage_by_kind || {}, variants = Object.keys(data);
    if (!variants.length) return null;
    var kinds = I.step_kinds, ns = "http://www.w3.org/2000/svg";
    var max = 1e-9;
    variants.forEach(function (v) { kinds.forEach(function (k) { if (data[v][k]) max = Math.max(max, Math.abs(data[v][k][0])); }); });
    var bw = 22, gap = 30, h = 160, mid = h / 2 + 10, width = variants.length * (kinds.length * bw + gap) + 40;
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("width", width); svg.setAttribute("height", h + 60); svg.setAttribute("id", "advantage-chart");
    function node(tag, attrs, text) {
      var n = document.createElementNS(ns, tag);
      for (var k in attrs) n.setAttribute(k, attrs[k]);
      if (text != null) n.appendChild(document.createTextNode(text));
      svg.appendChild(n);
      return n;
    }
    var colors = ["#2a9d55", "#b8a200", "#e07b00", "#c62828", "#23395d"];
    node("line", { x1: 30, x2: width, y1: mid, y2: mid, stroke: "#999" });
    node("text", { x: 0, y: mid + 4, "font-size": 10 }, "0");
    variants.forEach(function (v, j) {
      var x0 = 40 + j * (kinds.length * bw + gap);
      kinds.forEach(function (k, i) {
        var cell = data[v][k];
        if (!cell) return;
        var hh = Math.abs(cell[0]) / max * (h / 2 - 10);
        var rect = node("rect", { x: x0 + i * bw, y: cell[0] >= 0 ? mid - hh : mid, width: bw - 4, height: Math.max(hh, 1), fill: colors[i % colors.length] });
        node("text", { x: x0 + i * bw + (bw - 4) / 2, y: cell[0] >= 0 ? mid - hh - 3 : mid + hh + 11, "font-size": 9, "text-anchor": "middle" }, cell[0].toFixed(2));
        var t = document.createElementNS(ns, "title");
        t.appendChild(document.createTextNode(v + " · " + k + ": mean advantage " + cell[0] + " over " + cell[1] + " steps"));
        rect.appendChild(t);
      });
      node("text", { x: x0, y: h + 30, "font-size": 12 }, v);
    });
    var legend = el("p", { class: "label" }, kinds.map(function (k, i) {
      return el("span", { style: "color:" + colors[i % colors.length] + ";margin-right:12px" }, "■ " + k);
    }));
    return el("section", null, el("h2", null, "Mean advantage by step kind (collected steps, as trained)"), svg, legend);
  }

  function audit() {
    var a = I.audit || {}, runs = Object.keys(a);
    if (!runs.length) return null;
    var keys = [];
    runs.forEach(function (r) { Object.keys(a[r]).forEach(function (k) { if (typeof a[r][k] === "number" && keys.indexOf(k) < 0) keys.push(k); }); });
    // one row per figure, one column per run: the audit has many figures and few runs
    return el("section", { id: "audit" }, el("h2", null, "Reward audit (scripted archetypes of the train tasks)"),
      el("table", null, el("thead", null, el("tr", null, el("th", null, ""), runs.map(function (r) { return el("th", null, r + " (" + (a[r].shaping || "") + ")"); }))),
        el("tbody", null, keys.map(function (k) {
          return el("tr", null, el("td", null, k), runs.map(function (r) { return el("td", { class: "num" }, fmt(a[r][k])); }));
        }))));
  }

  // ---- one trajectory -------------------------------------------------------------------------------------
  function longText(text, id) {
    text = text == null ? "" : String(text);
    if (text.length <= OBS_SHOWN) return el("pre", { id: id }, text);
    var pre = el("pre", { id: id }, text.slice(0, OBS_SHOWN) + "…");
    var btn = el("button", { class: "show-all", onclick: function () {
      clear(pre); add(pre, text); btn.remove(); } }, "show all (" + text.length + " characters)");
    return [pre, btn];
  }

  function stepCard(s, d, isLast) {
    var labels = el("div", { class: "kv" });
    function kv(k, v) { add(labels, [el("span", { class: "label" }, k), el("span", null, v)]); }
    if (s.api !== "Finish") {
      kv("SuccCalling", fmt(s.sc) + (s.sc_rule != null ? " (rule " + s.sc_rule + (s.sc_reason ? ": " + s.sc_reason : "") + ")" : ""));
      kv("Contribution", fmt(s.con));
      if (s.progress != null) kv("progress", fmt(s.progress));
    }
    if (isLast && (s.is_solved != null || s.is_solved_score != null)) kv("IsSolved", (s.is_solved || "–") + " (" + fmt(s.is_solved_score) + ")");
    if (s.votes != null) kv("votes", el("pre", { class: "votes" }, typeof s.votes === "string" ? s.votes : JSON.stringify(s.votes, null, 2)));
    var rewards = null;
    if (d.variants && d.variants.length) {
      rewards = el("table", { class: "rewards" }, el("thead", null, el("tr", null, ["variant", "reward", "return-to-go", "baseline", "advantage", "PPO ratio", "clip share"].map(function (h) { return el("th", null, h); }))),
        el("tbody", null, d.variants.map(function (v) {
          var x = (s.v || {})[v] || [null, null, null, null, null, null];
          return el("tr", { "data-variant": v }, el("td", null, v), x.map(function (y, i) {
            return el("td", { class: "num " + ["reward", "return", "baseline", "advantage", "ratio", "clipped"][i] }, fmt(y, 4));
          }));
        })));
    }
    return el("div", { class: "step k-" + String(s.kind).replace(/ /g, "-"), "data-step": s.i },
      el("h3", null, "Step " + s.i + " · " + s.kind),
      s.thought ? [el("span", { class: "label" }, "Thought"), el("pre", { class: "thought" }, s.thought)] : null,
      el("span", { class: "label" }, "Action"), el("pre", { class: "action" }, s.api == null ? "(did not parse" + (s.parse_error ? ": " + s.parse_error : "") + ")" : s.api),
      s.api !== "Finish" ? [el("span", { class: "label" }, "Arguments"), el("pre", { class: "args" }, s.args)] : null,
      s.api !== "Finish" ? [el("span", { class: "label" }, "Observation (" + (s.env || "–") + ")"), longText(s.obs, "obs-" + s.i)] : null,
      labels, rewards);
  }

  function verdict(d) {
    var parts = [el("h3", null, "Final answer (" + d.finish_type + ")"), el("pre", { id: "final-answer" }, d.final_answer || "(none)")];
    if (d.judge) {
      parts.push(el("p", { id: "judge" }, "Judge " + d.judge.judge + ": " + (d.judge.statuses || []).join(", ") +
        " · pass score " + fmt(d.judge.pass_score) + (d.judge.n_facts != null ? " · gold facts stated " + fmt(d.judge.facts_stated) + " of " + d.judge.n_facts : "")));
      if (d.judge.reasons) parts.push(el("div", null, el("span", { class: "label" }, "The judge's reasons (one per judging run)"),
        el("ol", { id: "judge-reasons" }, d.judge.reasons.map(function (r) { return el("li", null, r); }))));
    } else if (d.annotator) {
      parts.push(el("p", null, "Annotated by " + d.annotator + (d.judge_model ? " (" + d.judge_model + ")" : "")));
    }
    if (d.gold_facts) parts.push(el("div", null, el("span", { class: "label" }, "Gold facts"), el("ul", { id: "gold-facts" }, d.gold_facts.map(function (f) { return el("li", null, f); }))));
    return el("div", { class: "verdict" }, parts);
  }

  function renderTrajectory(id) {
    detail(id).then(function (d) {
      clear(app);
      add(app, el("p", null, el("a", { href: "#" }, "← all trajectories"),
        d.kind === "eval" ? [" · ", el("a", { href: "#c/" + encodeURIComponent(d.task) }, "compare the models on this task")] : null));
      var meta = el("div", { id: "meta" });
      ["task", "level", "split", "kind", "model", "seed", "round", "strategy", "status", "finish"].forEach(function (k) {
        add(meta, el("span", null, el("span", { class: "label" }, k), " ", el("span", { "data-key": k }, fmt(d[k]))));
      });
      add(app, [el("h2", null, "Trajectory " + d.id), meta, el("span", { class: "label" }, "Query"), el("pre", { id: "query" }, d.query || "")]);
      d.steps.forEach(function (s, i) { add(app, stepCard(s, d, i === d.steps.length - 1)); });
      add(app, verdict(d));
      done("trajectory");
    }).catch(function (e) { fail(String(e.message || e)); });
  }

  // ---- one test task, two models side by side -------------------------------------------------------------
  function renderCompare(task, left, right) {
    var ids = rows.filter(function (r) { return r[col.kind] === "eval" && String(r[col.task]) === task; })
                  .map(function (r) { return r[col.id]; });
    if (!ids.length) { fail("no evaluated trajectory of task " + task); return; }
    Promise.all(ids.map(detail)).then(function (ds) {
      clear(app);
      function name(d) { return d.model + " · " + d.strategy + (d.seed != null ? " · s" + d.seed : ""); }
      var models = [];
      ds.forEach(function (d) { if (models.indexOf(d.model) < 0) models.push(d.model); });
      var a = left != null ? ds.find(function (d) { return d.id === left; }) : ds[0];
      var b = right != null ? ds.find(function (d) { return d.id === right; }) : (ds.find(function (d) { return d.model !== (a || ds[0]).model; }) || ds[0]);
      a = a || ds[0]; b = b || ds[0];
      function picker(cur, side) {
        var s = el("select", { id: "pick-" + side, onchange: function () {
          var l = side === "left" ? s.value : a.id, r = side === "right" ? s.value : b.id;
          location.hash = "#c/" + encodeURIComponent(task) + "/" + encodeURIComponent(l) + "/" + encodeURIComponent(r);
        } }, ds.map(function (d) { return el("option", { value: d.id }, name(d)); }));
        s.value = cur.id;
        return s;
      }
      add(app, [el("p", null, el("a", { href: "#" }, "← all trajectories")), el("h2", null, "Task " + task),
        el("pre", { id: "query" }, ds[0].query || "")]);
      var rowsOut = [];
      var n = Math.max(a.steps.length, b.steps.length);
      for (var i = 0; i < n; i++) {
        rowsOut.push(el("tr", { "data-step": i }, el("td", null, String(i)), [a, b].map(function (d) {
          var s = d.steps[i];
          if (!s) return el("td", null, "");
          return el("td", null, el("b", null, s.api == null ? "(did not parse)" : s.api), " ", el("span", { class: "label" }, s.kind),
            s.api !== "Finish" ? [el("pre", null, s.args), longText(s.obs)] : el("pre", null, d.final_answer || ""));
        })));
      }
      rowsOut.push(el("tr", { id: "verdicts" }, el("td", null, "judge"), [a, b].map(function (d) {
        return el("td", null, d.judge ? (d.judge.statuses || []).join(", ") + " · pass score " + fmt(d.judge.pass_score) : "–");
      })));
      add(app, el("table", { id: "compare" }, el("thead", null, el("tr", null, el("th", null, "step"),
        el("th", null, picker(a, "left")), el("th", null, picker(b, "right")))), el("tbody", null, rowsOut)));
      done("compare");
    }).catch(function (e) { fail(String(e.message || e)); });
  }

  function route() {
    var h = location.hash.replace(/^#/, "");
    var parts = h.split("/").map(decodeURIComponent);
    if (parts[0] === "t" && parts.length > 1) renderTrajectory(parts.slice(1).join("/"));
    else if (parts[0] === "c" && parts.length > 1) renderCompare(parts[1], parts[2], parts[3]);
    else renderIndex();
  }
  window.addEventListener("hashchange", route);
  route();
})();
