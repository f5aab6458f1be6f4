// ate-master operator UI: one page, no build step.
// It speaks the MSCT web UI feed at /ws of the host that served it (protocol.md section 11)
// and reconnects with a growing delay when the master restarts.  The alarms, the production
// charts and the lot history (protocol §15) live in alarms.js, charts.js and lots.js.

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
  lot: null,      // the lot number the charts show
  state: null,
};

function setBadge(node, state, prefix) {
  node.textContent = state || "–";
  node.className = `badge ${prefix}${state || "unknown"}`;
}

// -- rendering -------------------------------------------------------------------------------

function renderStatus(st) {
  model.status = st;
  $("device-id").textContent = st.device_id || "–";
  $("env").textContent = st.env || "–";
  $("handler").textContent = st.handler || "–";
  $("system-time").textContent = st.systemTime || "";
  setBadge($("state"), st.state, "state-");
  $("state").dataset.state = st.state || "";
  $("lot-number").textContent = st.lot_number || "–";
  $("program").textContent = st.program || "–";
  $("parts").textContent = String(st.parts ?? 0);
  if (JSON.stringify(st.sites) !== JSON.stringify(model.sites)) {
    model.sites = Array.isArray(st.sites) ? st.sites.slice() : [];
    buildSites();
    charts.setSites(model.sites);
  }
  renderSites(st.site_states || {});
  const s = st.state;
  $("btn-load").disabled = s !== "initialized";
  const held = (st.error_message || "").startsWith("held:");
  $("btn-next").disabled = s !== "ready" || held;
  $("btn-next").title = held ? "the lot is held by an alarm: release it first" : "";
  $("btn-unload").disabled = s !== "ready";
  $("btn-reset").disabled = !["connecting", "initialized", "softerror", "error"].includes(s);
  $("btn-settings").disabled = !["initialized", "ready"].includes(s);
  renderErrors();
  // a new lot clears the charts: its loading state, or (when the feed coalesced that
  // away) a new lot number
  const lot = st.lot_number || "";
  if ((s === "loading" && model.state !== "loading") || (lot && model.lot !== null && lot !== model.lot)) {
    charts.newLot();
  }
  if (lot) model.lot = lot;
  model.state = s;
  alarms.onStatus(st);
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
  $("sites-legend").replaceChildren(...Object.entries(SITE_TILE_STATES)
    .filter(([state]) => counts[state])
    .map(([state, [label, text]]) => el("span", { class: `legend tile-${state}`, "data-state": state },
      el("b", { text: label }), ` ${text} ${counts[state]}`)));
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
    card.querySelector('[data-role="error"]').textContent = err;
    card.classList.toggle("has-error", Boolean(err) || ["error", "crash"].includes(st.control));
  }
}

// -- other cards -----------------------------------------------------------------------------

function renderErrors() {
  const list = $("errors");
  const items = [];
  const st = model.status;
  if (st && st.error_message) {
    items.push(el("li", { class: "master" }, el("span", { class: "lvl", text: st.state }), st.error_message));
  }
  for (const [site, s] of Object.entries((st && st.site_states) || {})) {
    if (s.error_message) {
      items.push(el("li", { class: "site", "data-site": site },
        el("span", { class: "lvl", text: `site ${site}` }), s.error_message));
    }
  }
  for (const e of model.warnings) {
    items.push(el("li", { class: e.type },
      el("span", { class: "lvl", text: e.type }), `${e.date} ${e.source}: ${e.description}`));
  }
  if (!items.length) items.push(el("li", { class: "none", text: "none" }));
  list.replaceChildren(...items);
}

function renderYield(rows) {
  const sites = [...model.sites, "-1"].filter((s) => rows.some((r) => r.siteid === s));
  const names = [];
  for (const r of rows) if (!names.includes(r.name)) names.push(r.name);
  const head = el("tr", {}, el("th", { text: "Group" }),
    ...sites.map((s) => el("th", { class: "num", text: s === "-1" ? "Total" : `Site ${s}` })));
  const body = names.map((name) => el("tr", { "data-group": name }, el("td", { text: name }),
    ...sites.map((s) => {
      const r = rows.find((x) => x.siteid === s && x.name === name);
      return el("td", { class: "num", "data-site": s,
        text: r ? `${r.count} (${fmtNumber(r.value)}%)` : "" });
    })));
  const table = $("yield-table");
  table.tHead.replaceChildren(head);
  table.tBodies[0].replaceChildren(...body);
}

