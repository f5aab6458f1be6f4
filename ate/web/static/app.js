// ate-master operator UI: one page, no build step.
// It speaks the MSCT web UI feed at /ws of the host that served it (protocol.md section 11)
// and reconnects with a growing delay when the master restarts.  The alarms, the production
// charts and the lot history (protocol §15) live in alarms.js, charts.js and lots.js.
//
// A feed message only updates the model and marks what it changed; the page is drawn in
// an animation frame, once for every message that came since the previous one (the latest
// status, yield and bin table, all the new parts and log entries), the charts (charts.js)
// in the same frame, and a costly frame makes the next one wait.  A 255-site lot sends
// some 260 messages a cycle, two cycles a second at test time 0: drawing each one made the
// browser fall behind until the master dropped it.  Tables keep their rows and cells while
// their shape stays, and only cells whose text changed are written.  window.ateUi counts
// the connections and the time spent per message type, per drawing and per frame.

import { $, el, fmtNumber, token } from "./dom.js";
import * as alarms from "./alarms.js";
import * as charts from "./charts.js";
import * as lots from "./lots.js";

const LEVELS = { DEBUG: 10, INFO: 20, WARNING: 30, ERROR: 40 };
const MAX_LOGS = 500;
const MAX_PARTS = 50;
const MAX_ERRORS = 50;
// GET /api/v1/production this often while no production frame arrives (ms)
const PRODUCTION_POLL = 2000;

const model = {
  status: null,
  sites: [],
  logs: [],       // newest first
  parts: [],      // newest first
  partCount: 0,
  warnings: [],   // WARNING/ERROR log entries, newest first
  yields: [],     // the latest yield frame
  bins: [],       // the latest bintable frame
  lot: null,      // the lot number the charts show
  state: null,
};

/** What the page measured (the browser tests read it): websocket opens and closes; per
 * message type {n, ms, bytes} (ms: the sum, its parse included), per drawing of a card
 * (renders) and of a chart (charts) {n, ms}; the frames drawn {n, ms: our code, max: the
 * longest, cost: up to the next task, the browser's style, layout and paint included,
 * feed messages not}. */
const ui = { opens: 0, closes: 0, messages: {}, renders: {}, frames: { n: 0, ms: 0, max: 0, cost: 0 },
  charts: charts.drawings };
window.ateUi = ui;

function count(table, kind, ms, bytes = 0) {
  const c = table[kind] || (table[kind] = { n: 0, ms: 0, bytes: 0 });
  c.n += 1;
  c.ms += ms;
  c.bytes += bytes;
}

// -- drawing, once per animation frame ---------------------------------------------------------
// After a costly frame the next one waits: at least FRAME_COST_FACTOR times what the last
// took, its DOM work and the browser's style, layout and paint after it (measured up to a
// message posted from the frame, the next task, less the feed messages handled before
// it), so drawing keeps to about a third of the main thread, however many sites and
// however slow the machine.

const FRAME_COST_FACTOR = 3;
// ms: at most 4 drawings a second, whatever comes in.  Each drawing costs the browser its
// style, layout and paint; on a cell controller that also runs the master, a page drawing
// every animation frame took the cores from the handler cycle (bench/feed.py --browsers)
const MIN_FRAME_INTERVAL = 250;
const MAX_FRAME_WAIT = 1000;  // ms: a stall never delays the page longer than this
const dirty = new Set();
let framePending = false;
let frameStart = -Infinity;   // performance.now() at the last frame
let frameCost = 0;            // ms the last frame took in all
let messageMs = 0;            // ms spent on feed messages, in all
let messageMsAtFrame = 0;
const afterFrame = new MessageChannel();
afterFrame.port1.onmessage = () => {
  frameCost = Math.max(0, performance.now() - frameStart - (messageMs - messageMsAtFrame));
  ui.frames.cost += frameCost;
};

