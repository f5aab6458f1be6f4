// Live production charts of the operator UI, plain SVG (protocol §15, UI part):
//  - yield per site over the lot: a rolling window of each site's last N parts, computed
//    here from the testresult PRRs (good: the soft bin's group in the bin table is BT_PASS;
//    a soft bin the table does not know: PART_FLG bit 3 clear);
//  - bin pareto, from the bintable frame;
//  - site-by-site yield bars, from the yield frame; sites named by a raised site_divergence
//    alarm are highlighted;
//  - test and index time histogram and the production figures, from production frames
//    (GET /api/v1/production is polled while no frame comes);
//  - the SEMI E10 state timeline of the day, from production.e10_timeline.
// Feed events only mark charts dirty; they are drawn at most RENDER_PER_SECOND times a
// second, in the page's animation frames (drawIn). Every drawn element carries data-*
// attributes with the value it shows.

import { $, el, svg, fmtNumber, fmtTime, fmtDuration } from "./dom.js";

export const RENDER_PER_SECOND = 4;
const MIN_INTERVAL_MS = 1000 / RENDER_PER_SECOND;
const MAX_OUTCOMES = 1000;   // kept per site (the feed's testresults holds up to 1000)
const MAX_SAMPLES = 2000;    // kept per time histogram series
const MAX_PARETO_BARS = 24;
const MAX_DRAWN = 250;       // points drawn per trend line (every k-th value, and the last)
const PASS = "BT_PASS";
const W = 600;               // SVG user units; the SVG scales to its card
const H = 230;
const M = { l: 42, r: 42, t: 14, b: 34 };
const E10_COLORS = { productive: "#1b873f", standby: "#2b6cb0", unscheduled_down: "#c53030",
  non_scheduled: "#a0aec0" };
const PALETTE = ["#2b6cb0", "#dd6b20", "#1b873f", "#c53030", "#6b46c1", "#2c7a7b", "#b7791f",
  "#d53f8c", "#4a5568", "#38a169"];

const st = {
  sites: [],
  outcomes: new Map(),   // site -> {raw: [[sbin, part_flg]] oldest first, good: [1|0] or null}
  types: new Map(),      // sbin -> bin group (from bintable)
  typesKey: "",
  bintable: [],
  yields: [],
  production: null,
  samples: { test: [], index: [] },
  prev: { test: null, index: null },
  approx: { test: 0, index: 0 },
  scope: null,           // the production scope the samples belong to
  divergent: new Set(),
  window: 25,
  dirty: new Set(),
  timer: null,
  last: 0,
  renders: 0,
  productionAt: 0,       // Date.now() of the last production frame
};

export function siteColor(index, count) {
  if (count <= PALETTE.length) return PALETTE[index % PALETTE.length];
  return `hsl(${Math.round((index * 137.508) % 360)}, 60%, 45%)`;
}

// -- feed input ------------------------------------------------------------------------------

export function setSites(sites) {
  st.sites = Array.isArray(sites) ? sites.map(String) : [];
  mark("trend", "sites");
}

function addRecords(records) {
  if (!Array.isArray(records)) return;
  const prr = records.find((r) => r && r.type === "PRR");
  if (!prr || prr.SITE_NUM == null) return;
  const site = String(prr.SITE_NUM);
  let entry = st.outcomes.get(site);
  if (!entry) { entry = { raw: [], good: [] }; st.outcomes.set(site, entry); }
  entry.raw.push([prr.SOFT_BIN, prr.PART_FLG]);
  if (entry.good) entry.good.push(isGood(prr.SOFT_BIN, prr.PART_FLG));
  if (entry.raw.length > MAX_OUTCOMES) {
    entry.raw.splice(0, entry.raw.length - MAX_OUTCOMES);
    if (entry.good) entry.good.splice(0, entry.good.length - MAX_OUTCOMES);
  }
}

/** The site's parts as 1 (good) and 0, classified once per bin table. */
function goodFlags(entry) {
  if (!entry.good) entry.good = entry.raw.map(([sbin, flg]) => isGood(sbin, flg));
  return entry.good;
}

export function onResult(records) { addRecords(records); mark("trend"); }

export function onResults(list) {
  st.outcomes.clear();
  for (const records of list || []) addRecords(records);
  mark("trend");
}

/** A new lot: forget the previous lot's results and time samples. */
export function newLot() {
  st.outcomes.clear();
  st.samples = { test: [], index: [] };
  st.prev = { test: null, index: null };
  st.approx = { test: 0, index: 0 };
  st.scope = null;
  mark("trend", "pareto", "sites", "cycle");
}

