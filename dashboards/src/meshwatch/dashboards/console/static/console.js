// meshwatch console: one page over the console's JSON endpoints. Charts are uPlot (vendored from npm).
"use strict";

const RANGES = ["5m", "15m", "30m", "1h", "3h", "6h", "12h", "24h"];
const COLORS = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#705da0", "#37872d", "#fade2a"];
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

async function api(path, params) {
  const qs = params ? "?" + new URLSearchParams(Object.entries(params).filter(([, v]) => v !== "" && v != null)) : "";
  const response = await fetch("/api/" + path + qs);
  let body;
  try { body = await response.json(); } catch { body = { error: `HTTP ${response.status}` }; }
  if (!response.ok) {
    const err = new Error(body.error || `HTTP ${response.status}`);
    err.status = response.status;
    throw err;
  }
  return body;
}

function setStatus(id, text, isError) {
  const el = $(id);
  el.textContent = text;
  el.classList.toggle("error", !!isError);
}

// --- value formatting (Grafana units, the ones the dashboards use) ---------------------------------

function fmt(value, unit) {
  if (value == null || Number.isNaN(value)) return "–";
  const n = Number(value);
  if (!Number.isFinite(n)) return String(n);
  const num = (x, d = 2) => (Math.abs(x) >= 100 ? x.toFixed(0) : Math.abs(x) >= 10 ? x.toFixed(1) : x.toFixed(d));
  switch (unit) {
    case "percentunit": return num(n * 100) + "%";
    case "percent": return num(n) + "%";
    case "s":
      if (Math.abs(n) < 1e-3 && n !== 0) return num(n * 1e6) + " µs";
      if (Math.abs(n) < 1) return num(n * 1e3) + " ms";
      return num(n) + " s";
    case "ms": return Math.abs(n) >= 1000 ? num(n / 1000) + " s" : num(n) + " ms";
    case "bytes": case "decbytes": {
      const units = ["B", "KiB", "MiB", "GiB", "TiB"];
      let i = 0, x = n;
      while (Math.abs(x) >= 1024 && i < units.length - 1) { x /= 1024; i++; }
      return num(x) + " " + units[i];
    }
    case "reqps": return num(n) + " req/s";
    case "ops": return num(n) + " ops/s";
    case "cps": return num(n) + " c/s";
    default: {
      const a = Math.abs(n);
      if (a >= 1e9) return num(n / 1e9) + "G";
      if (a >= 1e6) return num(n / 1e6) + "M";
      if (a >= 1e4) return num(n / 1e3) + "k";
      return num(n);
    }
  }
}

function legend(format, metric) {
  if (!format || format === "__auto") {
    const { __name__, ...rest } = metric;
    const labels = Object.entries(rest).map(([k, v]) => `${k}="${v}"`).join(", ");
    return (__name__ || "") + (labels ? `{${labels}}` : "") || "value";
  }
  return format.replace(/\{\{\s*([\w.]+)\s*\}\}/g, (_, k) => metric[k] ?? "");
}

// --- charts --------------------------------------------------------------------------------------

