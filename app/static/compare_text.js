// The comparison's text views, drawn from GET /api/compare's `diff` and `generations`: the spec fields that differ
// between the runs, and the runs' answers to the held-out prompts side by side, above them any prompt typed on the
// page (each run answers it through POST /api/runs/{id}/generate). compare.js calls attach() and then draws.
(function () {
  const root = document.getElementById("compare");
  if (!root) return;
  const $ = (id) => document.getElementById(id);
  let ctx = { el: null, data: () => null }; // compare.js's element helper and its latest answer
  const el = (...args) => ctx.el(...args);

  // -- config diff -------------------------------------------------------------------------------------
  function drawDiff(data) {
    const container = $("cmp-diff");
    const { fields, rows } = data.diff;
    if (!fields.length) {
      container.replaceChildren(el("p", { class: "muted", text: rows.length > 1 ? "The selected runs have identical specs (but for their names)." : "Select two runs or more to see what differs." }));
      return;
    }
    const head = el("tr", {}, el("th", { text: "field" }), ...rows.map((r) => el("th", { text: `#${r.run_id} ${r.name}` })));
    const body = fields.map((f) =>
      el(
        "tr",
        { "data-field": f },
        el("td", {}, el("code", { text: f })),
        ...rows.map((r) => {
          const v = r.values[f];
          return el("td", { class: v == null ? "muted" : "", text: v == null ? "–" : typeof v === "object" ? JSON.stringify(v) : String(v) });
        }),
      ),
    );
    container.replaceChildren(el("table", { class: "runs diff", id: "cmp-diff-table" }, el("thead", {}, head), el("tbody", {}, ...body)));
  }

  // -- generations -------------------------------------------------------------------------------------
  let typedRows = [];
  function drawGenerations(data) {
    const container = $("cmp-generations");
    const runs = data.table;
    const prompts = [...typedRows, ...data.generations.prompts];
    if (!prompts.length) {
      container.replaceChildren(el("p", { class: "muted", text: "No held-out answers stored yet (they are written at the end of training); type a prompt above." }));
      return;
    }
    const head = el("tr", {}, el("th", { text: "Prompt" }), el("th", { text: "Reference" }), ...runs.map((r) => el("th", { text: `#${r.id} ${r.name}` })));
    const body = prompts.map((p) =>
      el(
        "tr",
        { class: p.typed ? "typed" : "" },
        el("td", { class: "prompt", text: p.prompt }),
        el("td", { class: "reference", text: p.reference == null ? "–" : p.reference }),
        ...runs.map((r) => {
          const out = p.outputs[String(r.id)];
          if (out == null) return el("td", { class: "muted", text: p.typed ? "…" : "–" });
          if (out === "") return el("td", { class: "muted", text: "(empty answer)" });
          return el("td", { class: p.reference != null && out.trim() === p.reference.trim() ? "exact" : "", text: out });
        }),
      ),
    );
    container.replaceChildren(el("table", { class: "runs generations", id: "cmp-generations-table" }, el("thead", {}, head), el("tbody", {}, ...body)));
  }

  $("cmp-try").addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = $("cmp-try-prompt").value.trim();
    if (!text || !ctx.data()) return;
    const row = { prompt: text, reference: null, outputs: {}, typed: true };
    typedRows.unshift(row);
    drawGenerations(ctx.data());
    await Promise.all(
      ctx.data().table.map(async (r) => {
        try {
          const response = await fetch(`/api/runs/${r.id}/generate`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify({ prompts: [text], max_new_tokens: 64 }),
          });
          const payload = await response.json();
          row.outputs[String(r.id)] = response.ok ? payload.completions[0].completion : `(${payload.detail || payload.message || response.status})`;
        } catch (error) {
          row.outputs[String(r.id)] = `(${error})`;
        }
        drawGenerations(ctx.data());
      }),
    );
  });

  window.TunedeckText = {
    attach(context) {
      ctx = context;
    },
    drawDiff,
    drawGenerations,
  };
})();