export function onBintable(rows) {
  st.bintable = Array.isArray(rows) ? rows : [];
  const key = st.bintable.map((r) => `${r.sBin}:${r.type}`).join();
  if (key !== st.typesKey) {  // the groups changed: classify every kept part again
    st.typesKey = key;
    st.types = new Map(st.bintable.map((r) => [r.sBin, r.type]));
    for (const entry of st.outcomes.values()) entry.good = null;
    mark("trend");
  }
  mark("pareto");
}

export function onYield(rows) { st.yields = Array.isArray(rows) ? rows : []; mark("sites"); }

/** The lot's alarms (GET /api/v1/alarms and alarm frames): raised site_divergence ones
 * highlight their site. */
export function setAlarms(alarms) {
  const sites = new Set(alarms.filter((a) => a.kind === "site_divergence" && a.state === "raised"
    && a.site != null).map((a) => String(a.site)));
  if ([...sites].join() !== [...st.divergent].join()) { st.divergent = sites; mark("sites"); }
}

export function onProduction(p, fromFrame = true) {
  if (!p || typeof p !== "object") return;
  if (fromFrame) st.productionAt = Date.now();
  st.production = p;
  const block = p.lot || p.since_start;
  const scope = p.lot ? `lot:${p.lot.lot_number ?? ""}:${p.lot.started ?? ""}` : "since_start";
  if (scope !== st.scope) {
    st.scope = scope;
    st.samples = { test: [], index: [] };
    st.prev = { test: null, index: null };
    st.approx = { test: 0, index: 0 };
  }
  if (p.lot && Array.isArray(p.recent_cycles)) {
    // the lot's last cycles, exact: [test_s, index_s or null] each
    const recent = p.recent_cycles.filter((r) => Array.isArray(r) && typeof r[0] === "number");
    st.samples = { test: recent.map((r) => r[0]),
      index: recent.filter((r) => typeof r[1] === "number").map((r) => r[1]) };
    st.approx = { test: 0, index: 0 };
  } else if (block) {
    sample("test", block.test_time_s);
    sample("index", block.index_time_s);
  }
  mark("cycle", "figures", "e10");
}

/** Milliseconds since the last production frame (Infinity: none yet). */
export function productionAge() { return st.productionAt ? Date.now() - st.productionAt : Infinity; }

// Each production figure carries count, mean and last of the scope.  One new cycle since the
// previous figure gives its exact value (last); several give last plus the mean of the
// others, so the histogram always counts every cycle and sums to count x mean.
function sample(kind, stats) {
  if (!stats || typeof stats.count !== "number") return;
  const count = stats.count;
  const total = count && typeof stats.mean === "number" ? stats.mean * count : 0;
  let prev = st.prev[kind];
  if (prev && count < prev.count) { st.samples[kind] = []; st.approx[kind] = 0; prev = null; }
  const added = count - (prev ? prev.count : 0);
  st.prev[kind] = { count, total };
  if (added <= 0 || typeof stats.last !== "number") return;
  const list = st.samples[kind];
  list.push(stats.last);
  if (added > 1) {
    const rest = Math.max(0, (total - (prev ? prev.total : 0) - stats.last) / (added - 1));
    for (let i = 0; i < Math.min(added - 1, MAX_SAMPLES); i++) list.push(rest);
    st.approx[kind] += added - 1;
  }
  if (list.length > MAX_SAMPLES) list.splice(0, list.length - MAX_SAMPLES);
}

export function setWindow(n) {
  const v = parseInt(n, 10);
  if (Number.isFinite(v) && v >= 1 && v <= MAX_OUTCOMES) { st.window = v; mark("trend"); }
}

// -- scheduling ------------------------------------------------------------------------------

// The page (app.js) draws the charts in its own animation frames, with everything else it
// draws: drawIn(request) gives the function that asks it for one, which then calls
// render().  Without one (a page of the charts alone) a timer calls render() itself.
let requestDraw = null;

export function drawIn(request) { requestDraw = request; }

function due() {
  if (requestDraw) requestDraw(); else render();
}

function mark(...kinds) {
  for (const k of kinds) st.dirty.add(k);
  if (st.timer !== null) return;
  const wait = Math.max(0, MIN_INTERVAL_MS - (Date.now() - st.last));
  st.timer = setTimeout(due, wait);
}

