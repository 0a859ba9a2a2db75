// Live metric charts for one run: fetch only the points after the last step seen, redraw with uPlot.
(function () {
  const root = document.getElementById("charts");
  if (!root) return;
  const runId = root.dataset.runId;
  const palette = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c"];
  const series = {}; // key -> [[step, value], ...]
  let lastStep = -1;
  const charts = [];

  for (const figure of root.querySelectorAll("figure.chart")) {
    charts.push({ figure, keys: figure.dataset.keys.split(","), scale: parseFloat(figure.dataset.scale), plot: null });
  }

  function isActive() {
    const live = document.getElementById("run-live");
    return live && ["queued", "running"].includes(live.dataset.status);
  }

  function alignedData(keys, scale) {
    const steps = [...new Set(keys.flatMap((k) => (series[k] || []).map((p) => p[0])))].sort((a, b) => a - b);
    const index = new Map(steps.map((s, i) => [s, i]));
    const columns = keys.map(() => new Array(steps.length).fill(null));
    keys.forEach((k, j) => (series[k] || []).forEach(([s, v]) => (columns[j][index.get(s)] = v * scale)));
    return [steps, ...columns];
  }

  function draw(chart) {
    const present = chart.keys.filter((k) => series[k] && series[k].length);
    if (!present.length) return;
    const data = alignedData(present, chart.scale);
    const body = chart.figure.querySelector(".chart-body");
    if (chart.plot && chart.plot.series.length - 1 === present.length) {
      chart.plot.setData(data);
      return;
    }
    if (chart.plot) chart.plot.destroy();
    chart.plot = new uPlot(
      {
        width: Math.max(280, body.clientWidth || 420),
        height: 220,
        scales: { x: { time: false } },
        axes: [{ label: "step" }, {}],
        series: [{ label: "step" }, ...present.map((k, i) => ({ label: k, stroke: palette[i % palette.length], width: 2, spanGaps: true, points: { show: data[0].length < 60 } }))],
      },
      data,
      body,
    );
    chart.figure.dataset.drawn = "true";
  }

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
      }
    } finally {
      if (isActive()) setTimeout(poll, 1500);
    }
  }
  poll();
})();