// One uPlot chart from aligned series: xs (seconds), series [{label, values}]. The legend (live values
// under the cursor) sits below the plot; the plot shrinks so both fit the box.
function drawChart(box, xs, series, unit, opts = {}) {
  box.innerHTML = "";
  box.classList.add("has-chart");
  const width = Math.max(200, box.clientWidth - 2);
  const height = Math.max(80, (opts.height || box.clientHeight) - 2);
  const data = [xs, ...series.map((s) => s.values)];
  const plot = new uPlot({
    width, height,
    legend: { show: opts.legend !== false, live: true },
    cursor: { drag: { x: true, y: false } },
    scales: { x: { time: true } },
    axes: [
      { stroke: "#8e8e9e", grid: { stroke: "#2c3235" }, ticks: { stroke: "#2c3235" } },
      { stroke: "#8e8e9e", grid: { stroke: "#2c3235" }, ticks: { stroke: "#2c3235" }, size: 84, values: (u, ticks) => ticks.map((t) => fmt(t, unit)) },
    ],
    hooks: opts.exemplars?.length ? { draw: [(u) => drawExemplars(u, opts.exemplars)] } : {},
    series: [{}, ...series.map((s, i) => ({
      label: s.label, stroke: COLORS[i % COLORS.length], width: 1.5,
      // Sparse series (a few scrapes in a long range) would be invisible as lines alone.
      points: { show: s.values.filter((v) => v != null).length < 40, size: 4 },
      value: (u, v) => fmt(v, unit),
    }))],
  }, data, box);
  const legendEl = plot.root.querySelector(".u-legend");
  if (legendEl) {
    // A fixed share for the legend (one line per few series, scrolling beyond), the rest for the plot.
    const perRow = Math.max(1, Math.floor(width / 240));
    const room = Math.min(Math.floor(height / 3), 10 + Math.ceil((series.length + 1) / perRow) * 18);
    legendEl.style.height = legendEl.style.maxHeight = room + "px";
    plot.setSize({ width, height: Math.max(60, height - room) });
  }
  if (opts.exemplars?.length) {
    box.dataset.exemplars = opts.exemplars.length;
    box._exemplars = opts.exemplars;  // where each diamond is (tests click one)
    plot.over.addEventListener("click", (ev) => {
      const hit = nearestExemplar(plot, opts.exemplars, ev.offsetX, ev.offsetY);
      if (hit) location.hash = "traces/" + hit.trace;
    });
    plot.over.addEventListener("mousemove", (ev) => {
      const hit = nearestExemplar(plot, opts.exemplars, ev.offsetX, ev.offsetY);
      plot.over.style.cursor = hit ? "pointer" : "";
      plot.over.title = hit ? `exemplar ${fmt(hit.v, unit)} · trace ${hit.trace}` : "";
    });
  }
  box._plot = plot;
  return plot;
}

// Exemplars (Prometheus /api/v1/query_exemplars): a diamond at (time, value); a click opens the trace.
function drawExemplars(u, exemplars) {
  const ctx = u.ctx;
  ctx.save();
  ctx.fillStyle = "#f2cc0c";
  ctx.strokeStyle = "#111217";
  const r = 4 * devicePixelRatio;
  for (const e of exemplars) {
    const x = u.valToPos(e.t, "x", true), y = u.valToPos(e.v, "y", true);
    if (x < u.bbox.left || x > u.bbox.left + u.bbox.width || y < u.bbox.top || y > u.bbox.top + u.bbox.height) continue;
    ctx.beginPath();
    ctx.moveTo(x, y - r); ctx.lineTo(x + r, y); ctx.lineTo(x, y + r); ctx.lineTo(x - r, y); ctx.closePath();
    ctx.fill(); ctx.stroke();
  }
  ctx.restore();
}

function nearestExemplar(u, exemplars, px, py) {
  let best = null, bestD = 64; // within 8 px
  for (const e of exemplars) {
    const dx = u.valToPos(e.t, "x") - px, dy = u.valToPos(e.v, "y") - py;
    const d = dx * dx + dy * dy;
    if (d < bestD) { best = e; bestD = d; }
  }
  return best;
}

// Prometheus matrix → aligned x and one array per series (null where a series has no sample).
function alignMatrix(result, start, end, step, legendFormat) {
  const xs = [];
  for (let t = Math.ceil(start / step) * step; t <= end + 1e-9; t += step) xs.push(t);
  const index = new Map(xs.map((t, i) => [Math.round(t), i]));
  const series = result.map((s) => {
    const values = new Array(xs.length).fill(null);
    for (const [t, v] of s.values || []) {
      let i = index.get(Math.round(t));
      if (i === undefined) { xs.push(t); i = xs.length - 1; index.set(Math.round(t), i); values.push(null); }
      const n = parseFloat(v);
      values[i] = Number.isFinite(n) ? n : null;
    }
    return { label: legend(legendFormat, s.metric), values };
  });
  return { xs, series };
}

// --- dashboards ------------------------------------------------------------------------------------

const dash = { list: [], models: {}, timer: null, plots: [] };