function mark(...kinds) {
  for (const k of kinds) dirty.add(k);
  if (framePending) return;
  framePending = true;
  const wait = Math.min(frameStart + Math.max(MIN_FRAME_INTERVAL, FRAME_COST_FACTOR * frameCost)
    - performance.now(), MAX_FRAME_WAIT);
  if (wait > 1) setTimeout(() => requestAnimationFrame(draw), wait);
  else requestAnimationFrame(draw);
}

function draw() {
  framePending = false;
  frameStart = performance.now();
  messageMsAtFrame = messageMs;
  for (const kind of DRAW_ORDER) {
    if (!dirty.has(kind)) continue;
    dirty.delete(kind);
    const t0 = performance.now();
    try { DRAWERS[kind](); } catch (e) { console.error(`drawing ${kind} failed`, e); }
    count(ui.renders, kind, performance.now() - t0);
  }
  const ms = performance.now() - frameStart;
  ui.frames.n += 1;
  ui.frames.ms += ms;
  ui.frames.max = Math.max(ui.frames.max, ms);
  afterFrame.port2.postMessage(0);
}

const str = (v) => (v == null ? "" : String(v));

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function setBadge(node, state, prefix) {
  setText(node, state || "–");
  const cls = `badge ${prefix}${state || "unknown"}`;
  if (node.className !== cls) node.className = cls;
}

/** Keep a table (head and body) in step with `texts`, the body's cell texts row by row:
 * rebuilt by `build()` ({head, rows, cells}: cells in the order of texts) when `key` (its
 * shape) changed, else only the cells whose text changed are written. */
function patchTable(view, table, key, texts, build) {
  if (view.key !== key) {
    const { head, rows, cells } = build();
    table.tHead.replaceChildren(head);
    table.tBodies[0].replaceChildren(...rows);
    view.key = key;
    view.cells = cells;
    view.texts = new Array(cells.length).fill(null);
  }
  const { cells, texts: shown } = view;
  for (let i = 0; i < texts.length; i++) {
    if (shown[i] !== texts[i]) {
      cells[i].textContent = texts[i];
      shown[i] = texts[i];
    }
  }
}

// -- status ----------------------------------------------------------------------------------

function setSites(sites) {
  model.sites = Array.isArray(sites) ? sites.slice() : [];
  charts.setSites(model.sites);
  mark("sites", "status", "yield", "bins");
}

function onStatus(st) {
  model.status = st;
  if (JSON.stringify(st.sites) !== JSON.stringify(model.sites)) setSites(st.sites);
  // a new lot clears the charts: its loading state, or (when the feed coalesced that
  // away) a new lot number
  const s = st.state;
  const lot = st.lot_number || "";
  if ((s === "loading" && model.state !== "loading") || (lot && model.lot !== null && lot !== model.lot)) {
    charts.newLot();
  }
  if (lot) model.lot = lot;
  model.state = s;
  alarms.onStatus(st);
  mark("status", "errors");
}

function drawStatus() {
  const st = model.status;
  if (!st) return;
  setText($("device-id"), st.device_id || "–");
  setText($("env"), st.env || "–");
  setText($("handler"), st.handler || "–");
  setText($("system-time"), st.systemTime || "");
  setBadge($("state"), st.state, "state-");
  if ($("state").dataset.state !== (st.state || "")) $("state").dataset.state = st.state || "";
  setText($("lot-number"), st.lot_number || "–");
  setText($("program"), st.program || "–");
  setText($("parts"), String(st.parts ?? 0));
  renderSites(st.site_states || {});
  const s = st.state;
  $("btn-load").disabled = s !== "initialized";
  const held = (st.error_message || "").startsWith("held:");
  $("btn-next").disabled = s !== "ready" || held;
  $("btn-next").title = held ? "the lot is held by an alarm: release it first" : "";
  $("btn-unload").disabled = s !== "ready";
  $("btn-reset").disabled = !["connecting", "initialized", "softerror", "error"].includes(s);
  $("btn-settings").disabled = !["initialized", "ready"].includes(s);
}

