// Live metric charts for one run: fetch only the points after the last step seen, redraw with uPlot.
(function () {
  const root = document.getElementById("charts");
  if (!root) return;
  const runId = root.dataset.runId;
  const maxSteps = parseInt(root.dataset.maxSteps, 10) || 0;
  const palette = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c"];
  const labels = {
    loss: "train loss",
    eval_loss: "eval loss",
    learning_rate: "learning rate",
    tokens_per_second: "tokens/s",
    memory_bytes: "memory",
  };
  const POLL_MS = 500;
  const sparse = new Set(["eval_loss"]); // a few points per run: always mark them
  const series = {}; // key -> [[step, value], ...]
  let lastStep = -1;
  let settled = false;
  const charts = [];

  for (const figure of root.querySelectorAll("figure.chart")) {
    charts.push({ figure, keys: figure.dataset.keys.split(","), scale: parseFloat(figure.dataset.scale), plot: null });
  }

  function isActive() {
    const live = document.getElementById("run-live");
    return live && ["queued", "running"].includes(live.dataset.status);
  }

  // Axis numbers people can read: 2e-4 rather than 0.000, 3,000 rather than 3000.
  function formatNumber(value) {
    if (value == null || !isFinite(value)) return "";
    const size = Math.abs(value);
    if (size === 0) return "0";
    if (size < 1e-2 || size >= 1e7) return value.toExponential(1).replace("e-", "e\u2212");
    if (size >= 1000) return Math.round(value).toLocaleString("en-US");
    return String(parseFloat(value.toPrecision(3)));
  }

  // Steps are whole numbers: ticks at 1, 2, 5, 10, 20, 25, 50, ...
  const stepIncrements = [];
  for (let power = 1; power <= 1e8; power *= 10) stepIncrements.push(power, 2 * power, 2.5 * power, 5 * power);

  function alignedData(keys, scale) {
    const steps = [...new Set(keys.flatMap((k) => (series[k] || []).map((p) => p[0])))].sort((a, b) => a - b);
    const index = new Map(steps.map((s, i) => [s, i]));
    const columns = keys.map(() => new Array(steps.length).fill(null));
    keys.forEach((k, j) => (series[k] || []).forEach(([s, v]) => (columns[j][index.get(s)] = v * scale)));
    return [steps, ...columns];
  }

  // uPlot shows "--" for every value while the cursor is off the chart: hide the values (and the step) then.
  function markIdleLegend(plot) {
    const legend = plot.root.querySelector(".u-legend");
    if (legend) legend.classList.toggle("idle", plot.cursor.idx == null);
  }

  function chartWidth(body) {
    return Math.max(280, body.clientWidth || 420);
  }

  function draw(chart) {
    const present = chart.keys.filter((k) => series[k] && series[k].length);
    if (!present.length) return;
    const data = alignedData(present, chart.scale);
    const body = chart.figure.querySelector(".chart-body");
    chart.figure.dataset.points = String(data[0].length);
    if (chart.plot && chart.plot.series.length - 1 === present.length) {
      chart.plot.setData(data);
      return;
    }
    if (chart.plot) chart.plot.destroy();
    const placeholder = body.querySelector(".chart-empty");
    if (placeholder) placeholder.remove();
    chart.plot = new uPlot(
      {
        width: chartWidth(body),
        height: 220,
        scales: {
          x: { time: false, range: (u, min, max) => [Math.min(0, min), Math.max(max, maxSteps, 1)] },
        },
        axes: [
          { label: "step", incrs: stepIncrements, values: (u, splits) => splits.map(formatNumber) },
          { size: 60, values: (u, splits) => splits.map(formatNumber) },
        ],
        series: [
          { label: "step", value: (u, v) => (v == null ? "" : String(v)) },
          ...present.map((k, i) => ({
            label: labels[k] || k,
            stroke: palette[i % palette.length],
            width: 2,
            spanGaps: true,
            value: (u, v) => formatNumber(v),
            points: { show: sparse.has(k) || data[0].length < 60 },
          })),
        ],
        hooks: { setLegend: [markIdleLegend] },
      },
      data,
      body,
    );
    markIdleLegend(chart.plot);
    chart.figure.dataset.drawn = "true";
  }

  function showNoData() {
    for (const chart of charts) {
      const placeholder = chart.figure.querySelector(".chart-empty");
      if (placeholder && !chart.plot) placeholder.textContent = "No metrics were recorded.";
    }
  }

  if (window.ResizeObserver) {
    const resized = new ResizeObserver(() => {
      for (const chart of charts) {
        if (chart.plot) chart.plot.setSize({ width: chartWidth(chart.figure.querySelector(".chart-body")), height: 220 });
      }
    });
    charts.forEach((chart) => resized.observe(chart.figure));
  }

  // The log tail shows its newest lines: keep it scrolled to the bottom as htmx swaps it in.
  function scrollLog() {
    const log = document.getElementById("run-log");
    if (log) log.scrollTop = log.scrollHeight;
  }
  scrollLog();
  document.body.addEventListener("htmx:afterSwap", scrollLog);

  async function poll() {
    try {
      const response = await fetch(`/api/runs/${runId}/metrics?after_step=${lastStep}`);
      if (response.ok) {
        const payload = await response.json();
        let newest = lastStep;
        for (const [key, points] of Object.entries(payload.series)) {
          series[key] = (series[key] || []).concat(points);
          for (const [step] of points) newest = Math.max(newest, step);
        }
        // A later batch may still add keys (eval_loss) at the newest step: re-read that step next time.
        lastStep = newest - 1;
        for (const key of Object.keys(series)) {
          const seen = new Map(series[key].map((p) => [p[0], p]));
          series[key] = [...seen.values()].sort((a, b) => a[0] - b[0]);
        }
        charts.forEach(draw);
        root.dataset.lastStep = String(newest); // drawn: what the live-latency benchmark waits for
      }
    } finally {
      // Every half second while the run is live: with the worker's quarter-second flush, a logged point is
      // drawn within about 0.8 s (bench/dashboard.py); each poll asks only for points after the last step seen.
      if (isActive()) setTimeout(poll, POLL_MS);
      else if (!settled) {
        // The run just ended (or had ended): one more read picks up points flushed as it finished.
        settled = true;
        setTimeout(poll, 0);
      } else showNoData();
    }
  }
  poll();
})();
