"""The stylesheet and the small script behind every tl_spec page (kept as strings: no data files).

Everything is scoped under ``.tlspec`` so the same markup works inside a Jupyter output area and
in a stand-alone page. The script finds each ``.tlspec-grid`` not yet set up, wires its cells,
decodes the pattern data it references (uint16 byte planes, deflated, lower triangle, one chunk
per layer) and renders CircuitsVis components into fresh divs whose ids are made at run time, so
the HTML itself carries no random ids.

>>> "tlspec-grid" in GRID_JS and ".tlspec-cell" in CSS
True
"""

from __future__ import annotations

__all__ = ["CSS", "GRID_JS", "RUNTIME_VERSION"]

RUNTIME_VERSION = "2"

CSS = r"""
.tlspec{--ink:#1f2328;--muted:#59636e;--line:#d1d9e0;--soft:#f6f8fa;--accent:#0969da;
 --font:-apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,"Helvetica Neue",Arial,"Noto Sans",
 sans-serif,"Apple Color Emoji","Segoe UI Emoji";--mono:ui-monospace,SFMono-Regular,"SF Mono",
 Menlo,Consolas,"Liberation Mono",monospace;
 font-family:var(--font);color:var(--ink);background:#fff;font-size:14px;line-height:1.45;
 font-variant-numeric:tabular-nums;box-sizing:border-box}
.tlspec *,.tlspec *::before,.tlspec *::after{box-sizing:inherit}
.tlspec-grid{border:1px solid var(--line);border-radius:10px;padding:16px 18px;margin:12px 0;
 display:flex;flex-wrap:wrap;gap:18px 28px;align-items:flex-start}
.tlspec-grid-main{flex:0 1 auto;min-width:0;max-width:100%}
.tlspec-grid-title{font-size:15px;font-weight:600;margin:0 0 2px}
.tlspec-grid-sub{color:var(--muted);font-size:12.5px;margin:0 0 10px;max-width:60ch}
.tlspec-legend{display:flex;align-items:center;gap:14px;font-size:12px;color:var(--muted);
 margin:0 0 12px;flex-wrap:wrap}
.tlspec-legend-scale{display:inline-grid;grid-template-columns:repeat(5,1fr);width:220px;row-gap:3px}
.tlspec-legend-bar{grid-column:1/-1;height:10px;border-radius:3px;border:1px solid rgba(0,0,0,.12)}
.tlspec-legend-tick{text-align:center;font-size:11px}
.tlspec-legend-tick:first-of-type{text-align:left}.tlspec-legend-tick:last-child{text-align:right}
.tlspec-swatch{display:inline-block;width:14px;height:14px;border-radius:3px;vertical-align:-3px;
 margin-right:5px;border:1px solid rgba(0,0,0,.12)}
.tlspec-missing,.tlspec-cell.tlspec-missing{background-color:#eceef1;
 background-image:repeating-linear-gradient(135deg,transparent 0 3px,rgba(0,0,0,.10) 3px 4px)}
.tlspec-scroll{overflow-x:auto;max-width:100%;padding-bottom:2px}
.tlspec-matrix{display:grid;gap:2px;align-items:center;width:max-content}
.tlspec-colhead,.tlspec-rowhead{font-size:11px;color:var(--muted);text-align:center;
 font-family:var(--mono);white-space:nowrap}
.tlspec-rowhead{text-align:right;padding-right:6px}
.tlspec-cell{width:var(--cw);height:var(--ch);border:0;border-radius:3px;padding:0;margin:0;
 font:500 11px/1 var(--mono);cursor:pointer;outline-offset:1px;
 transition:transform .08s ease,box-shadow .08s ease}
.tlspec-cell:hover{transform:scale(1.12);box-shadow:0 1px 4px rgba(0,0,0,.25);z-index:1;position:relative}
.tlspec-cell:focus-visible{outline:2px solid var(--accent)}
.tlspec-cell[aria-pressed="true"]{box-shadow:0 0 0 2px #fff,0 0 0 4px var(--ink);position:relative;z-index:2}
.tlspec-hover{min-height:1.5em;margin-top:10px;font-size:12.5px;color:var(--muted)}
.tlspec-hover b{color:var(--ink);font-family:var(--mono);font-weight:600}
.tlspec-drill{flex:1 1 420px;min-width:300px;max-width:100%}
.tlspec-drill-head{display:flex;align-items:baseline;gap:12px;flex-wrap:wrap;margin-bottom:6px}
.tlspec-drill-title{font:600 18px/1.2 var(--mono);margin:0}
.tlspec-drill-value{color:var(--muted);font-size:13px}
.tlspec-note{color:var(--muted);font-size:12.5px;margin:4px 0 8px;max-width:70ch}
.tlspec-prompt{font-size:12.5px;color:var(--muted);margin:0 0 8px}
.tlspec-prompt select{font:inherit;max-width:100%;padding:2px 4px;border:1px solid var(--line);
 border-radius:5px;background:#fff;color:var(--ink)}
.tlspec-views{display:grid;grid-template-columns:repeat(auto-fit,minmax(220px,1fr));gap:14px}
.tlspec-views.tlspec-one{grid-template-columns:minmax(220px,560px)}
.tlspec-view{min-width:0}
.tlspec-view-cap{font-size:12px;color:var(--muted);margin:0 0 4px}
.tlspec-view-cap b{color:var(--ink);font-weight:600}
.tlspec-cv{margin:0}
.tlspec-layer-view{position:relative;max-width:640px}
.tlspec-layer{margin-top:14px;border-top:1px solid var(--line);padding-top:10px}
.tlspec-layer summary{font-size:13px;font-weight:600;cursor:pointer;margin:0 0 6px}
.tlspec-layer-bar{margin:2px 0 4px;font-size:12px;color:var(--muted)}
.tlspec-seg{display:inline-flex;border:1px solid var(--line);border-radius:6px;overflow:hidden;
 margin-left:8px;vertical-align:1px}
.tlspec-seg button{font:inherit;font-size:12px;border:0;background:#fff;color:var(--ink);
 padding:2px 9px;cursor:pointer}
.tlspec-seg button[aria-pressed="true"]{background:var(--ink);color:#fff}
.tlspec-tokens{margin-top:10px;font-size:12px}
.tlspec-tokens summary{cursor:pointer;color:var(--muted)}
.tlspec-toklist{display:flex;flex-wrap:wrap;gap:3px;margin:6px 0 0;padding:0;list-style:none}
.tlspec-toklist li{font-family:var(--mono);white-space:pre;background:var(--soft);
 border:1px solid var(--line);border-radius:4px;padding:0 4px}
.tlspec-toklist li small{color:var(--muted);margin-right:3px}
.tlspec-error{color:#b42318}
"""