async function initDashboards() {
  const list = await api("dashboards");
  dash.list = list;
  for (const d of list) dash.models[d.name] = d.model;
  $("dash-select").innerHTML = list.map((d) => `<option value="${esc(d.name)}">${esc(d.title)}</option>`).join("");
  $("dash-select").onchange = () => { location.hash = "dashboards/" + $("dash-select").value; };
  $("dash-range").onchange = () => loadVariables();
  $("dash-reload").onclick = () => loadPanels();
  $("dash-refresh").onchange = () => {
    clearInterval(dash.timer);
    const s = Number($("dash-refresh").value);
    if (s) dash.timer = setInterval(() => { if (currentTab() === "dashboards") loadPanels(); }, s * 1000);
  };
}

async function openDashboard(name) {
  if (!dash.models[name]) name = dash.list[0]?.name;
  if (!name) return;
  $("dash-select").value = name;
  dash.current = name;
  layoutPanels(dash.models[name]);
  await loadVariables();
}

function varParams() {
  const params = { range: $("dash-range").value };
  for (const sel of $("dash-vars").querySelectorAll("select")) params["var-" + sel.dataset.name] = sel.value;
  return params;
}

async function loadVariables() {
  const box = $("dash-vars");
  const previous = varParams();
  try {
    const vars = await api(`dashboards/${dash.current}/variables`, previous);
    box.innerHTML = vars.map((v) => {
      const opts = (v.includeAll ? [["$__all", "All"]] : []).concat(v.options.map((o) => [o, o]));
      return `<label>${esc(v.label)} <select data-name="${esc(v.name)}">${opts.map(([val, text]) =>
        `<option value="${esc(val)}"${val === v.current ? " selected" : ""}>${esc(text)}</option>`).join("")}</select>` +
        (v.error ? ` <span class="error" title="${esc(v.error)}">(query failed)</span>` : "") + "</label>";
    }).join(" ");
    for (const sel of box.querySelectorAll("select")) sel.onchange = () => loadVariables();
  } catch (e) {
    setStatus("dash-status", "variables: " + e.message, true);
  }
  await loadPanels();
}

function layoutPanels(model) {
  const grid = $("dash-grid");
  grid.innerHTML = "";
  dash.panels = {};
  const panels = [];
  for (const p of model.panels || []) {
    panels.push(p);
    if (p.type === "row" && p.collapsed) panels.push(...(p.panels || []));
  }
  for (const p of panels) {
    const g = p.gridPos || { x: 0, y: 0, w: 12, h: 8 };
    const el = document.createElement("div");
    el.style.gridColumn = `${g.x + 1} / span ${g.w}`;
    el.style.gridRow = `${g.y + 1} / span ${g.h}`;
    if (p.type === "row") {
      el.className = "row-title";
      el.textContent = p.title;
    } else {
      el.className = "panel";
      el.dataset.panelId = p.id;
      el.innerHTML = `<h4 title="${esc(p.description || "")}">${esc(p.title)}</h4><div class="body"><div class="msg">loading…</div></div><div class="meta"></div>`;
      dash.panels[p.id] = { panel: p, el };
    }
    grid.appendChild(el);
  }
}

async function loadPanels() {
  const name = dash.current;
  setStatus("dash-status", "running queries…");
  let answer;
  try {
    answer = await api(`dashboards/${name}/panels`, varParams());
  } catch (e) {
    setStatus("dash-status", e.message, true);
    return;
  }
  if (name !== dash.current) return;
  const byPanel = {};
  for (const r of answer.results) (byPanel[r.panel_id] ||= []).push(r);
  let withData = 0, failed = 0;
  for (const [id, { panel, el }] of Object.entries(dash.panels)) {
    const results = byPanel[id] || [];
    const body = el.querySelector(".body");
    const meta = el.querySelector(".meta");
    meta.textContent = "";
    const errors = results.filter((r) => r.error).concat((byPanel[0] || []).filter((r) => r.error));
    try {
      if (errors.length) {
        failed++;
        body.innerHTML = `<div class="msg error">Query failed: ${esc(errors.map((r) => r.error).join("; "))}</div>`;
      } else if (!results.some((r) => r.has_data)) {
        body.innerHTML = `<div class="msg">No data</div>`;
        body.dataset.state = "nodata";
      } else {
        withData++;
        body.dataset.state = "data";
        drawPanel(panel, results, body, meta, answer);
      }
    } catch (e) {
      body.innerHTML = `<div class="msg error">Cannot draw: ${esc(e.message)}</div>`;
    }
    el.dataset.state = errors.length ? "error" : body.dataset.state;
  }
  const total = Object.keys(dash.panels).length;
  setStatus("dash-status", `${withData} of ${total} panels with data` + (failed ? `, ${failed} failed` : "") +
    ` · ${new Date().toLocaleTimeString()}`, failed > 0);
}