function renderBins(rows) {
  const table = $("bin-table");
  const sites = model.sites;
  table.tHead.replaceChildren(el("tr", {},
    el("th", { text: "Name" }), el("th", { class: "num", text: "SBin" }), el("th", { class: "num", text: "HBin" }),
    el("th", { text: "Group" }), ...sites.map((s) => el("th", { class: "num", text: `Site ${s}` })),
    el("th", { class: "num", text: "Total" })));
  table.tBodies[0].replaceChildren(...rows.map((r) => {
    const counts = (r.siteCounts || []).map((c) => c.count);
    return el("tr", { "data-sbin": r.sBin }, el("td", { text: r.name }), el("td", { class: "num", text: r.sBin }),
      el("td", { class: "num", text: r.hBin }), el("td", { text: r.type }),
      ...counts.map((c) => el("td", { class: "num", text: c })),
      el("td", { class: "num", text: counts.reduce((a, b) => a + b, 0) }));
  }));
}

function addResult(records) {
  if (!Array.isArray(records)) return;
  const prr = records.find((r) => r && r.type === "PRR") || records[records.length - 1];
  if (!prr) return;
  model.partCount += 1;
  model.parts.unshift({
    n: model.partCount, site: prr.SITE_NUM, id: prr.PART_ID || `${prr.X_COORD}x${prr.Y_COORD}`,
    sbin: prr.SOFT_BIN, hbin: prr.HARD_BIN, pass: ((prr.PART_FLG | 0) & 8) === 0, time: prr.TEST_T,
  });
  model.parts.length = Math.min(model.parts.length, MAX_PARTS);
}

function renderParts() {
  $("parts-table").tBodies[0].replaceChildren(...model.parts.map((p) =>
    el("tr", { class: p.pass ? "pass" : "fail" }, el("td", { text: p.n }), el("td", { text: p.site }),
      el("td", { text: p.id }), el("td", { text: p.sbin }), el("td", { text: p.hbin }),
      el("td", { class: "res", text: p.pass ? "PASS" : "FAIL" }),
      el("td", { text: p.time == null ? "" : `${p.time} ms` }))));
}

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

function addLogs(entries, replace) {
  if (replace) { model.logs = []; model.warnings = []; }
  // the first push after a reconnect may repeat entries the getlogs reply already holds
  const key = (e) => `${e.date}|${e.type}|${e.source}|${e.description}`;
  const seen = new Set(model.logs.slice(0, 200).map(key));
  const fresh = (entries || []).filter((e) => e && typeof e.type === "string" && !seen.has(key(e)));
  model.logs = [...fresh, ...model.logs].slice(0, MAX_LOGS);
  const warn = fresh.filter((e) => LEVELS[e.type.trim()] >= LEVELS.WARNING);
  model.warnings = [...warn, ...model.warnings].slice(0, MAX_ERRORS);
  renderLogs();
  renderErrors();
}

function renderLogs() {
  const min = LEVELS[$("logfilter").value] || 10;
  $("logs").tBodies[0].replaceChildren(...model.logs
    .filter((e) => (LEVELS[e.type.trim()] || 0) >= min)
    .map((e) => el("tr", { class: e.type.trim() }, el("td", { text: e.date }), el("td", { text: e.type }),
      el("td", { text: e.source }), el("td", { text: e.description }))));
}

// -- feed ------------------------------------------------------------------------------------

const handlers = {
  connectionid: () => {},
  masterconfiguration: (p) => {
    if (Array.isArray(p.sites) && JSON.stringify(p.sites) !== JSON.stringify(model.sites)) {
      model.sites = p.sites.slice();
      buildSites();
    }
    charts.setSites(model.sites);
  },
  status: renderStatus,
  usersettings: renderSettings,
  testresult: (records) => { addResult(records); renderParts(); charts.onResult(records); },
  testresults: (list) => {
    model.parts = []; model.partCount = 0;
    for (const records of list || []) addResult(records);
    renderParts();
    charts.onResults(list);
  },
  yield: (rows) => { renderYield(rows); charts.onYield(rows); },
  bintable: (rows) => { renderBins(rows); charts.onBintable(rows); },
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

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const t = token();
  const url = `${scheme}://${location.host}/ws${t ? `?token=${encodeURIComponent(t)}` : ""}`;
  socket = new WebSocket(url);
  socket.onopen = () => {
    delay = 500;
    $("conn").textContent = "online";
    $("conn").className = "conn up";
    reloadLogs = true;
    send("getlogs");
    alarms.refresh();
    pollProduction();
  };
  socket.onmessage = (ev) => {
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
  };
  socket.onclose = () => {
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
  $("logfilter").addEventListener("change", renderLogs);
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