// -- site grid -------------------------------------------------------------------------------
// Up to COMPACT_SITES sites: one card per site with its Control and TestApp states.  More
// (STDF allows 255 per head): a compact grid of small tiles that wraps to the card's
// width, the state by colour and a one-letter label, the details in the tooltip, and a
// legend counting the sites per state.

const COMPACT_SITES = 16;
// tile state -> [label, legend text]; the order of the legend
const SITE_TILE_STATES = {
  error: ["E", "error"], crash: ["X", "crash"], testing: ["T", "testing"],
  loading: ["L", "loading"], ready: ["R", "ready"], idle: ["I", "idle"],
  resetting: ["S", "resetting"], unknown: ["?", "unknown"],
};
let legendKey = null;  // the counts the legend shows

function siteTileState(st) {
  const control = st.control || "";
  const testapp = st.testapp || "";
  if (control === "crash" || testapp === "crash") return "crash";
  if (st.error_message || control === "error" || testapp === "error") return "error";
  if (testapp === "testing") return "testing";
  if (control === "loading") return "loading";
  if (control === "resetting") return "resetting";
  if (control === "busy" && testapp === "idle") return "ready";
  if (control === "idle" || control === "busy") return "idle";
  return "unknown";
}

function siteTooltip(site, st) {
  const lines = [`Site ${site}`, `Control: ${st.control || "unknown"}`,
    `TestApp: ${st.testapp || "unknown"}`];
  if (st.error_message) lines.push(st.error_message);
  return lines.join("\n");
}

function buildSites() {
  const box = $("sites");
  const compact = model.sites.length > COMPACT_SITES;
  box.classList.toggle("compact", compact);
  $("sites-card").classList.toggle("many", compact);
  $("sites-legend").replaceChildren();
  legendKey = null;
  if (compact) {
    box.replaceChildren(...model.sites.map((site) => el("div", {
      class: "site tile tile-unknown", id: `site-${site}`, "data-site": site,
      "data-state": "unknown", title: siteTooltip(site, {}) },
    el("span", { class: "num", text: site }), el("span", { class: "lbl", text: "?" }))));
    return;
  }
  box.replaceChildren(...model.sites.map((site) => el("div", { class: "site", id: `site-${site}` },
    el("h3", { text: `Site ${site}` }),
    el("div", { class: "row" }, "Control", el("span", { class: "badge", "data-role": "control" })),
    el("div", { class: "row" }, "TestApp", el("span", { class: "badge", "data-role": "testapp" })),
    el("div", { class: "err", "data-role": "error" }))));
}

function renderSiteTiles(states) {
  const counts = {};
  for (const site of model.sites) {
    const tile = $(`site-${site}`);
    if (!tile) continue;
    const st = states[site] || {};
    const state = siteTileState(st);
    counts[state] = (counts[state] || 0) + 1;
    const title = siteTooltip(site, st);
    if (tile.dataset.state !== state) {
      tile.dataset.state = state;
      tile.className = `site tile tile-${state}`;
      tile.lastChild.textContent = SITE_TILE_STATES[state][0];
    }
    if (tile.title !== title) tile.title = title;
  }
  const shown = Object.entries(SITE_TILE_STATES).filter(([state]) => counts[state]);
  const key = shown.map(([state]) => `${state}:${counts[state]}`).join();
  if (key === legendKey) return;
  legendKey = key;
  $("sites-legend").replaceChildren(...shown.map(([state, [label, text]]) => el("span", {
    class: `legend tile-${state}`, "data-state": state }, el("b", { text: label }), ` ${text} ${counts[state]}`)));
}