function panelUnit(panel) {
  return panel.fieldConfig?.defaults?.unit || "";
}

function drawPanel(panel, results, body, meta, answer) {
  const ds = results[0].datasource;
  const unit = panelUnit(panel);
  body.innerHTML = "";
  if (ds === "prometheus") {
    const matrix = results.filter((r) => r.data?.resultType === "matrix");
    const vector = results.filter((r) => r.data?.resultType === "vector");
    if (["stat", "bargauge", "gauge"].includes(panel.type)) return drawStat(panel, results, body);
    if (panel.type === "table" || panel.type === "nodeGraph" || !matrix.length) return drawVectorTable(panel, vector.length ? vector : results, body);
    const series = [];
    let xs = null;
    for (const r of matrix) {
      const aligned = alignMatrix(r.data.result, answer.start, answer.end, answer.step, r.target.legendFormat);
      if (!xs) xs = aligned.xs;
      for (const s of aligned.series) {
        if (s.values.length > xs.length) s.values.length = xs.length;
        series.push(s);
      }
    }
    const exemplars = results.flatMap((r) => (r.exemplars || []).flatMap((s) => s.exemplars || []))
      .filter((e) => e.labels?.trace_id)
      .map((e) => ({ t: Number(e.timestamp), v: parseFloat(e.value), trace: e.labels.trace_id }));
    if (exemplars.length) {  // before the chart, which takes the height left
      const latest = exemplars.reduce((a, b) => (a.t > b.t ? a : b));
      meta.innerHTML = `${exemplars.length} exemplars (◆, click one for its trace) · latest: <a href="#traces/${esc(latest.trace)}">trace ${esc(latest.trace.slice(0, 12))}…</a>`;
    }
    drawChart(body, xs, series.slice(0, 30), unit, { exemplars });
    return;
  }
  if (ds === "elasticsearch") {
    const r = results[0];
    if (panel.type === "timeseries") return drawEsHistogram(r, body, unit);
    return drawLogRecords(r.data.hits.hits.map((h) => h._source), body);
  }
  if (ds === "jaeger") {
    const r = results[0];
    if (r.target.queryType === "dependencyGraph") {
      body.innerHTML = table(["parent", "child", "calls"], r.data.map((d) => [esc(d.parent), esc(d.child), esc(d.callCount)]));
      return;
    }
    const rows = r.data.map((t) => {
      const root = t.spans.reduce((a, b) => (a.startTime < b.startTime ? a : b));
      return [`<a href="#traces/${esc(t.traceID)}">${esc(t.traceID.slice(0, 16))}</a>`, esc(root.operationName),
        esc(fmt(root.duration / 1e6, "s")), esc(t.spans.length), esc(new Date(root.startTime / 1000).toLocaleTimeString())];
    });
    body.innerHTML = table(["trace", "root operation", "duration", "spans", "start"], rows);
  }
}

function lastValue(series) {
  if (series.value) return parseFloat(series.value[1]);
  const values = series.values || [];
  for (let i = values.length - 1; i >= 0; i--) {
    const n = parseFloat(values[i][1]);
    if (Number.isFinite(n)) return n;
  }
  return NaN;
}

function thresholdColor(panel, value) {
  const steps = panel.fieldConfig?.defaults?.thresholds?.steps || [];
  let color = null;
  for (const s of steps) if (s.value == null || value >= s.value) color = s.color;
  const named = { green: "#73bf69", red: "#f2495c", orange: "#ff9830", yellow: "#fade2a", blue: "#5794f2" };
  return named[color] || color || "var(--text)";
}

