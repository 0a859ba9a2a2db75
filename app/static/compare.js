// The comparison views: draws GET /api/compare?<query> with uPlot (curves, metric against swept parameters,
// efficiency with Pareto fronts) and plain tables (sortable runs table, seed groups); compare_text.js draws the
// config diff and the generations, compare_views.js the views that explain a sweep.
(function () {
  const root = document.getElementById("compare");
  if (!root) return;
  // the API query: runs or sweep, and the view (group_by, objective), which compare_views.js may change
  const apiQuery = () => root.dataset.query;
  const live = root.dataset.live === "true";
  const $ = (id) => document.getElementById(id);
  const state = { data: null, x: "step", logY: false, smooth: 0, sort: null, effMetric: null, plots: [] };

  const CURVE_TITLES = {
    loss: "Train loss",
    eval_loss: "Eval loss",
    learning_rate: "Learning rate",
    memory_bytes: "Memory (MiB)",
    tokens_per_second: "Throughput (tokens/s)",
  };
  const CURVE_SCALE = { memory_bytes: 1 / 2 ** 20 };
  const PARAM_METRICS = ["best_eval_loss", "gen_bleu", "gen_rouge_l", "gen_exact_match", "eval_perplexity"];
  const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777", "#4b5563", "#65a30d"];
  const METHOD_COLORS = {};

  function color(i) {
    return i < PALETTE.length ? PALETTE[i] : `hsl(${(i * 137.5) % 360}, 65%, 45%)`;
  }
  function methodColor(name) {
    if (!(name in METHOD_COLORS)) METHOD_COLORS[name] = color(Object.keys(METHOD_COLORS).length);
    return METHOD_COLORS[name];
  }

  // -- number formatting -------------------------------------------------------------------------------
  function formatNumber(value) {
    if (value == null || !isFinite(value)) return "";
    const size = Math.abs(value);
    if (size === 0) return "0";
    if (size < 1e-2 || size >= 1e7) return value.toExponential(1).replace("e-", "e\u2212");
    if (size >= 1000) return Math.round(value).toLocaleString("en-US");
    return String(parseFloat(value.toPrecision(3)));
  }
  function humanCount(v) {
    if (v == null) return "–";
    for (const [unit, size] of [["B", 1e9], ["M", 1e6], ["K", 1e3]]) if (Math.abs(v) >= size) return (v / size).toFixed(2) + unit;
    return String(Math.round(v));
  }
  function humanBytes(v) {
    if (v == null) return "–";
    for (const [unit, size] of [["GiB", 2 ** 30], ["MiB", 2 ** 20], ["KiB", 2 ** 10]]) if (Math.abs(v) >= size) return (v / size).toFixed(1) + " " + unit;
    return Math.round(v) + " B";
  }
  function humanDuration(s) {
    if (s == null) return "–";
    s = Math.round(s);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    if (h) return `${h}h ${String(m).padStart(2, "0")}m`;
    if (m) return `${m}m ${String(sec).padStart(2, "0")}s`;
    return `${sec}s`;
  }
  const CELL_FORMAT = {
    trainable_params: humanCount,
    trainable_percent: (v) => (v == null ? "–" : v >= 99.995 ? "100%" : parseFloat(v.toPrecision(3)) + "%"),
    peak_memory_estimate: humanBytes,
    peak_memory_measured: humanBytes,
    tokens_per_second: (v) => (v == null ? "–" : Math.round(v).toLocaleString("en-US")),
    wall_time_seconds: humanDuration,
    gen_bleu: (v) => (v == null ? "–" : v.toFixed(2)),
    gen_exact_match: (v) => (v == null ? "–" : v.toFixed(3)),
    gen_rouge_l: (v) => (v == null ? "–" : v.toFixed(3)),
  };
  function formatCell(key, kind, v) {
    if (CELL_FORMAT[key]) return CELL_FORMAT[key](v);
    if (v == null) return "–";
    if (kind === "float") return Math.abs(v) >= 100 ? v.toFixed(1) : v.toFixed(4);
    return String(v);
  }
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("data-")) node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const child of children) if (child != null) node.append(child);
    return node;
  }

  // -- uPlot helpers -----------------------------------------------------------------------------------
  // uPlot shows "--" while the cursor is off the chart; blank it in place (uPlot later writes the same text node).
  function blankIdleLegend(plot) {
    for (const cell of plot.root.querySelectorAll(".u-legend .u-value")) {
      if (cell.firstChild && cell.firstChild.nodeValue === "--") cell.firstChild.nodeValue = "";
    }
  }
  function figure(container, title, attrs) {
    const body = el("div", { class: "chart-body" });
    const fig = el("figure", { class: "chart", ...(attrs || {}) }, el("figcaption", { text: title }), body);
    container.append(fig);
    return { fig, body };
  }
  function plot(fig, body, opts, data) {
    const width = Math.max(300, body.clientWidth || 480);
    const p = new uPlot({ width, height: 240, ...opts, hooks: { ...(opts.hooks || {}), setLegend: [blankIdleLegend] } }, data, body);
    blankIdleLegend(p);
    fig.dataset.drawn = "true";
    state.plots.push({ plot: p, body });
    return p;
  }
  // the plots drawn inside `container`, taken out of the list (their caller destroys them before drawing again)
  function plotsIn(container) {
    const inside = state.plots.filter((p) => container.contains(p.body));
    state.plots = state.plots.filter((p) => !container.contains(p.body));
    return inside;
  }
  function destroyPlots() {
    for (const { plot } of state.plots) plot.destroy();
    state.plots = [];
  }
  const axisValues = (u, splits) => splits.map(formatNumber);

  // EMA smoothing with bias correction (as TensorBoard does); gaps stay gaps.
  function smooth(ys, weight) {
    if (!weight) return ys;
    let last = 0, n = 0;
    return ys.map((v) => {
      if (v == null) return null;
      last = last * weight + (1 - weight) * v;
      n += 1;
      return last / (1 - Math.pow(weight, n));
    });
  }

  // -- curves ------------------------------------------------------------------------------------------
  function drawCurves(data) {
    const container = $("cmp-curves");
    container.replaceChildren();
    const runIndex = new Map(data.run_ids.map((id, i) => [id, i]));
    const showLegend = data.run_ids.length <= 12;
    const keys = Object.keys(CURVE_TITLES).filter((k) => data.curves[k]);
    if (!keys.length) container.append(el("p", { class: "muted", text: "No metrics recorded yet." }));
    for (const key of keys) {
      const curve = data.curves[key];
      const scale = CURVE_SCALE[key] || 1;
      // uPlot wants one x array: the union of the series' x (shared bucket positions when downsampled).
      const xs = [...new Set(curve.series.flatMap((s) => s.x))].sort((a, b) => a - b);
      const slot = new Map(xs.map((x, i) => [x, i]));
      const { fig, body } = figure(container, CURVE_TITLES[key] + (curve.downsampled ? " · downsampled" : ""), {
        "data-key": key,
        "data-points": String(xs.length),
      });
      const columns = curve.series.map((s) => {
        let ys = new Array(xs.length).fill(null);
        s.x.forEach((x, i) => (ys[slot.get(x)] = s.y[i] == null ? null : s.y[i] * scale));
        if (state.logY) ys = ys.map((v) => (v != null && v > 0 ? v : null));
        return key === "learning_rate" ? ys : smooth(ys, state.smooth);
      });
      const sparse = xs.length < 80 || key === "eval_loss";
      // Many overlaid runs: 1px lines, which canvas rasterizes about ten times faster than thicker ones.
      const lineWidth = curve.series.length > 8 ? 1 : 1.5;
      plot(
        fig,
        body,
        {
          legend: { show: showLegend },
          scales: { x: { time: false }, y: state.logY ? { distr: 3 } : {} },
          axes: [
            { label: data.x === "tokens" ? "tokens seen" : "step", values: axisValues },
            { size: 60, values: axisValues },
          ],
          series: [
            { label: data.x === "tokens" ? "tokens" : "step", value: (u, v) => (v == null ? "" : formatNumber(v)) },
            ...curve.series.map((s) => ({
              label: s.name,
              stroke: color(runIndex.get(s.run_id)),
              width: lineWidth,
              spanGaps: true,
              value: (u, v) => formatNumber(v),
              points: { show: sparse, size: 5 },
            })),
          ],
        },
        [xs, ...columns],
      );
    }
  }

  // -- table -------------------------------------------------------------------------------------------
  function drawTable(data) {
    const container = $("cmp-table");
    const columns = data.columns.filter((c) => c.key !== "sweep_id" || data.table.some((r) => r.sweep_id != null));
    const rows = [...data.table];
    if (state.sort) {
      const { key, dir } = state.sort;
      const kind = (columns.find((c) => c.key === key) || {}).kind;
      rows.sort((a, b) => {
        const va = a[key], vb = b[key];
        if (va == null && vb == null) return 0;
        if (va == null) return 1; // blanks last, whatever the direction
        if (vb == null) return -1;
        const order = kind === "str" ? String(va).localeCompare(String(vb)) : va - vb;
        return dir * order;
      });
    }
    const runIndex = new Map(data.run_ids.map((id, i) => [id, i]));
    const head = el(
      "tr",
      {},
      ...columns.map((c) => {
        const sorted = state.sort && state.sort.key === c.key;
        const th = el("th", {
          class: (c.kind === "str" ? "" : "num ") + "sortable" + (sorted ? (state.sort.dir > 0 ? " sorted-asc" : " sorted-desc") : ""),
          text: c.label,
          title: `sort by ${c.label}`,
          "data-key": c.key,
        });
        th.addEventListener("click", () => {
          state.sort = { key: c.key, dir: state.sort && state.sort.key === c.key ? -state.sort.dir : 1 };
          drawTable(state.data);
        });
        return th;
      }),
    );
    const body = rows.map((row) =>
      el(
        "tr",
        { "data-run-id": String(row.id) },
        ...columns.map((c) => {
          const td = el("td", { class: c.kind === "str" ? "" : "num", "data-key": c.key });
          if (row[c.key] != null) td.dataset.value = String(row[c.key]);
          if (c.key === "name") {
            td.append(el("span", { class: "swatch", style: `background:${color(runIndex.get(row.id))}` }));
            td.append(el("a", { href: `/runs/${row.id}`, text: row.name }));
          } else if (c.key === "status") {
            td.append(el("span", { class: `badge badge-${row.status}`, text: row.status }));
          } else if (c.key === "sweep_id" && row.sweep_id != null) {
            td.append(el("a", { href: `/sweeps/${row.sweep_id}`, text: `#${row.sweep_id}` }));
          } else {
            td.textContent = formatCell(c.key, c.kind, row[c.key]);
          }
          return td;
        }),
      ),
    );
    const table = el("table", { class: "runs compare-table", id: "cmp-runs-table" }, el("thead", {}, head), el("tbody", {}, ...body));
    if (state.sort) table.dataset.sortedBy = `${state.sort.key}:${state.sort.dir > 0 ? "asc" : "desc"}`;
    container.replaceChildren(table);
    if (window.TunedeckViews) window.TunedeckViews.filterTable(); // brushed axes hide rows
  }

  function drawGroups(data) {
    const container = $("cmp-groups");
    container.replaceChildren();
    if (!data.groups.length) return;
    const keys = ["final_train_loss", "best_eval_loss", "eval_perplexity", "gen_exact_match", "gen_bleu", "gen_rouge_l", "tokens_per_second"];
    const label = Object.fromEntries(data.columns.map((c) => [c.key, c.label]));
    const head = el("tr", {}, el("th", { text: "Runs differing only in seed" }), el("th", { class: "num", text: "n" }), ...keys.map((k) => el("th", { class: "num", text: label[k] })));
    const rows = data.groups.map((g) =>
      el(
        "tr",
        {},
        el("td", { text: `${g.label} (seeds ${g.seeds.join(", ")})` }),
        el("td", { class: "num", text: String(g.n) }),
        ...keys.map((k) => {
          const s = g.stats[k];
          return el("td", { class: "num", text: s ? `${formatNumber(s.mean)} ± ${formatNumber(s.std)}` : "–", title: s ? `min ${s.min}, max ${s.max}` : "" });
        }),
      ),
    );
    container.append(el("h2", { text: "Mean ± spread over seeds" }), el("div", { class: "table-wrap" }, el("table", { class: "runs", id: "cmp-groups-table" }, el("thead", {}, head), el("tbody", {}, ...rows))));
  }

  // -- metric against swept parameters -----------------------------------------------------------------
  // Draws mean ± std whiskers for points averaged over several runs (seeds).
  function whiskers(lines) {
    return (u) => {
      const ctx = u.ctx;
      ctx.save();
      lines.forEach((line, i) => {
        ctx.strokeStyle = color(i);
        ctx.lineWidth = 1.5;
        for (const p of line.points) {
          if (p.n < 2) continue;
          const x = u.valToPos(p.x, "x", true);
          const y0 = u.valToPos(p.mean - p.std, "y", true);
          const y1 = u.valToPos(p.mean + p.std, "y", true);
          ctx.beginPath();
          ctx.moveTo(x, y0);
          ctx.lineTo(x, y1);
          ctx.moveTo(x - 4, y0);
          ctx.lineTo(x + 4, y0);
          ctx.moveTo(x - 4, y1);
          ctx.lineTo(x + 4, y1);
          ctx.stroke();
        }
      });
      ctx.restore();
    };
  }

  function drawParams(data) {
    const container = $("cmp-params");
    container.replaceChildren();
    $("cmp-params-section").hidden = !data.params.length;
    for (const param of data.params) {
      for (const metric of PARAM_METRICS) {
        const chart = param.metrics[metric];
        if (!chart) continue;
        const xs = [...new Set(chart.lines.flatMap((l) => l.points.map((p) => p.x)))].sort((a, b) => a - b);
        const columns = chart.lines.map((l) => {
          const at = new Map(l.points.map((p) => [p.x, p.mean]));
          return xs.map((x) => (at.has(x) ? at.get(x) : null));
        });
        const { fig, body } = figure(container, `${chart.label} against ${param.label}${param.log2 ? " (log₂)" : ""}`, {
          "data-param": param.param,
          "data-metric": metric,
          "data-points": String(xs.length),
        });
        plot(
          fig,
          body,
          {
            scales: { x: param.log2 ? { time: false, distr: 3, log: 2 } : { time: false } },
            axes: [{ label: param.label, values: axisValues, ...(param.log2 ? { splits: () => xs } : {}) }, { size: 60, values: axisValues }],
            series: [
              { label: param.label, value: (u, v) => (v == null ? "" : formatNumber(v)) },
              ...chart.lines.map((l, i) => ({
                label: l.label,
                stroke: color(i),
                width: 2,
                spanGaps: true,
                value: (u, v) => formatNumber(v),
                points: { show: true, size: 7 },
              })),
            ],
            hooks: { draw: [whiskers(chart.lines)] },
          },
          [xs, ...columns],
        );
      }
    }
  }

  // -- efficiency --------------------------------------------------------------------------------------
  function drawEfficiency(data) {
    const container = $("cmp-efficiency");
    container.replaceChildren();
    const select = $("cmp-eff-metric");
    const available = data.efficiency.metrics.filter((m) => data.efficiency.points.some((p) => p[m.key] != null));
    if (!available.length) {
      container.append(el("p", { class: "muted", text: "No finished runs with evaluation metrics yet." }));
      select.hidden = true;
      return;
    }
    select.hidden = false;
    if (!state.effMetric || !available.some((m) => m.key === state.effMetric)) state.effMetric = available[0].key;
    select.replaceChildren(...available.map((m) => el("option", { value: m.key, text: m.label, selected: m.key === state.effMetric })));
    const metric = available.find((m) => m.key === state.effMetric);
    const methods = [...new Set(data.efficiency.points.map((p) => p.method))];
    for (const [cost, title, scale] of [
      ["trainable_params", "trainable parameters (log)", 1],
      ["peak_memory", "peak memory (MiB)", 1 / 2 ** 20],
    ]) {
      const points = data.efficiency.points.filter((p) => p[cost] != null && p[metric.key] != null);
      if (!points.length) continue;
      const xs = [...new Set(points.map((p) => p[cost] * scale))].sort((a, b) => a - b);
      const index = new Map(xs.map((x, i) => [x, i]));
      const columns = methods.map((m) => {
        const col = new Array(xs.length).fill(null);
        for (const p of points) if (p.method === m) col[index.get(p[cost] * scale)] = p[metric.key];
        return col;
      });
      const frontIds = new Set((data.efficiency.pareto[cost] || {})[metric.key] || []);
      const front = new Array(xs.length).fill(null);
      for (const p of points) if (frontIds.has(p.run_id)) front[index.get(p[cost] * scale)] = p[metric.key];
      const { fig, body } = figure(container, `${metric.label} against ${title}`, {
        "data-cost": cost,
        "data-metric": metric.key,
        "data-pareto": [...frontIds].join(","),
      });
      plot(
        fig,
        body,
        {
          scales: { x: cost === "trainable_params" ? { time: false, distr: 3 } : { time: false } },
          axes: [{ label: title, values: axisValues }, { size: 60, values: axisValues }],
          series: [
            { label: cost === "trainable_params" ? "params" : "MiB", value: (u, v) => (v == null ? "" : formatNumber(v)) },
            ...methods.map((m) => ({
              label: m,
              stroke: methodColor(m),
              fill: methodColor(m),
              paths: () => null,
              points: { show: true, size: 9, fill: methodColor(m) },
              value: (u, v) => formatNumber(v),
            })),
            {
              label: `Pareto front (${metric.lower_is_better ? "lower" : "higher"} is better)`,
              stroke: "#111827",
              width: 1.5,
              dash: [6, 4],
              spanGaps: true,
              points: { show: true, size: 13, fill: "transparent", stroke: "#111827", width: 1.5 },
              value: (u, v) => formatNumber(v),
            },
          ],
        },
        [xs, ...columns, front],
      );
    }
  }

  // -- loading -----------------------------------------------------------------------------------------
  function render() {
    const data = state.data;
    const timings = {};
    const timed = (name, fn) => {
      const t0 = performance.now();
      fn(data);
      timings[name] = Math.round(performance.now() - t0);
    };
    timed("destroy", destroyPlots);
    timed("curves", drawCurves);
    timed("table", drawTable);
    timed("groups", drawGroups);
    timed("params", drawParams);
    timed("efficiency", drawEfficiency);
    if (window.TunedeckText) {
      window.TunedeckText.attach({ el, data: () => state.data });
      timed("diff", window.TunedeckText.drawDiff);
      timed("generations", window.TunedeckText.drawGenerations);
    }
    if (window.TunedeckViews) timed("views", (d) => window.TunedeckViews.render(d, { el, color, formatNumber, plot, figure, plotsIn, reload: load }));
    root.dataset.renderMs = JSON.stringify(timings); // how long each view took to draw (benchmarks read it)
    const active = data.table.filter((r) => r.status === "queued" || r.status === "running").length;
    $("cmp-status").textContent = `${data.table.length} runs` + (active ? ` · ${active} still training, refreshing` : "");
    // uPlot draws its canvases in a microtask after construction: once a task runs, every chart is drawn.
    // Then the browser lays out and paints the next frame. Both moments in ms since navigation started
    // (read by bench/compare_api.py).
    setTimeout(() => {
      root.dataset.readyAt = String(Math.round(performance.now()));
      requestAnimationFrame(() => setTimeout(() => (root.dataset.frameAt = String(Math.round(performance.now()))), 0));
      root.dataset.ready = "true";
    }, 0);
  }

  async function load() {
    let active = false;
    try {
      const response = await fetch(`/api/compare?${apiQuery()}&x=${state.x}`);
      const payload = await response.json();
      if (!response.ok) {
        $("cmp-status").textContent = payload.detail || payload.message || `error ${response.status}`;
        return;
      }
      state.data = payload;
      render();
      active = payload.table.some((r) => r.status === "queued" || r.status === "running");
    } finally {
      if (live && active) setTimeout(load, 5000);
    }
  }

  $("cmp-x").addEventListener("change", (e) => {
    state.x = e.target.value;
    load();
  });
  $("cmp-logy").addEventListener("change", (e) => {
    state.logY = e.target.checked;
    if (state.data) render();
  });
  $("cmp-smooth").addEventListener("input", (e) => {
    state.smooth = parseFloat(e.target.value);
    $("cmp-smooth-value").textContent = e.target.value;
    if (state.data) render();
  });
  $("cmp-eff-metric").addEventListener("change", (e) => {
    state.effMetric = e.target.value;
    if (state.data) {
      for (const entry of state.plots.filter((p) => $("cmp-efficiency").contains(p.body))) entry.plot.destroy();
      state.plots = state.plots.filter((p) => !$("cmp-efficiency").contains(p.body));
      drawEfficiency(state.data);
    }
  });
  // Charts follow the page's width (only its width: the section grows taller as views are added).
  if (window.ResizeObserver) {
    let pending = null;
    let width = root.clientWidth;
    new ResizeObserver(() => {
      if (root.clientWidth === width) return;
      width = root.clientWidth;
      clearTimeout(pending);
      pending = setTimeout(() => {
        for (const { plot, body } of state.plots) {
          const w = Math.max(300, body.clientWidth || 480);
          if (Math.abs(plot.width - w) > 1) plot.setSize({ width: w, height: 240 });
        }
      }, 100);
    }).observe(root);
  }
  load();
})();