function renderSites(states) {
  if ($("sites").classList.contains("compact")) {
    renderSiteTiles(states);
    return;
  }
  for (const site of model.sites) {
    const card = $(`site-${site}`);
    if (!card) continue;
    const st = states[site] || {};
    setBadge(card.querySelector('[data-role="control"]'), st.control, "st-");
    setBadge(card.querySelector('[data-role="testapp"]'), st.testapp, "st-");
    const err = st.error_message || "";
    setText(card.querySelector('[data-role="error"]'), err);
    card.classList.toggle("has-error", Boolean(err) || ["error", "crash"].includes(st.control));
  }
}

// -- errors ----------------------------------------------------------------------------------

let errorsKey = null;  // what the list shows

function drawErrors() {
  const items = [];  // [class, label, text, site]
  const st = model.status;
  if (st && st.error_message) items.push(["master", st.state, st.error_message, null]);
  for (const [site, s] of Object.entries((st && st.site_states) || {})) {
    if (s.error_message) items.push(["site", `site ${site}`, s.error_message, site]);
  }
  for (const e of model.warnings) items.push([e.type, e.type, `${e.date} ${e.source}: ${e.description}`, null]);
  const key = JSON.stringify(items);
  if (key === errorsKey) return;
  errorsKey = key;
  $("errors").replaceChildren(...(items.length ? items.map(([cls, label, text, site]) => el("li", {
    class: cls, "data-site": site ?? undefined }, el("span", { class: "lvl", text: label }), text))
    : [el("li", { class: "none", text: "none" })]));
}

// -- yield and bins: the latest frame, drawn in place ------------------------------------------

const yieldView = { key: null, cells: [], texts: [] };
const binsView = { key: null, cells: [], texts: [] };

function drawYield() {
  const rows = model.yields;
  const byCell = new Map();  // `${name}\0${site}` -> row
  const names = [];
  const present = new Set();
  for (const r of rows) {
    const k = `${r.name}\0${r.siteid}`;
    if (!byCell.has(k)) byCell.set(k, r);
    present.add(r.siteid);
    if (!names.includes(r.name)) names.push(r.name);  // a handful of groups
  }
  const sites = [...model.sites, "-1"].filter((s) => present.has(s));
  const texts = [];
  for (const name of names) {
    for (const s of sites) {
      const r = byCell.get(`${name}\0${s}`);
      texts.push(r ? `${r.count} (${fmtNumber(r.value)}%)` : "");
    }
  }
  patchTable(yieldView, $("yield-table"), `${sites.join()}\n${names.join("\0")}`, texts, () => {
    const cells = [];
    const head = el("tr", {}, el("th", { text: "Group" }),
      ...sites.map((s) => el("th", { class: "num", text: s === "-1" ? "Total" : `Site ${s}` })));
    const body = names.map((name) => el("tr", { "data-group": name }, el("td", { text: name }),
      ...sites.map((s) => {
        const td = el("td", { class: "num", "data-site": s });
        cells.push(td);
        return td;
      })));
    return { head, rows: body, cells };
  });
}

function drawBins() {
  const rows = model.bins;
  const sites = model.sites;
  const counts = rows.map((r) => (r.siteCounts || []).map((c) => c.count));
  const texts = [];
  rows.forEach((r, i) => {
    texts.push(str(r.name), str(r.sBin), str(r.hBin), str(r.type),
      ...counts[i].map(str), String(counts[i].reduce((a, b) => a + b, 0)));
  });
  const key = `${sites.join()}\n${rows.map((r, i) => `${r.sBin}:${counts[i].length}`).join()}`;
  patchTable(binsView, $("bin-table"), key, texts, () => {
    const cells = [];
    const td = (cls) => {
      const node = el("td", { class: cls });
      cells.push(node);
      return node;
    };
    const head = el("tr", {}, el("th", { text: "Name" }), el("th", { class: "num", text: "SBin" }),
      el("th", { class: "num", text: "HBin" }), el("th", { text: "Group" }),
      ...sites.map((s) => el("th", { class: "num", text: `Site ${s}` })),
      el("th", { class: "num", text: "Total" }));
    const body = rows.map((r, i) => el("tr", { "data-sbin": r.sBin }, td(), td("num"), td("num"), td(),
      ...counts[i].map(() => td("num")), td("num")));
    return { head, rows: body, cells };
  });
}