const RENDERERS = {
  trend: renderTrend, pareto: renderPareto, sites: renderSiteBars, cycle: renderCycle,
  figures: renderFigures, e10: renderE10,
};

// A chart that takes long to draw (hundreds of sites) waits at least COST_FACTOR times its
// last drawing time before it is drawn again: the charts never take more than about a
// fifth of the page's main thread.
const COST_FACTOR = 5;
const cost = {};     // kind -> ms its last drawing took
const drawnAt = {};  // kind -> Date.now() of its last drawing
/** Per chart: {n, ms}, how often it was drawn and the milliseconds that took in all. */
export const drawings = {};

/** Draw the charts that changed and whose turn it is (see mark and COST_FACTOR). */
export function render() {
  if (st.timer === null && !st.dirty.size) return;
  clearTimeout(st.timer);
  st.timer = null;
  st.last = Date.now();
  const started = performance.now();
  let deferred = false;
  for (const kind of [...st.dirty]) {
    if ((cost[kind] || 0) * COST_FACTOR > Date.now() - (drawnAt[kind] || 0)) { deferred = true; continue; }
    st.dirty.delete(kind);
    const t0 = performance.now();
    try { RENDERERS[kind](); } catch (e) { console.error(`chart ${kind} failed`, e); }
    cost[kind] = performance.now() - t0;
    drawnAt[kind] = Date.now();
    const d = drawings[kind] || (drawings[kind] = { n: 0, ms: 0 });
    d.n += 1;
    d.ms += cost[kind];
  }
  st.renders += 1;
  const box = $("charts");
  if (box) {
    box.dataset.renders = String(st.renders);
    box.dataset.renderMs = (performance.now() - started).toFixed(1);
  }
  if (deferred) st.timer = setTimeout(due, MIN_INTERVAL_MS);
}

// -- drawing helpers -------------------------------------------------------------------------

function frame(id, attrs = {}) {
  const node = $(id);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "chart", ...attrs });
  node.replaceChildren(root);
  return root;
}

function empty(root, text) {
  root.append(svg("text", { x: W / 2, y: H / 2, class: "empty", "text-anchor": "middle", text }));
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

/** An axis maximum for counts: four equal whole steps (1, 2, 3, 4, 5, 6, 8 x 10^k). */
function countMax(v) {
  const need = Math.max(1, Math.ceil(v / 4));
  const p = 10 ** Math.floor(Math.log10(need));
  const m = [1, 2, 3, 4, 5, 6, 8, 10].find((x) => x * p >= need);
  return m * p * 4;
}

function yAxis(root, max, fmt, right = false) {
  const x = right ? W - M.r : M.l;
  const g = svg("g", { class: "axis" });
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4;
    const y = H - M.b - ((H - M.t - M.b) * i) / 4;
    if (!right) g.append(svg("line", { x1: M.l, x2: W - M.r, y1: y, y2: y, class: "grid" }));
    g.append(svg("text", { x: right ? x + 4 : x - 4, y: y + 4,
      "text-anchor": right ? "start" : "end", text: fmt(v) }));
  }
  root.append(g);
}

const plotW = W - M.l - M.r;
const plotH = H - M.t - M.b;
const yOf = (v, max) => H - M.b - (plotH * v) / max;

// -- yield per site over the lot -------------------------------------------------------------

function isGood(sbin, flg) {
  const type = st.types.get(sbin);
  if (type !== undefined) return type === PASS ? 1 : 0;
  return ((flg | 0) & 8) === 0 ? 1 : 0;
}

/** Rolling yield (percent) after each part, over the last `window` parts; good: 1 or 0. */
export function rollingYield(good, window) {
  const out = new Array(good.length);
  let sum = 0;
  for (let i = 0; i < good.length; i++) {
    sum += good[i];
    if (i >= window) sum -= good[i - window];
    out[i] = (sum / Math.min(i + 1, window)) * 100;
  }
  return out;
}