function drawStat(panel, results, body) {
  const unit = panelUnit(panel);
  const items = results.flatMap((r) => (r.data?.result || []).map((s) => ({ label: legend(r.target.legendFormat, s.metric), v: lastValue(s) })));
  body.innerHTML = `<div class="stat">${items.slice(0, 12).map((i) =>
    `<div><div class="v" style="color:${thresholdColor(panel, i.v)}">${esc(fmt(i.v, unit))}</div><div class="l">${esc(i.label)}</div></div>`).join("")}</div>`;
}

function drawVectorTable(panel, results, body) {
  const unit = panelUnit(panel);
  const rows = [];
  const labels = new Set();
  for (const r of results) for (const s of r.data?.result || []) Object.keys(s.metric).forEach((k) => k !== "__name__" && labels.add(k));
  const cols = [...labels];
  for (const r of results) for (const s of r.data?.result || []) rows.push([...cols.map((c) => esc(s.metric[c] ?? "")), esc(fmt(lastValue(s), unit))]);
  body.innerHTML = table([...cols, "value"], rows);
}

function drawEsHistogram(result, body, unit) {
  const aggs = result.data.aggregations || {};
  const first = result.target.bucketAggs[0];
  const outer = aggs[first.id]?.buckets || [];
  const series = [];
  let xs = null;
  const addSeries = (label, buckets) => {
    const points = buckets.map((b) => [Number(b.key) / 1000, b.doc_count]);
    if (!xs) xs = points.map((p) => p[0]);
    const byX = new Map(points);
    series.push({ label, values: xs.map((x) => byX.get(x) ?? null) });
  };
  if (first.type === "date_histogram") addSeries("count", outer);
  else {
    const inner = result.target.bucketAggs[1].id;
    for (const b of outer) addSeries(String(b.key), b[inner]?.buckets || []);
  }
  drawChart(body, xs || [], series, unit || "short");
}

function drawLogRecords(sources, body) {
  const rows = sources.map((s) => [esc((s["@timestamp"] || "").replace("T", " ").slice(0, 23)), esc(field(s, "service.name")),
    badge(field(s, "log.level")), esc(s.message), traceLink(field(s, "trace.id"))]);
  body.innerHTML = table(["time", "service", "level", "message", "trace"], rows);
}

function field(src, dotted) {
  if (dotted in src) return src[dotted];
  return dotted.split(".").reduce((n, k) => (n && typeof n === "object" ? n[k] : undefined), src);
}

const badge = (text) => (text ? `<span class="badge ${esc(text)}">${esc(text)}</span>` : "");
const traceLink = (id) => (id ? `<a class="mono" href="#traces/${esc(id)}">${esc(String(id).slice(0, 16))}</a>` : "");

function table(headers, rows, rowAttrs) {
  return `<table><thead><tr>${headers.map((h) => `<th>${esc(h)}</th>`).join("")}</tr></thead><tbody>` +
    rows.map((r, i) => `<tr${rowAttrs ? rowAttrs(i) : ""}>${r.map((c) => `<td>${c}</td>`).join("")}</tr>`).join("") + "</tbody></table>";
}

// --- explore -----------------------------------------------------------------------------------------

async function runExplore() {
  const query = $("explore-query").value.trim();
  if (!query) return;
  history.replaceState(null, "", "#explore?q=" + encodeURIComponent(query));
  const range = $("explore-range").value;
  setStatus("explore-status", "running…");
  const chart = $("explore-chart");
  try {
    const end = Math.floor(Date.now() / 1000);
    const seconds = { m: 60, h: 3600 }[range.slice(-1)] * parseInt(range, 10);
    const step = Math.max(1, Math.floor(seconds / 200));
    const start = end - seconds;
    const [ranged, instant] = await Promise.all([api("prom/query_range", { query, start, end, step }), api("prom/query", { query })]);
    const result = ranged.data.result || [];
    if (ranged.data.resultType === "matrix" && result.length) {
      const { xs, series } = alignMatrix(result, start, end, step, "");
      drawChart(chart, xs, series.slice(0, 50), "", { height: 320 });
      chart.dataset.state = "data";
    } else {
      chart.innerHTML = `<div class="msg">No data: the query returned no series</div>`;
      chart.dataset.state = "nodata";
    }
    const rows = (instant.data.result || []).map((s) => [esc(legend("", s.metric)), esc(s.value ? s.value[1] : "")]);
    $("explore-table").innerHTML = rows.length ? table(["series", "value (now)"], rows) : "";
    setStatus("explore-status", `${result.length} series`);
  } catch (e) {
    chart.innerHTML = `<div class="msg error">${esc(e.message)}</div>`;
    chart.dataset.state = "error";
    $("explore-table").innerHTML = "";
    setStatus("explore-status", e.message, true);
  }
}