// -- recent parts: new rows on top, the oldest go ----------------------------------------------

let partsTop = 0;         // the number of the newest part drawn
let partsRedraw = true;   // the list was replaced (testresults)

function addResult(records) {
  if (!Array.isArray(records)) return;
  const prr = records.find((r) => r && r.type === "PRR") || records[records.length - 1];
  if (!prr) return;
  model.partCount += 1;
  model.parts.unshift({
    n: model.partCount, site: prr.SITE_NUM, id: prr.PART_ID || `${prr.X_COORD}x${prr.Y_COORD}`,
    sbin: prr.SOFT_BIN, hbin: prr.HARD_BIN, pass: ((prr.PART_FLG | 0) & 8) === 0, time: prr.TEST_T,
  });
  if (model.parts.length > MAX_PARTS) model.parts.length = MAX_PARTS;
}

function partRow(p) {
  return el("tr", { class: p.pass ? "pass" : "fail" }, el("td", { text: p.n }), el("td", { text: p.site }),
    el("td", { text: p.id }), el("td", { text: p.sbin }), el("td", { text: p.hbin }),
    el("td", { class: "res", text: p.pass ? "PASS" : "FAIL" }),
    el("td", { text: p.time == null ? "" : `${p.time} ms` }));
}

function drawParts() {
  const body = $("parts-table").tBodies[0];
  if (partsRedraw) {
    partsRedraw = false;
    body.replaceChildren(...model.parts.map(partRow));
  } else {
    const fresh = [];
    for (const p of model.parts) {
      if (p.n <= partsTop) break;
      fresh.push(p);
    }
    if (fresh.length) body.prepend(...fresh.map(partRow));
    while (body.rows.length > model.parts.length) body.lastElementChild.remove();
  }
  partsTop = model.parts.length ? model.parts[0].n : 0;
}

// -- lot data, settings ----------------------------------------------------------------------

function renderLotdata(mir) {
  const dl = $("lotdata");
  const items = [];
  for (const [k, v] of Object.entries(mir || {})) {
    if (!v || ["REC_LEN", "REC_TYP", "REC_SUB", "rec_id", "type"].includes(k)) continue;
    items.push(el("dt", { text: k }), el("dd", { text: v }));
  }
  dl.replaceChildren(...items);
}

function renderSettings(payload) {
  const body = $("settings-table").tBodies[0];
  const focused = body.contains(document.activeElement);
  if (focused) return; // do not overwrite what the operator is typing
  body.replaceChildren(...(payload.testoptions || []).map((o) =>
    el("tr", { "data-name": o.name }, el("td", { text: o.name }),
      el("td", {}, Object.assign(el("input", { type: "checkbox", "data-role": "active" }), { checked: Boolean(o.active) })),
      el("td", {}, Object.assign(el("input", { type: "number", step: "1", "data-role": "value" }), { value: o.value ?? -1 })))));
  if (typeof payload.loglevel === "number") $("loglevel").value = String(payload.loglevel);
}

// -- log: new entries on top -------------------------------------------------------------------

let logsFresh = [];      // entries not drawn yet, newest first
let logsRedraw = true;   // the list was replaced or the filter changed