function renderTrend() {
  const root = frame("chart-trend");
  const sites = [...st.sites, ...[...st.outcomes.keys()].filter((s) => !st.sites.includes(s))]
    .filter((s) => st.outcomes.has(s));
  root.dataset.window = String(st.window);
  if (!sites.length) { empty(root, "no parts yet"); return; }
  const n = Math.max(...sites.map((s) => st.outcomes.get(s).raw.length));
  yAxis(root, 100, (v) => `${v}%`);
  const xOf = (i) => M.l + (n > 1 ? (plotW * i) / (n - 1) : plotW / 2);
  const g = svg("g", { class: "axis" });
  for (const i of [0, Math.floor((n - 1) / 2), n - 1]) {
    g.append(svg("text", { x: xOf(i), y: H - M.b + 14, "text-anchor": "middle", text: String(i + 1) }));
  }
  g.append(svg("text", { x: W / 2, y: H - 4, "text-anchor": "middle", class: "label",
    text: `part of the site (yield over its last ${st.window})` }));
  root.append(g);
  const lines = svg("g", { class: "series" });
  sites.forEach((site) => {
    const values = rollingYield(goodFlags(st.outcomes.get(site)), st.window);
    const color = siteColor(st.sites.indexOf(site) >= 0 ? st.sites.indexOf(site) : 0, st.sites.length);
    const stride = Math.ceil(values.length / MAX_DRAWN);
    const drawn = [];
    for (let i = 0; i < values.length; i += stride) drawn.push(i);
    if (drawn[drawn.length - 1] !== values.length - 1) drawn.push(values.length - 1);
    const points = drawn.map((i) => `${xOf(i).toFixed(1)},${yOf(values[i], 100).toFixed(1)}`).join(" ");
    const last = values[values.length - 1];
    const line = svg("polyline", { points, fill: "none", stroke: color, "stroke-width": 1.6,
      "data-site": site, "data-points": values.length, "data-drawn": drawn.length,
      "data-last": last.toFixed(2) },
    svg("title", { text: `site ${site}: ${fmtNumber(last)}% over the last ${Math.min(st.window, values.length)} parts` }));
    lines.append(line);
    if (values.length === 1) {
      lines.append(svg("circle", { cx: xOf(0), cy: yOf(last, 100), r: 2.5, fill: color }));
    }
  });
  root.append(lines);
  if (st.sites.length <= 16) {
    $("chart-trend").append(el("div", { class: "legend" }, ...sites.map((site) => el("span", {},
      el("i", { style: `background:${siteColor(st.sites.indexOf(site), st.sites.length)}` }), `site ${site}`))));
  }
}

// -- bin pareto ------------------------------------------------------------------------------

function renderPareto() {
  const root = frame("chart-pareto");
  const rows = st.bintable.map((r) => ({
    sbin: r.sBin, name: r.name, type: r.type,
    count: (r.siteCounts || []).reduce((a, c) => a + (c.count | 0), 0),
  })).filter((r) => r.count > 0).sort((a, b) => b.count - a.count || a.sbin - b.sbin);
  const total = rows.reduce((a, r) => a + r.count, 0);
  root.dataset.total = String(total);
  if (!total) { empty(root, "no binned parts yet"); return; }
  const shown = rows.slice(0, MAX_PARETO_BARS);
  const max = countMax(shown[0].count);
  yAxis(root, max, (v) => String(Math.round(v)));
  yAxis(root, 100, (v) => `${v}%`, true);
  const step = plotW / shown.length;
  const bars = svg("g", { class: "bars" });
  let cum = 0;
  const cumPoints = [];
  shown.forEach((r, i) => {
    cum += r.count;
    const pct = (cum / total) * 100;
    const x = M.l + i * step + step * 0.15;
    const y = yOf(r.count, max);
    bars.append(svg("rect", { x, y, width: step * 0.7, height: H - M.b - y,
      class: r.type === PASS ? "pass" : "fail", "data-sbin": r.sbin, "data-count": r.count,
      "data-type": r.type, "data-cum": pct.toFixed(2) },
    svg("title", { text: `soft bin ${r.sbin} ${r.name} (${r.type}): ${r.count}, cumulative ${fmtNumber(pct)}%` })));
    bars.append(svg("text", { x: x + step * 0.35, y: H - M.b + 14, "text-anchor": "middle",
      class: "tick", text: String(r.sbin) }));
    cumPoints.push(`${(x + step * 0.35).toFixed(1)},${yOf(pct, 100).toFixed(1)}`);
  });
  root.append(bars);
  root.append(svg("polyline", { points: cumPoints.join(" "), class: "cumulative", fill: "none" }));
  root.append(svg("text", { x: W / 2, y: H - 4, "text-anchor": "middle", class: "label",
    text: `soft bin, by count (${total} parts; line: cumulative %)` }));
}

// -- yield per site, side by side --------------------------------------------------------------

