// The views that explain a sweep, drawn from GET /api/compare's `parallel`, `importance`, `groups` and
// `group_curves` and `trials`: parallel coordinates (SVG; drag along an axis to brush it, which hides the table's
// other rows), parameter importances (bars), the objective trial by trial with the best so far (uPlot), grouping by
// any config field (mean ± std curves). The page's URL holds the view: group_by, objective, axes (the parameter axes
// shown), brush (axis:low:high, ;-separated) and trials (succeeded: the trials chart without pruned or failed runs),
// so it can be shared.
(function () {
  const root = document.getElementById("compare");
  if (!root) return;
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  const url = new URL(location.href);
  const view = {
    brush: parseBrush(url.searchParams.get("brush")),
    axes: url.searchParams.get("axes") ? url.searchParams.get("axes").split(",") : null,
    selected: null, // run ids inside every brush (null: no brush)
    trialsSucceededOnly: url.searchParams.get("trials") === "succeeded",
  };

  function parseBrush(text) {
    const out = {};
    for (const part of (text || "").split(";")) {
      const bits = part.split(":");
      if (bits.length === 3 && isFinite(+bits[1]) && isFinite(+bits[2])) out[bits[0]] = [+bits[1], +bits[2]];
    }
    return out;
  }
  function writeUrl() {
    const u = new URL(location.href);
    const brush = Object.entries(view.brush).map(([k, [a, b]]) => `${k}:${+a.toPrecision(6)}:${+b.toPrecision(6)}`).join(";");
    brush ? u.searchParams.set("brush", brush) : u.searchParams.delete("brush");
    view.axes ? u.searchParams.set("axes", view.axes.join(",")) : u.searchParams.delete("axes");
    view.trialsSucceededOnly ? u.searchParams.set("trials", "succeeded") : u.searchParams.delete("trials");
    history.replaceState(null, "", u);
  }
  function setParam(name, value) {
    // group_by and objective change the answer: the API query and the page's URL both carry them
    const q = new URLSearchParams(root.dataset.query);
    const u = new URL(location.href);
    for (const params of [q, u.searchParams]) value ? params.set(name, value) : params.delete(name);
    root.dataset.query = q.toString().replace(/%2C/g, ",");
    history.replaceState(null, "", u);
  }

  // -- parallel coordinates ---------------------------------------------------------------------------
  function scaleOf(axis, height) {
    const top = 24, bottom = height - 28;
    if (axis.type === "category") {
      const n = axis.categories.length;
      const pos = (v) => bottom - ((axis.categories.indexOf(v) + 0.5) / n) * (bottom - top);
      return { pos, top, bottom, invert: null };
    }
    const f = axis.log ? Math.log : (v) => v;
    const lo = axis.min == null ? 0 : f(axis.min), hi = axis.max == null ? 1 : f(axis.max);
    const span = hi - lo || 1;
    const pos = (v) => bottom - ((f(v) - lo) / span) * (bottom - top);
    const invert = (y) => { const t = lo + ((bottom - y) / (bottom - top)) * span; return axis.log ? Math.exp(t) : t; };
    return { pos, top, bottom, invert };
  }
  function node(tag, attrs) {
    const n = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) n.setAttribute(k, v);
    return n;
  }
  function inBrush(axis, value, [a, b]) {
    if (value == null) return false;
    if (axis.type === "category") {
      const i = axis.categories.indexOf(value), n = axis.categories.length;
      const pos = (i + 0.5) / n; // brushes on category axes are kept in [0, 1] of the axis
      return pos >= Math.min(a, b) && pos <= Math.max(a, b);
    }
    return value >= Math.min(a, b) && value <= Math.max(a, b);
  }

  function drawParallel(data, ctx) {
    const container = $("cmp-parallel");
    container.replaceChildren();
    const par = data.parallel;
    const params = par.axes.filter((a) => a.kind === "param");
    if (!params.length) {
      container.append(ctx.el("p", { class: "muted", text: "The runs share every parameter: nothing to draw." }));
      view.selected = null;
      return;
    }
    // the axes picker: which parameter axes are shown (kept in the URL)
    const shownKeys = view.axes ? params.filter((a) => view.axes.includes(a.key)).map((a) => a.key) : params.map((a) => a.key);
    const picker = ctx.el("div", { class: "compare-controls", id: "cmp-axes" });
    for (const a of params) {
      const box = ctx.el("input", { type: "checkbox", checked: shownKeys.includes(a.key), "data-axis": a.key });
      box.addEventListener("change", () => {
        const keys = [...picker.querySelectorAll("input:checked")].map((i) => i.dataset.axis);
        view.axes = keys.length === params.length ? null : keys;
        writeUrl();
        drawParallel(data, ctx);
        filterTable();
      });
      picker.append(ctx.el("label", {}, box, " " + a.key));
    }
    container.append(picker);
    const axes = [...params.filter((a) => shownKeys.includes(a.key)), ...par.axes.filter((a) => a.kind === "metric")];
    const width = Math.max(480, container.clientWidth || 800), height = 300;
    const gap = (width - 80) / Math.max(1, axes.length - 1);
    const svg = node("svg", { width, height, id: "cmp-parallel-svg", class: "parallel" });
    const scales = axes.map((a) => scaleOf(a, height));
    const xOf = (i) => 40 + i * gap;
    const order = new Map(data.run_ids.map((id, i) => [id, i]));
    const lines = new Map();
    for (const p of par.points) {
      const pts = axes.map((a, i) => (p.values[a.key] == null ? null : `${xOf(i)},${scales[i].pos(p.values[a.key])}`));
      const path = node("polyline", {
        points: pts.filter(Boolean).join(" "),
        fill: "none",
        stroke: ctx.color(order.get(p.run_id)),
        "stroke-width": p.run_id === par.best_run_id ? 3 : 1.5,
        "data-run-id": String(p.run_id),
      });
      const tip = node("title");
      tip.textContent = `#${p.run_id} ${p.name}`;
      path.append(tip);
      svg.append(path);
      lines.set(p.run_id, path);
    }
    axes.forEach((axis, i) => {
      const s = scales[i], x = xOf(i);
      const g = node("g", { class: "axis", "data-axis": axis.key });
      g.append(node("line", { x1: x, x2: x, y1: s.top, y2: s.bottom, stroke: "#374151" }));
      // the outer axes' titles and the last axis's ticks grow inwards: centred, they were cut off at the edges
      const first = i === 0, last = i === axes.length - 1 && i > 0;
      const anchor = first ? "start" : last ? "end" : "middle";
      const title = node("text", { x: first ? x - 8 : last ? x + 8 : x, y: 14, "text-anchor": anchor, "font-size": 12, "font-weight": axis.kind === "metric" ? "bold" : "normal" });
      title.textContent = axis.kind === "metric" ? `${axis.label} (${axis.lower_is_better ? "lower" : "higher"} is better)` : axis.label;
      g.append(title);
      const ticks = axis.type === "category" ? axis.categories : axis.min == null ? [] : [axis.min, axis.max];
      for (const t of ticks) {
        const label = node("text", { x: last ? x - 4 : x + 4, y: s.pos(t) + 4, "font-size": 10, fill: "#4b5563", "text-anchor": last ? "end" : "start" });
        label.textContent = axis.type === "category" ? t : ctx.formatNumber(t);
        g.append(label);
      }
      // the brush: drag along the axis; a click without a drag clears it
      const hit = node("rect", { x: x - 10, y: s.top, width: 20, height: s.bottom - s.top, fill: "transparent", cursor: "ns-resize", class: "brush-area" });
      const band = node("rect", { x: x - 7, width: 14, fill: "rgba(37,99,235,0.25)", stroke: "#2563eb", class: "brush", visibility: "hidden" });
      g.append(band, hit);
      const toValue = (y) => (axis.type === "category" ? (s.bottom - y) / (s.bottom - s.top) : s.invert(y));
      const toY = (v) => (axis.type === "category" ? s.bottom - v * (s.bottom - s.top) : s.pos(v));
      const show = () => {
        const b = view.brush[axis.key];
        if (!b) return band.setAttribute("visibility", "hidden");
        const [y0, y1] = [toY(b[0]), toY(b[1])];
        band.setAttribute("y", Math.min(y0, y1));
        band.setAttribute("height", Math.max(2, Math.abs(y1 - y0)));
        band.setAttribute("visibility", "visible");
      };
      hit.addEventListener("pointerdown", (event) => {
        const box = svg.getBoundingClientRect();
        const y0 = event.clientY - box.top;
        let moved = false;
        hit.setPointerCapture(event.pointerId);
        const move = (e) => {
          const y = Math.min(s.bottom, Math.max(s.top, e.clientY - box.top));
          moved = moved || Math.abs(y - y0) > 2;
          if (moved) view.brush[axis.key] = [toValue(y0), toValue(y)];
          show();
          apply();
        };
        const up = () => {
          hit.removeEventListener("pointermove", move);
          hit.removeEventListener("pointerup", up);
          if (!moved) delete view.brush[axis.key];
          show();
          apply();
          writeUrl();
        };
        hit.addEventListener("pointermove", move);
        hit.addEventListener("pointerup", up);
      });
      show();
      svg.append(g);
    });
    const apply = () => {
      const active = Object.keys(view.brush).filter((k) => axes.some((a) => a.key === k));
      if (!active.length) view.selected = null;
      else
        view.selected = new Set(
          par.points
            .filter((p) => active.every((k) => inBrush(axes.find((a) => a.key === k), p.values[k], view.brush[k])))
            .map((p) => p.run_id),
        );
      for (const [id, line] of lines) line.setAttribute("stroke-opacity", !view.selected || view.selected.has(id) ? 1 : 0.08);
      svg.dataset.selected = view.selected ? [...view.selected].join(",") : "";
      filterTable();
    };
    container.append(svg);
    apply();
  }

  function filterTable() {
    const table = $("cmp-runs-table");
    if (!table) return;
    let shown = 0;
    for (const row of table.tBodies[0].rows) {
      row.hidden = !!view.selected && !view.selected.has(Number(row.dataset.runId));
      if (!row.hidden) shown += 1;
    }
    table.dataset.shown = String(shown);
  }

  // -- importances --------------------------------------------------------------------------------------
  function drawImportance(data, ctx) {
    const container = $("cmp-importance");
    const imp = data.importance;
    if (!imp.params.length) {
      container.replaceChildren(ctx.el("p", { class: "muted", text: `Parameter importance: ${imp.reason || "nothing to rank"}.` }));
      return;
    }
    const rows = imp.params.map((p) =>
      ctx.el(
        "tr",
        { "data-param": p.key },
        ctx.el("td", {}, ctx.el("code", { text: p.key })),
        ctx.el("td", { class: "importance" }, ctx.el("span", { class: "bar", style: `width:${Math.round(p.importance * 100)}%` })),
        ctx.el("td", { class: "num", text: (100 * p.importance).toFixed(1) + "%" }),
      ),
    );
    const note = `${imp.evaluator}, ${imp.trials} runs with ${imp.objective}` + (imp.left_out.length ? `; left out (not in every run): ${imp.left_out.join(", ")}` : "");
    container.replaceChildren(
      ctx.el("table", { class: "runs", id: "cmp-importance-table" }, ctx.el("tbody", {}, ...rows)),
      ctx.el("p", { class: "muted", text: note }),
    );
  }

  // -- the objective trial by trial ---------------------------------------------------------------------
  // One point per run at its trial (filled: succeeded, hollow: pruned, grey: failed or cancelled) and the best
  // succeeded value so far as a step line; the best run is ringed.
  const TRIAL_STYLE = {
    succeeded: { label: "succeeded", stroke: "#2563eb", fill: "#2563eb", size: 8 },
    pruned: { label: "pruned", stroke: "#ea580c", fill: "#ffffff", size: 9 },
    failed: { label: "failed or cancelled", stroke: "#6b7280", fill: "#9ca3af", size: 7 },
  };
  // y ticks with digits enough to tell them apart (trials often differ in the third digit)
  function closeValues(u, splits) {
    const span = Math.abs(splits[splits.length - 1] - splits[0]) || 1;
    const size = Math.max(...splits.map((v) => Math.abs(v)));
    const digits = Math.min(8, Math.max(3, Math.ceil(Math.log10(size / span)) + 2));
    return splits.map((v) => String(+v.toPrecision(digits)));
  }
  const trialKind = (state) => (state === "cancelled" ? "failed" : state);

  function drawTrials(data, ctx) {
    const container = $("cmp-trials");
    if (!container || !data.trials) return;
    container.replaceChildren();
    const tv = data.trials;
    const only = ctx.el("input", { type: "checkbox", id: "cmp-trials-succeeded", checked: view.trialsSucceededOnly });
    only.addEventListener("change", () => {
      view.trialsSucceededOnly = only.checked;
      writeUrl();
      for (const entry of ctx.plotsIn(container)) entry.plot.destroy();
      drawTrials(data, ctx);
    });
    const counts = Object.entries(tv.counts).map(([k, n]) => `${n} ${k}`).join(", ");
    const best = tv.points.find((p) => p.is_best);
    container.append(
      ctx.el("div", { class: "compare-controls" }, ctx.el("label", {}, only, " succeeded runs only")),
      ctx.el(
        "p",
        { class: "muted", id: "cmp-trials-best" },
        best
          ? `Best so far: #${best.run_id} ${best.name}, ${tv.objective.label} ${ctx.formatNumber(best.value)} (trial ${best.number ?? best.trial}). `
          : "No succeeded run with this metric yet. ",
        `${tv.points.length} runs in ${tv.order === "sweep trial" ? "sweep trial" : "creation"} order: ${counts}.`,
      ),
    );
    const shown = tv.points.filter((p) => !view.trialsSucceededOnly || p.state === "succeeded");
    if (!shown.some((p) => p.value != null)) return;
    const numbered = shown.every((p) => p.number != null); // a sweep's trial numbers, else the runs' order
    const xs = shown.map((p) => (numbered ? p.number : p.trial));
    const kinds = Object.keys(TRIAL_STYLE).filter((k) => shown.some((p) => trialKind(p.state) === k && p.value != null));
    const columns = kinds.map((k) => shown.map((p) => (trialKind(p.state) === k ? p.value : null)));
    const bestLine = shown.map((p) => p.best_so_far);
    const ring = shown.map((p) => (p.is_best ? p.value : null));
    const { fig, body } = ctx.figure(container, `${tv.objective.label} by trial (${tv.objective.lower_is_better ? "lower" : "higher"} is better)`, {
      id: "cmp-trials-chart",
      "data-points": String(shown.filter((p) => p.value != null).length),
      "data-pruned": String(shown.filter((p) => p.state === "pruned").length),
      "data-best-run-id": String(tv.best_run_id ?? ""),
    });
    ctx.plot(
      fig,
      body,
      {
        scales: { x: { time: false } },
        axes: [{ label: tv.order === "sweep trial" ? "trial" : "run (creation order)", values: (u, s) => s.map((v) => (Number.isInteger(v) ? String(v) : "")) }, { size: 60, values: closeValues }],
        series: [
          { label: "trial", value: (u, v) => (v == null ? "" : String(v)) },
          ...kinds.map((k) => ({
            label: TRIAL_STYLE[k].label,
            stroke: TRIAL_STYLE[k].stroke,
            paths: () => null,
            points: { show: true, size: TRIAL_STYLE[k].size, fill: TRIAL_STYLE[k].fill, stroke: TRIAL_STYLE[k].stroke, width: 2 },
            value: (u, v) => ctx.formatNumber(v),
          })),
          { label: "best so far", stroke: "#111827", width: 1.5, spanGaps: true, paths: uPlot.paths.stepped({ align: 1 }), points: { show: false }, value: (u, v) => ctx.formatNumber(v) },
          { label: "best run", stroke: "#16a34a", paths: () => null, points: { show: true, size: 16, fill: "transparent", stroke: "#16a34a", width: 2 }, value: (u, v) => ctx.formatNumber(v) },
        ],
      },
      [xs, ...columns, bestLine, ring],
    );
  }

  // -- grouping ---------------------------------------------------------------------------------------
  function drawGroupControls(data) {
    const group = $("cmp-group-by"), objective = $("cmp-objective");
    const current = (data.group_by || []).join(",");
    const fields = [...new Set([...data.diff.fields.filter((f) => f !== "name"), ...(data.group_by || [])])];
    group.replaceChildren(new Option("runs differing only in seed", ""), ...fields.map((f) => new Option(f, f, false, f === current)));
    group.value = current;
    objective.replaceChildren(...data.efficiency.metrics.map((m) => new Option(m.label, m.key, false, m.key === data.parallel.objective.key)));
    objective.value = data.parallel.objective.key;
  }

  function drawGroupCurves(data, ctx) {
    const container = $("cmp-group-curves");
    container.replaceChildren();
    for (const [key, groups] of Object.entries(data.group_curves || {})) {
      const xs = [...new Set(groups.flatMap((g) => g.x))].sort((a, b) => a - b);
      const slot = new Map(xs.map((x, i) => [x, i]));
      const columns = [], series = [{ label: "step" }], bands = [];
      groups.forEach((g, i) => {
        const mean = new Array(xs.length).fill(null), lo = mean.slice(), hi = mean.slice();
        g.x.forEach((x, j) => {
          const at = slot.get(x);
          if (g.mean[j] == null) return;
          mean[at] = g.mean[j];
          lo[at] = g.mean[j] - g.std[j];
          hi[at] = g.mean[j] + g.std[j];
        });
        const base = columns.length + 1;
        columns.push(mean, hi, lo);
        series.push(
          { label: `${g.label} (n=${g.run_ids.length})`, stroke: ctx.color(i), width: 1.5, spanGaps: true, value: (u, v) => ctx.formatNumber(v) },
          { label: "+std", stroke: "transparent", spanGaps: true, show: true },
          { label: "−std", stroke: "transparent", spanGaps: true, show: true },
        );
        bands.push({ series: [base + 1, base + 2], fill: ctx.color(i) + "33" });
      });
      const { fig, body } = ctx.figure(container, `${key}: mean ± std by group`, { "data-key": key, "data-groups": String(groups.length) });
      ctx.plot(fig, body, { legend: { show: groups.length <= 8 }, scales: { x: { time: false } }, series, bands }, [xs, ...columns]);
    }
  }

  let wired = false;
  function render(data, ctx) {
    drawGroupControls(data);
    drawParallel(data, ctx);
    drawImportance(data, ctx);
    drawTrials(data, ctx);
    drawGroupCurves(data, ctx);
    if (!wired) {
      wired = true;
      $("cmp-group-by").addEventListener("change", (e) => { setParam("group_by", e.target.value); ctx.reload(); });
      $("cmp-objective").addEventListener("change", (e) => { setParam("objective", e.target.value); ctx.reload(); });
    }
    root.dataset.viewsDrawn = "true";
  }

  window.TunedeckViews = { render, filterTable };
})();