function addLogs(entries, replace) {
  if (replace) { model.logs = []; model.warnings = []; }
  // the first push after a reconnect may repeat entries the getlogs reply already holds
  const key = (e) => `${e.date}|${e.type}|${e.source}|${e.description}`;
  const seen = new Set(model.logs.slice(0, 200).map(key));
  const fresh = (entries || []).filter((e) => e && typeof e.type === "string" && !seen.has(key(e)));
  model.logs = [...fresh, ...model.logs].slice(0, MAX_LOGS);
  const warn = fresh.filter((e) => LEVELS[e.type.trim()] >= LEVELS.WARNING);
  model.warnings = [...warn, ...model.warnings].slice(0, MAX_ERRORS);
  if (replace || logsFresh.length + fresh.length > MAX_LOGS) {
    logsRedraw = true;
    logsFresh = [];
  } else if (!logsRedraw) {
    logsFresh = [...fresh, ...logsFresh];
  }
  mark("logs", "errors");
}

function logRow(e) {
  return el("tr", { class: e.type.trim() }, el("td", { text: e.date }), el("td", { text: e.type }),
    el("td", { text: e.source }), el("td", { text: e.description }));
}

function drawLogs() {
  const min = LEVELS[$("logfilter").value] || 10;
  const shown = (e) => (LEVELS[e.type.trim()] || 0) >= min;
  const body = $("logs").tBodies[0];
  if (logsRedraw) {
    body.replaceChildren(...model.logs.filter(shown).map(logRow));
  } else {
    const fresh = logsFresh.filter(shown);
    if (fresh.length) body.prepend(...fresh.map(logRow));
    const want = model.logs.filter(shown).length;
    while (body.rows.length > want) body.lastElementChild.remove();
  }
  logsRedraw = false;
  logsFresh = [];
}

const DRAW_ORDER = ["sites", "status", "errors", "yield", "bins", "parts", "logs", "charts"];
const DRAWERS = {
  sites: buildSites, status: drawStatus, errors: drawErrors, yield: drawYield, bins: drawBins,
  parts: drawParts, logs: drawLogs, charts: charts.render,
};
charts.drawIn(() => mark("charts"));

// -- feed ------------------------------------------------------------------------------------

const handlers = {
  connectionid: () => {},
  masterconfiguration: (p) => {
    if (Array.isArray(p.sites) && JSON.stringify(p.sites) !== JSON.stringify(model.sites)) setSites(p.sites);
    else charts.setSites(model.sites);
  },
  status: onStatus,
  usersettings: renderSettings,
  testresult: (records) => { addResult(records); charts.onResult(records); mark("parts"); },
  testresults: (list) => {
    model.parts = []; model.partCount = 0;
    for (const records of list || []) addResult(records);
    partsRedraw = true;
    charts.onResults(list);
    mark("parts");
  },
  yield: (rows) => { model.yields = Array.isArray(rows) ? rows : []; charts.onYield(rows); mark("yield"); },
  bintable: (rows) => { model.bins = Array.isArray(rows) ? rows : []; charts.onBintable(rows); mark("bins"); },
  alarm: alarms.onAlarm,
  production: (p) => charts.onProduction(p, true),
  lotdata: renderLotdata,
  logs: (entries) => addLogs(entries, false),
  logfile: (p) => {
    const blob = new Blob([p.content || ""], { type: "text/plain" });
    const a = el("a", { href: URL.createObjectURL(blob), download: p.filename || "master.log" });
    a.click();
    URL.revokeObjectURL(a.href);
  },
};

let socket = null;
let delay = 500;
let reloadLogs = false;

function send(command, fields = {}) {
  if (!socket || socket.readyState !== WebSocket.OPEN) return false;
  socket.send(JSON.stringify({ type: "cmd", command, ...fields }));
  return true;
}