// --- traces ---------------------------------------------------------------------------------------------

async function initTraces() {
  try {
    const services = await api("traces/services");
    $("traces-service").innerHTML = services.map((s) => `<option>${esc(s)}</option>`).join("");
    await loadOperations();
  } catch (e) {
    setStatus("traces-status", "services: " + e.message, true);
  }
  $("traces-service").onchange = loadOperations;
  $("traces-run").onclick = searchTraces;
  $("traces-open").onclick = () => { location.hash = "traces/" + $("traces-id").value.trim(); };
}

async function loadOperations() {
  const service = $("traces-service").value;
  if (!service) return;
  const ops = await api("traces/operations", { service }).catch(() => []);
  $("traces-operation").innerHTML = `<option value="">all</option>` + ops.map((o) => `<option>${esc(o)}</option>`).join("");
}

async function searchTraces() {
  setStatus("traces-status", "searching…");
  $("trace-view").innerHTML = "";
  try {
    const found = await api("traces/search", {
      service: $("traces-service").value, operation: $("traces-operation").value, minDuration: $("traces-min").value.trim(),
      error: $("traces-error").checked ? "true" : "", range: $("traces-range").value, limit: $("traces-limit").value,
    });
    const rows = found.map((t) => [esc(new Date(t.start_us / 1000).toLocaleString()), esc(t.root_service), esc(t.root_operation),
      esc(fmt(t.duration_us / 1e6, "s")), esc(t.spans), t.errors ? `<span class="badge error">${t.errors}</span>` : "0",
      `<span class="mono">${esc(t.traceID)}</span>`]);
    $("traces-results").innerHTML = found.length
      ? table(["start", "service", "operation", "duration", "spans", "errors", "trace id"], rows, (i) => ` class="click" data-trace="${esc(found[i].traceID)}"`)
      : `<p class="status">No traces found</p>`;
    for (const tr of $("traces-results").querySelectorAll("tr[data-trace]")) tr.onclick = () => { location.hash = "traces/" + tr.dataset.trace; };
    setStatus("traces-status", `${found.length} traces`);
  } catch (e) {
    setStatus("traces-status", e.message, true);
  }
}