GRID_JS = r"""
(function () {
  "use strict";
  var VERSION = "__VERSION__";
  if (window.TLSpec && window.TLSpec.version === VERSION) { window.TLSpec.initAll(); return; }
  var counter = 0, sets = new Map(), layers = new Map();
  // AttentionHeads draws one Chart.js canvas per head: ~90 ms each plus ~25 us per cell
  // (Chromium, 2 cores). Layers cheaper than this open by themselves; others on request.
  var AUTO_LAYER_MS = 1500;
  // A grid whose page has no CircuitsVis yet waits this many 100 ms steps for it.
  var WAIT_TRIES = 300;

  function parse(el) { return JSON.parse(el.textContent); }
  function el(tag, cls, text) {
    var e = document.createElement(tag); if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text; return e;
  }
  function patternSet(root, key) {
    if (!sets.has(key)) {
      var sel = 'script.tlspec-patterns[data-key="' + key + '"]';
      var node = root.querySelector(sel) || document.querySelector(sel);
      sets.set(key, node ? parse(node) : null);
    }
    return sets.get(key);
  }
  function inflate(b64) {
    var bin = atob(b64), bytes = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Response(stream).arrayBuffer().then(function (buf) {
      var u8 = new Uint8Array(buf), half = u8.length / 2, out = new Uint16Array(half);
      for (var i = 0; i < half; i++) out[i] = u8[i] | (u8[half + i] << 8);  // low, high byte planes
      return out;
    });
  }
  function layerValues(set, key, layer) {
    var id = key + ":" + layer;
    if (!layers.has(id)) layers.set(id, inflate(set.layers[layer]));
    return layers.get(id);
  }
  function head(values, set, h) {
    var n = set.n, tri = n * (n + 1) / 2, off = h * tri, s = set.scale, rows = [];
    for (var i = 0; i < n; i++) {
      var row = new Array(n).fill(0), start = off + i * (i + 1) / 2;
      for (var j = 0; j <= i; j++) row[j] = values[start + j] / s;
      rows.push(row);
    }
    return rows;
  }
  function diff(a, b) {
    return b.map(function (row, i) {
      return row.map(function (v, j) { return Math.round((v - a[i][j]) * 1e4) / 1e4; });
    });
  }
  function absMax(m) {
    // row 0 (the first token attends only to itself, weight 1) would wash out every other row
    var x = 0; m.forEach(function (r, i) {
      if (i > 0 || m.length === 1) r.forEach(function (v) { x = Math.max(x, Math.abs(v)); });
    });
    return x;
  }
  function render(box, component, props) {
    var div = el("div", "tlspec-cv"); div.id = "tlspec-cv-" + (++counter);
    box.replaceChildren(div);
    window.CircuitsVis.render(div.id, window.CircuitsVis[component], props);
  }
  function whenDrawn(box, fn) {  // after the box has a canvas (or ~2 s), and one more frame
    var tries = 0;
    (function wait() {
      if (box.querySelector("canvas") || ++tries > 120) setTimeout(fn, 30);
      else requestAnimationFrame(wait);
    })();
  }

  function init(root) {
    root.setAttribute("data-ready", "1");
    var data = parse(root.querySelector("script.tlspec-grid-data"));
    var q = function (sel) { return root.querySelector(sel); };
    var cells = Array.prototype.slice.call(root.querySelectorAll(".tlspec-cell"));
    var hover = q(".tlspec-hover"), drill = q(".tlspec-drill");
    var title = q(".tlspec-drill-title"), value = q(".tlspec-drill-value");
    var views = q(".tlspec-views"), details = q("details.tlspec-layer");
    var layerBox = q(".tlspec-layer-view"), layerTitle = q(".tlspec-layer-title");
    var tokList = q(".tlspec-toklist"), tokCount = q(".tlspec-tokcount");
    var select = q(".tlspec-drill select"), seg = q(".tlspec-seg");
    var state = {l: data.initial[0], h: data.initial[1], prompt: 0,
                 layerMode: data.twins ? "diff" : "base"};
    var hoverDefault = hover ? hover.innerHTML : "", job = 0, drawn = "", layerPref = null, waited = 0;

    cells.forEach(function (cell) {
      cell.addEventListener("click", function () { state.l = +cell.dataset.l; state.h = +cell.dataset.h; show(); });
      ["mouseenter", "focus"].forEach(function (ev) {
        cell.addEventListener(ev, function () {
          hover.replaceChildren(el("b", "", cell.getAttribute("aria-label")));
        });
      });
      ["mouseleave", "blur"].forEach(function (ev) {
        cell.addEventListener(ev, function () { hover.innerHTML = hoverDefault; });
      });
    });
    if (select) select.addEventListener("change", function () { state.prompt = +select.value; show(); });
    if (seg) Array.prototype.forEach.call(seg.querySelectorAll("button"), function (b) {
      b.addEventListener("click", function () { state.layerMode = b.dataset.mode; marks(); drawLayer(); });
    });
    if (details) {
      details.querySelector("summary").addEventListener("click", function () { layerPref = !details.open; });
      details.addEventListener("toggle", function () { if (details.open) drawLayer(); });
    }

    function marks() {
      cells.forEach(function (c) {
        c.setAttribute("aria-pressed", (+c.dataset.l === state.l && +c.dataset.h === state.h) ? "true" : "false");
      });
      if (seg) Array.prototype.forEach.call(seg.querySelectorAll("button"), function (b) {
        b.setAttribute("aria-pressed", b.dataset.mode === state.layerMode ? "true" : "false");
      });
    }
    function tokens(set) {
      if (!tokList) return;
      tokList.replaceChildren();
      set.tokens.forEach(function (t, i) {
        var li = el("li"); li.appendChild(el("small", "", String(i))); li.appendChild(document.createTextNode(t));
        tokList.appendChild(li);
      });
      if (tokCount) tokCount.textContent = String(set.tokens.length);
    }
    function current() {
      var p = data.prompts[state.prompt];
      return {p: p, base: patternSet(root, p.base), tuned: p.tuned ? patternSet(root, p.tuned) : null};
    }
    function values(c, l) {
      var want = [layerValues(c.base, c.p.base, l)];
      if (c.tuned) want.push(layerValues(c.tuned, c.p.tuned, l));
      return Promise.all(want);
    }
    function fail(err) {
      views.replaceChildren(el("p", "tlspec-note tlspec-error", "Could not decode the patterns: " + err));
      drill.setAttribute("data-state", "error");
      console.error(err);
    }

    function drawLayer() {
      if (!details || !details.open || !data.prompts.length) return;
      var c = current(), l = state.l, key = [state.prompt, l, state.layerMode].join("|");
      if (drawn === key) return;
      drawn = key;
      drill.removeAttribute("data-layer");
      values(c, l).then(function (vals) {
        whenDrawn(views, function () {
          if (drawn !== key) return;
          var heads = [], names = [];
          for (var k = 0; k < c.base.n_heads; k++) {
            names.push("L" + l + "H" + k);
            var x = head(vals[0], c.base, k);
            if (c.tuned && c.tuned.n === c.base.n) {
              var y = head(vals[1], c.tuned, k);
              heads.push(state.layerMode === "base" ? x : state.layerMode === "tuned" ? y : diff(x, y));
            } else heads.push(x);
          }
          var mm = Math.max.apply(null, heads.map(absMax)) || 1, props;
          if (c.tuned && c.tuned.n === c.base.n && state.layerMode === "diff") props = {maxValue: mm, minValue: -mm,
            positiveColor: data.colors.positive, negativeColor: data.colors.negative};
          else props = {maxValue: mm, minValue: 0, positiveColor: data.colors.pattern};
          render(layerBox, "AttentionHeads", Object.assign({attention: heads, tokens: c.base.tokens,
            attentionHeadNames: names, maskUpperTri: true}, props));
          drill.setAttribute("data-layer", "L" + l);
        });
      }).catch(fail);
    }

    function show() {
      var l = state.l, h = state.h, name = "L" + l + "H" + h, mine = ++job;
      root.setAttribute("data-selected", name);
      marks();
      title.textContent = name;
      var cell = q('.tlspec-cell[data-l="' + l + '"][data-h="' + h + '"]');
      value.textContent = cell ? cell.dataset.text : "";
      if (!data.prompts.length || !views) { drill.setAttribute("data-state", "no-patterns"); return; }
      if (!window.DecompressionStream) {
        views.replaceChildren(el("p", "tlspec-note tlspec-error",
          "This browser cannot draw the patterns (it has no DecompressionStream)."));
        drill.setAttribute("data-state", "error"); return;
      }
      if (!window.CircuitsVis) {  // a later notebook output: the bundle comes with the first one
        drill.setAttribute("data-state", "waiting");
        if (++waited <= WAIT_TRIES) { setTimeout(function () { if (mine === job) show(); }, 100); return; }
        views.replaceChildren(el("p", "tlspec-note tlspec-error", "CircuitsVis did not load. " +
          "In a notebook it comes with the first head grid shown in the kernel; if that output " +
          "was cleared, run tl_spec.viz.reset_notebook_bundle() and re-run this cell."));
        drill.setAttribute("data-state", "error"); return;
      }
      waited = 0;
      drill.setAttribute("data-state", "rendering");
      var c = current(), base = c.base, tuned = c.tuned;
      tokens(base);
      if (details) {
        var ms = base.n_heads * (90 + 0.025 * base.n * base.n);
        layerTitle.textContent = "Layer " + l + ": all " + base.n_heads + " heads" +
          (ms > AUTO_LAYER_MS ? " (about " + Math.round(ms / 1000) + " s to draw; open to draw)" : "");
        var want = layerPref !== null ? layerPref : ms <= AUTO_LAYER_MS;
        if (details.open !== want) details.open = want;
      }
      values(c, l).then(function (vals) {
        if (mine !== job) return;
        var a = head(vals[0], base, h), panels = [];
        if (tuned && base.tokens.join("\u0000") !== tuned.tokens.join("\u0000")) {
          var t = head(vals[1], tuned, h), ma = absMax(a) || 1, mt = absMax(t) || 1;
          // different tokenizations: no token-by-token difference
          panels.push(["base", a, {maxValue: ma, minValue: 0, positiveColor: data.colors.pattern},
                       "0 \u2192 " + ma.toFixed(3)]);
          panels.push(["tuned (own tokens)", t, {maxValue: mt, minValue: 0, positiveColor: data.colors.pattern},
                       "0 \u2192 " + mt.toFixed(3), tuned.tokens]);
        } else if (tuned) {
          var b = head(vals[1], tuned, h), d = diff(a, b), m = Math.max(absMax(a), absMax(b)) || 1;
          var dm = absMax(d) || 1e-3, pat = {maxValue: m, minValue: 0, positiveColor: data.colors.pattern};
          panels.push(["base", a, pat, "0 \u2192 " + m.toFixed(3)]);
          panels.push(["tuned", b, pat, "0 \u2192 " + m.toFixed(3)]);
          panels.push(["tuned \u2212 base", d, {maxValue: dm, minValue: -dm, positiveColor: data.colors.positive,
                       negativeColor: data.colors.negative}, "\u00b1" + dm.toFixed(3)]);
        } else {
          var mx = absMax(a) || 1;
          panels.push([data.model_label || "pattern", a, {maxValue: mx, minValue: 0,
                       positiveColor: data.colors.pattern}, "0 \u2192 " + mx.toFixed(3)]);
        }
        views.replaceChildren();
        views.classList.toggle("tlspec-one", panels.length === 1);
        panels.forEach(function (pn) {
          var box = el("div", "tlspec-view"), cap = el("p", "tlspec-view-cap"), slot = el("div");
          cap.appendChild(el("b", "", pn[0])); cap.appendChild(document.createTextNode("  colour " + pn[3]));
          box.appendChild(cap); box.appendChild(slot); views.appendChild(box);
          render(slot, "AttentionPattern", Object.assign({attention: pn[1], tokens: pn[4] || base.tokens,
            showAxisLabels: true, maskUpperTri: true}, pn[2]));
        });
        drill.setAttribute("data-state", "ready");
        drawLayer();
      }).catch(fail);
    }

    var m = /^#(?:([\w-]+):)?L(\d+)H(\d+)$/.exec(window.location.hash || "");
    if (m && (!m[1] || m[1] === root.id) && cells.some(function (c) {
      return c.dataset.l === m[2] && c.dataset.h === m[3]; })) { state.l = +m[2]; state.h = +m[3]; }
    show();
  }

  window.TLSpec = {
    version: VERSION,
    initAll: function () {
      Array.prototype.forEach.call(document.querySelectorAll(".tlspec-grid:not([data-ready])"), init);
    }
  };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", window.TLSpec.initAll);
  else window.TLSpec.initAll();
})();
""".replace("__VERSION__", RUNTIME_VERSION)