function onMessage(ev) {
  const t0 = performance.now();
  let msg;
  try { msg = JSON.parse(ev.data); } catch (e) { console.warn("feed: not JSON", e); return; }
  const handler = handlers[msg.type];
  if (!handler) return;
  try {
    if (msg.type === "logs" && reloadLogs) { reloadLogs = false; addLogs(msg.payload, true); }
    else handler(msg.payload);
  } catch (e) {
    console.error(`feed: ${msg.type} failed`, e);
  }
  const ms = performance.now() - t0;
  messageMs += ms;
  count(ui.messages, msg.type, ms, ev.data.length);
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const t = token();
  const url = `${scheme}://${location.host}/ws${t ? `?token=${encodeURIComponent(t)}` : ""}`;
  socket = new WebSocket(url);
  socket.onopen = () => {
    ui.opens += 1;
    delay = 500;
    $("conn").textContent = "online";
    $("conn").className = "conn up";
    reloadLogs = true;
    send("getlogs");
    alarms.refresh();
    pollProduction();
  };
  socket.onmessage = onMessage;
  socket.onclose = () => {
    ui.closes += 1;
    $("conn").textContent = "offline";
    $("conn").className = "conn down";
    setTimeout(connect, delay);
    delay = Math.min(delay * 2, 10000);
  };
}

// -- controls --------------------------------------------------------------------------------

function wire() {
  $("load-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    send("load", { lot_number: $("lot-input").value.trim() });
  });
  $("btn-next").addEventListener("click", () => send("next"));
  $("btn-unload").addEventListener("click", () => send("unload"));
  $("btn-reset").addEventListener("click", () => send("reset"));
  $("settings-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const payload = [...$("settings-table").tBodies[0].rows].map((row) => ({
      name: row.dataset.name,
      active: row.querySelector('[data-role="active"]').checked,
      value: parseInt(row.querySelector('[data-role="value"]').value, 10),
    })).map((o) => (Number.isNaN(o.value) ? { name: o.name, active: o.active } : o));
    document.activeElement && document.activeElement.blur();
    send("usersettings", { payload });
  });
  $("loglevel").addEventListener("change", () => send("setloglevel", { level: parseInt($("loglevel").value, 10) }));
  $("logfilter").addEventListener("change", () => { logsRedraw = true; mark("logs"); });
  $("btn-getlogs").addEventListener("click", () => { reloadLogs = true; send("getlogs"); });
  $("trend-window").addEventListener("change", () => charts.setWindow($("trend-window").value));
  charts.setWindow($("trend-window").value);
  alarms.wire();
  alarms.onChange(charts.setAlarms);
  lots.wire();
  for (const a of document.querySelectorAll("header nav a")) {
    a.addEventListener("click", (ev) => {
      if (ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.button !== 0) return;
      ev.preventDefault();
      if (location.pathname !== a.getAttribute("href")) history.pushState(null, "", a.getAttribute("href"));
      route();
    });
  }
  window.addEventListener("popstate", route);
  route();
}

// -- pages -----------------------------------------------------------------------------------
// /history is the lot history; every other UI route (/control, /bin, ...) is the live page,
// scrolled to its section.

function route() {
  const page = location.pathname === "/history" ? "history" : "live";
  $("live").hidden = page !== "live";
  $("history").hidden = page !== "history";
  document.body.dataset.page = page;
  for (const a of document.querySelectorAll("header nav a")) a.classList.toggle("active", a.dataset.page === page);
  if (page === "history") {
    lots.load(false);
    return;
  }
  const target = { "/control": "control", "/information": "lotdata-card", "/records": "parts-card",
    "/logging": "logging", "/bin": "bin-card" }[location.pathname];
  if (target) $(target).scrollIntoView();
}

// -- production figures: the feed's frames, else GET /api/v1/production -------------------------

let pollTimer = null;

async function pollProduction() {
  clearTimeout(pollTimer);
  if (charts.productionAge() > PRODUCTION_POLL * 1.5 && socket && socket.readyState === WebSocket.OPEN) {
    try {
      const r = await fetch("/api/v1/production", { cache: "no-store" });
      if (r.ok) charts.onProduction(await r.json(), false);
    } catch (e) {
      console.warn("GET /api/v1/production failed", e);
    }
  }
  pollTimer = setTimeout(pollProduction, PRODUCTION_POLL);
}

wire();
connect();