function renderSiteBars() {
  const root = frame("chart-sites");
  const bySite = new Map();
  for (const r of st.yields) {
    if (!bySite.has(r.siteid)) bySite.set(r.siteid, { good: 0, sum: 0, value: 0 });
    const e = bySite.get(r.siteid);
    if (r.name === PASS) { e.good = r.count; e.value = r.value; }
    if (r.name === "sum") e.sum = r.count;
  }
  const sites = [...st.sites, ...[...bySite.keys()].filter((s) => s !== "-1" && !st.sites.includes(s))]
    .filter((s) => bySite.has(s));
  if (!sites.length) { empty(root, "no parts yet"); return; }
  yAxis(root, 100, (v) => `${v}%`);
  const step = plotW / sites.length;
  const bars = svg("g", { class: "bars" });
  sites.forEach((site, i) => {
    const e = bySite.get(site);
    const x = M.l + i * step + step * 0.15;
    const y = yOf(e.value, 100);
    const diverged = st.divergent.has(site);
    bars.append(svg("rect", { x, y, width: Math.max(step * 0.7, 1), height: H - M.b - y,
      class: diverged ? "site diverged" : "site", "data-site": site, "data-yield": e.value.toFixed(2),
      "data-good": e.good, "data-parts": e.sum, "data-diverged": diverged ? "1" : "0" },
    svg("title", { text: `site ${site}: ${fmtNumber(e.value)}% (${e.good} of ${e.sum})${diverged ? " – diverges (alarm)" : ""}` })));
    if (sites.length <= 32) {
      bars.append(svg("text", { x: x + step * 0.35, y: H - M.b + 14, "text-anchor": "middle",
        class: diverged ? "tick diverged" : "tick", text: site }));
    }
  });
  root.append(bars);
  const total = bySite.get("-1");
  if (total) {
    const y = yOf(total.value, 100);
    root.append(svg("line", { x1: M.l, x2: W - M.r, y1: y, y2: y, class: "total",
      "data-yield": total.value.toFixed(2) }, svg("title", { text: `lot: ${fmtNumber(total.value)}%` })));
  }
  root.append(svg("text", { x: W / 2, y: H - 4, "text-anchor": "middle", class: "label",
    text: "site (bars: yield; line: the lot)" }));
}

// -- test and index time histogram -----------------------------------------------------------

function renderCycle() {
  const root = frame("chart-cycle");
  const { test, index } = st.samples;
  root.dataset.testCount = String(test.length);
  root.dataset.indexCount = String(index.length);
  root.dataset.testSum = test.reduce((a, b) => a + b, 0).toFixed(6);
  root.dataset.indexSum = index.reduce((a, b) => a + b, 0).toFixed(6);
  root.dataset.approx = String(st.approx.test + st.approx.index);
  if (!test.length && !index.length) { empty(root, "no cycles yet"); return; }
  const hi = Math.max(...test, ...index, 1e-3);
  const buckets = 12;
  const width = niceMax(hi / buckets);
  const n = Math.max(1, Math.ceil(hi / width + 1e-9));
  const count = (list) => {
    const c = new Array(n).fill(0);
    for (const v of list) c[Math.min(n - 1, Math.floor(v / width))] += 1;
    return c;
  };
  const ct = count(test);
  const ci = count(index);
  const max = countMax(Math.max(...ct, ...ci));
  yAxis(root, max, (v) => String(Math.round(v)));
  const step = plotW / n;
  const bars = svg("g", { class: "bars" });
  for (let b = 0; b < n; b++) {
    const x = M.l + b * step;
    for (const [kind, c, off] of [["test", ct, 0.1], ["index", ci, 0.5]]) {
      if (!c[b]) continue;
      const y = yOf(c[b], max);
      bars.append(svg("rect", { x: x + step * off, y, width: step * 0.4, height: H - M.b - y,
        class: kind, "data-kind": kind, "data-count": c[b], "data-from": (b * width).toFixed(4),
        "data-to": ((b + 1) * width).toFixed(4) },
      svg("title", { text: `${kind} time ${fmtSeconds(b * width)}–${fmtSeconds((b + 1) * width)}: ${c[b]}` })));
    }
  }
  root.append(bars);
  const g = svg("g", { class: "axis" });
  for (const b of [0, Math.floor(n / 2), n]) {
    g.append(svg("text", { x: M.l + b * step, y: H - M.b + 14, "text-anchor": "middle", text: fmtSeconds(b * width) }));
  }
  const approx = st.approx.test + st.approx.index;
  g.append(svg("text", { x: W / 2, y: H - 4, "text-anchor": "middle", class: "label",
    text: `seconds: test ${test.length}, index ${index.length} cycles` +
      (approx ? ` (${approx} between two figures: their mean)` : "") }));
  root.append(g);
  root.append(svg("g", { class: "keys" },
    svg("rect", { x: W - M.r - 110, y: M.t, width: 10, height: 10, class: "test" }),
    svg("text", { x: W - M.r - 96, y: M.t + 9, text: "test" }),
    svg("rect", { x: W - M.r - 60, y: M.t, width: 10, height: 10, class: "index" }),
    svg("text", { x: W - M.r - 46, y: M.t + 9, text: "index" })));
}