async function openTrace(id) {
  const view = $("trace-view");
  $("traces-id").value = id;
  view.innerHTML = `<p class="status">loading trace ${esc(id)}…</p>`;
  let answer;
  try {
    answer = await api("traces/" + encodeURIComponent(id));
  } catch (e) {
    view.innerHTML = `<p class="error" data-state="error">${esc(e.message)}</p>`;
    return;
  }
  const { trace, summary } = answer;
  const spans = trace.spans;
  const byId = new Map(spans.map((s) => [s.spanID, s]));
  const children = new Map();
  const roots = [];
  for (const s of spans) {
    const parent = (s.references || []).find((r) => r.refType === "CHILD_OF" && byId.has(r.spanID));
    if (parent) (children.get(parent.spanID) || children.set(parent.spanID, []).get(parent.spanID)).push(s);
    else roots.push(s);
  }
  const ordered = [];
  const walk = (s, depth) => {
    ordered.push([s, depth]);
    (children.get(s.spanID) || []).sort((a, b) => a.startTime - b.startTime).forEach((c) => walk(c, depth + 1));
  };
  roots.sort((a, b) => a.startTime - b.startTime).forEach((r) => walk(r, 0));
  const t0 = summary.start_us, total = Math.max(1, summary.duration_us);
  const proc = (s) => trace.processes[s.processID] || { serviceName: "?", tags: [] };
  const isErr = (s) => (s.tags || []).some((t) => (t.key === "error" && String(t.value) === "true") || (t.key === "otel.status_code" && t.value === "ERROR"));
  view.innerHTML = `<h3>Trace <span class="mono">${esc(trace.traceID)}</span> · ${esc(summary.root_service)} ${esc(summary.root_operation)} · ${esc(fmt(total / 1e6, "s"))} · ${spans.length} spans · ${summary.services.map(esc).join(", ")}
    · <a href="#logs?trace_id=${esc(trace.traceID)}">logs of this trace</a></h3>
    <div class="waterfall">${ordered.map(([s, depth], i) => {
      const left = ((s.startTime - t0) / total) * 100, width = (s.duration / total) * 100;
      return `<div class="span-row" data-i="${i}"><div class="name" style="padding-left:${4 + depth * 14}px">${isErr(s) ? "⚠ " : ""}<b>${esc(proc(s).serviceName)}</b> ${esc(s.operationName)}</div>
        <div class="track"><div class="bar${isErr(s) ? " err" : ""}" style="left:${left}%;width:${width}%"></div><span class="dur" style="left:${Math.min(left + width, 90) + 0.5}%">${esc(fmt(s.duration / 1e6, "s"))}</span></div></div><div class="span-detail" id="span-${i}" hidden></div>`;
    }).join("")}</div>`;
  for (const row of view.querySelectorAll(".span-row")) {
    row.onclick = () => {
      const [s] = ordered[row.dataset.i];
      const box = $("span-" + row.dataset.i);
      if (!box.hidden) { box.hidden = true; return; }
      const kv = (items) => table(["key", "value"], (items || []).map((t) => [esc(t.key), `<span class="mono">${esc(t.value)}</span>`]));
      const status = (s.tags || []).filter((t) => t.key.startsWith("otel.status") || t.key === "error");
      box.innerHTML = `<p>span <span class="mono">${esc(s.spanID)}</span> · start +${esc(fmt((s.startTime - t0) / 1e6, "s"))} · ${esc(fmt(s.duration / 1e6, "s"))}
        · status: ${status.length ? status.map((t) => esc(`${t.key}=${t.value}`)).join(", ") : "unset"}</p>
        <b>Attributes</b>${kv(s.tags)}<b>Events</b>${(s.logs || []).length ? (s.logs || []).map((l) => `<div>+${esc(fmt((l.timestamp - s.startTime) / 1e6, "s"))}${kv(l.fields)}</div>`).join("") : " none"}
        <b>Resource (${esc(proc(s).serviceName)})</b>${kv(proc(s).tags)}`;
      box.hidden = false;
    };
  }
}

// --- logs -------------------------------------------------------------------------------------------------

async function searchLogs() {
  setStatus("logs-status", "searching…");
  const params = { service: $("logs-service").value.trim(), level: $("logs-level").value, q: $("logs-q").value.trim(),
    trace_id: $("logs-trace").value.trim(), range: $("logs-range").value };
  try {
    const found = await api("logs/search", params);
    const rows = found.records.map((r) => [esc((r.timestamp || "").replace("T", " ").slice(0, 23)), esc(r.service), badge(r.level),
      esc(r.message), traceLink(r.trace_id)]);
    $("logs-results").innerHTML = rows.length ? table(["time", "service", "level", "message", "trace"], rows) : `<p class="status">No log records</p>`;
    const services = [...new Set(found.records.map((r) => r.service).filter(Boolean))];
    $("logs-services").innerHTML = services.map((s) => `<option value="${esc(s)}">`).join("");
    setStatus("logs-status", `${found.records.length} of ${found.total} records`);
  } catch (e) {
    $("logs-results").innerHTML = "";
    setStatus("logs-status", e.message, true);
  }
}

// --- alerts ---------------------------------------------------------------------------------------------

async function loadAlerts() {
  setStatus("alerts-status", "loading…");
  try {
    const a = await api("alerts");
    const runbook = (u) => (u ? `<a href="${esc(u)}" target="_blank" rel="noopener">runbook</a>` : "–");
    const graph = (expr) => (expr ? `<a href="#explore?q=${esc(encodeURIComponent(expr))}" title="${esc(expr)}">graph</a>` : "–");
    const labels = (l) => Object.entries(l).filter(([k]) => !["alertname", "severity"].includes(k)).map(([k, v]) => `${esc(k)}=${esc(v)}`).join(" ");
    $("alerts-prometheus").innerHTML = a.prometheus.length
      ? table(["state", "alert", "severity", "labels", "summary", "since", "runbook", "query"], a.prometheus.map((x) => [badge(x.state), esc(x.name),
        esc(x.severity), `<span class="mono">${labels(x.labels)}</span>`, esc(x.annotations.summary || x.annotations.description || ""),
        esc(x.active_at ? new Date(x.active_at).toLocaleString() : ""), runbook(x.runbook_url), graph(x.expr)]))
      : `<p class="status">Nothing firing or pending</p>`;
    $("alerts-alertmanager").innerHTML = a.alertmanager.length
      ? table(["state", "alert", "severity", "labels", "receivers", "since", "runbook", "query"], a.alertmanager.map((x) => [badge(x.state), esc(x.name),
        esc(x.severity), `<span class="mono">${labels(x.labels)}</span>`, esc(x.receivers.join(", ")),
        esc(x.starts_at ? new Date(x.starts_at).toLocaleString() : ""), runbook(x.runbook_url), graph(x.expr)]))
      : `<p class="status">No alerts in Alertmanager</p>`;
    const errors = Object.entries(a.errors).map(([k, v]) => `${k}: ${v}`).join("; ");
    setStatus("alerts-status", errors || `${a.prometheus.length} from rules, ${a.alertmanager.length} in Alertmanager`, !!errors);
  } catch (e) {
    setStatus("alerts-status", e.message, true);
  }
}

// --- routing ----------------------------------------------------------------------------------------------

function currentTab() {
  return (location.hash.slice(1).split(/[/?]/)[0]) || "dashboards";
}

async function route() {
  const hash = location.hash.slice(1);
  const tab = currentTab();
  const [head, query] = hash.split("?");
  const rest = head.split("/").slice(1).join("/");
  const params = new URLSearchParams(query || "");
  for (const a of document.querySelectorAll("#tabs a")) a.classList.toggle("active", a.dataset.tab === tab);
  for (const s of document.querySelectorAll(".tab")) s.classList.toggle("active", s.id === "tab-" + tab);
  if (tab === "dashboards") {
    if (RANGES.includes(params.get("range"))) $("dash-range").value = params.get("range");
    await openDashboard(rest || dash.current || dash.list[0]?.name);
  }
  else if (tab === "explore") {
    if (params.get("q") || params.get("g0.expr")) { $("explore-query").value = params.get("q") || params.get("g0.expr"); await runExplore(); }
  } else if (tab === "traces") { if (rest) await openTrace(rest); }
  else if (tab === "logs") {
    if (params.has("trace_id")) { $("logs-trace").value = params.get("trace_id"); $("logs-range").value = "24h"; }
    if (params.has("level")) $("logs-level").value = params.get("level");
    await searchLogs();
  } else if (tab === "alerts") await loadAlerts();
}

async function main() {
  for (const sel of document.querySelectorAll("select.range")) {
    sel.innerHTML = RANGES.map((r) => `<option${r === "1h" ? " selected" : ""}>${r}</option>`).join("");
  }
  $("explore-run").onclick = runExplore;
  $("explore-query").onkeydown = (e) => { if (e.key === "Enter" && (e.ctrlKey || e.shiftKey)) { e.preventDefault(); runExplore(); } };
  $("logs-run").onclick = () => { history.replaceState(null, "", "#logs"); searchLogs(); };
  $("alerts-run").onclick = loadAlerts;
  await initDashboards();
  initTraces();
  window.addEventListener("hashchange", route);
  let resizeTimer;
  window.addEventListener("resize", () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(() => currentTab() === "dashboards" && loadPanels(), 300); });
  await route();
  document.body.dataset.ready = "true";
}

main();