function fmtSeconds(v) {
  if (v === 0) return "0";
  return v < 1 ? `${Math.round(v * 1000)} ms` : `${fmtNumber(v, v < 10 ? 2 : 1)} s`;
}

// -- production figures ----------------------------------------------------------------------

const FIGURES = [
  ["uph_1h", "UPH (1 h)", (v) => fmtNumber(v, 0)],
  ["uph_5m", "UPH (5 min)", (v) => fmtNumber(v, 0)],
  ["parts", "parts", String],
  ["cycles", "cycles", String],
  ["test_mean", "test time (mean)", (v) => (v == null ? "–" : fmtSeconds(v))],
  ["index_mean", "index time (mean)", (v) => (v == null ? "–" : fmtSeconds(v))],
  ["site_utilisation", "site utilisation", (v) => (v == null ? "–" : `${fmtNumber(v * 100)}%`)],
];

function renderFigures() {
  const p = st.production;
  const box = $("production-figures");
  if (!p) { box.replaceChildren(); return; }
  const block = p.lot || p.since_start || {};
  const values = { ...block, test_mean: block.test_time_s && block.test_time_s.mean,
    index_mean: block.index_time_s && block.index_time_s.mean };
  $("production-scope").textContent = p.lot ? `lot ${p.lot.lot_number || ""}` : "since start";
  box.replaceChildren(...FIGURES.flatMap(([key, label, fmt]) => [
    el("dt", { text: label }),
    el("dd", { "data-key": key, "data-value": values[key] == null ? "" : String(values[key]),
      text: values[key] == null ? "–" : fmt(values[key]) }),
  ]), el("dt", { text: "E10 state" }),
  el("dd", { "data-key": "e10_state", "data-value": p.e10_state || "", class: `e10 ${p.e10_state || ""}`,
    text: (p.e10_state || "–").replace("_", " ") }));
}

// -- E10 timeline ----------------------------------------------------------------------------

function renderE10() {
  const p = st.production;
  const node = $("chart-e10");
  const timeline = p && Array.isArray(p.e10_timeline) ? p.e10_timeline : [];
  const h = 64;
  const root = svg("svg", { viewBox: `0 0 ${W} ${h}`, role: "img", class: "chart e10" });
  node.replaceChildren(root);
  root.dataset.segments = String(timeline.length);
  if (!timeline.length) return;
  const start = timeline[0][0];
  const lastStart = timeline[timeline.length - 1][0];
  const now = Math.max(typeof p.now === "number" ? p.now : Date.now() / 1000, lastStart);
  const span = Math.max(now - start, 1);
  const xOf = (t) => M.l + (plotW * (t - start)) / span;
  const seconds = {};
  timeline.forEach(([t, state], i) => {
    const end = i + 1 < timeline.length ? timeline[i + 1][0] : now;
    seconds[state] = (seconds[state] || 0) + (end - t);
    const x = xOf(t);
    root.append(svg("rect", { x, y: 8, width: Math.max(xOf(end) - x, 0.5), height: 26,
      class: `seg ${state}`, fill: E10_COLORS[state] || "#718096", "data-state": state,
      "data-start": String(t) }, svg("title", { text: `${fmtTime(t)} – ${fmtTime(end)}: ${state.replace("_", " ")} (${fmtDuration(end - t)})` })));
  });
  const g = svg("g", { class: "axis" });
  g.append(svg("text", { x: M.l, y: 48, "text-anchor": "start", text: fmtTime(start) }));
  g.append(svg("text", { x: W - M.r, y: 48, "text-anchor": "end", text: fmtTime(now) }));
  root.append(g);
  node.append(el("div", { class: "legend" }, ...Object.keys(E10_COLORS).map((state) => el("span", {
    "data-state": state }, el("i", { style: `background:${E10_COLORS[state]}` }),
  `${state.replace("_", " ")} ${fmtDuration(seconds[state] || 0)}`))));
}
