// The lot's alarms (protocol §15.2): the list from GET /api/v1/alarms (at start, when the
// lot or its hold changes) merged with the live `alarm` frames; a Release form (operator and
// comment, both required) on every raised alarm, sent as POST /api/v1/alarms/{id}/release;
// and the banner at the top while the status error_message says the lot is held.

import { $, el, getJson, postJson, fmtTime } from "./dom.js";

const st = {
  alarms: new Map(),   // id -> alarm, oldest first
  rows: new Map(),     // id -> <tr>
  held: null,          // the held alarm's id (GET /api/v1/alarms)
  lot: null,
  state: null,
  heldText: "",
  listeners: [],
  fetching: null,
  again: false,
};

export function onChange(listener) { st.listeners.push(listener); }

function changed() {
  const list = [...st.alarms.values()];
  for (const l of st.listeners) l(list);
}

/** Replace the list with GET /api/v1/alarms (one request at a time; a later call repeats). */
export async function refresh() {
  if (st.fetching) { st.again = true; return st.fetching; }
  st.fetching = (async () => {
    do {
      st.again = false;
      const data = await getJson("/api/v1/alarms");
      if (data && Array.isArray(data.alarms)) {
        st.alarms = new Map(data.alarms.map((a) => [a.id, a]));
        st.held = data.held ?? null;
        render();
        changed();
      }
    } while (st.again);
  })();
  try { await st.fetching; } finally { st.fetching = null; }
  return undefined;
}

/** An `alarm` frame: a new alarm or a new state of one. */
export function onAlarm(alarm) {
  if (!alarm || typeof alarm.id !== "number") return;
  const known = st.alarms.get(alarm.id);
  st.alarms.set(alarm.id, { ...(known || {}), ...alarm });
  if (alarm.action === "hold") st.held = alarm.state === "raised" ? alarm.id : (st.held === alarm.id ? null : st.held);
  render();
  changed();
}

/** A `status` frame: the banner, and a refresh when the lot or its hold changed. */
export function onStatus(status) {
  const lot = status.lot_number || "";
  const msg = status.error_message || "";
  const heldText = msg.startsWith("held:") ? msg : "";
  const state = status.state || "";
  const refetch = lot !== st.lot || heldText !== st.heldText
    || (state !== st.state && ["loading", "initialized"].includes(state));
  st.lot = lot;
  st.state = state;
  st.heldText = heldText;
  renderBanner();
  if (refetch) refresh();
}

// -- rendering -------------------------------------------------------------------------------

function where(a) {
  const parts = [];
  if (a.site != null) parts.push(`site ${a.site}`);
  if (a.sbin != null) parts.push(`sbin ${a.sbin}`);
  return parts.join(", ") || "lot";
}

function releaseForm(a) {
  const form = el("form", { class: "release", "data-id": a.id, autocomplete: "off" },
    el("input", { name: "operator", placeholder: "operator", required: "", maxlength: "80",
      "aria-label": "operator", value: localStorage.getItem("ate-operator") || "" }),
    el("input", { name: "comment", placeholder: "comment", required: "", maxlength: "500",
      "aria-label": "comment" }),
    el("button", { type: "submit", text: "Release" }),
    el("span", { class: "msg", "data-role": "msg" }));
  form.addEventListener("submit", (ev) => { ev.preventDefault(); release(a.id, form); });
  return form;
}

async function release(id, form) {
  const operator = form.elements.operator.value.trim();
  const comment = form.elements.comment.value.trim();
  const msg = form.querySelector('[data-role="msg"]');
  if (!operator || !comment) {
    msg.textContent = `${!operator ? "operator" : "comment"} is required`;
    msg.className = "msg error";
    return;
  }
  localStorage.setItem("ate-operator", operator);
  form.querySelector("button").disabled = true;
  msg.textContent = "releasing…";
  msg.className = "msg";
  const r = await postJson(`/api/v1/alarms/${encodeURIComponent(id)}/release`, { operator, comment });
  form.querySelector("button").disabled = false;
  if (r.ok && r.body) {
    onAlarm(r.body);
    return;
  }
  msg.textContent = (r.body && r.body.message) || `release failed (HTTP ${r.status})`;
  msg.className = "msg error";
}

function cells(a) {
  return [
    ["time", fmtTime(a.time)], ["name", a.name], ["kind", a.kind], ["action", a.action],
    ["where", where(a)], ["message", a.message],
    ["state", a.state === "released" && a.released_by ? `released by ${a.released_by}` : a.state],
  ];
}

function render() {
  const body = $("alarms-table").tBodies[0];
  const ids = [...st.alarms.keys()].sort((x, y) => y - x); // newest first
  for (const [id, row] of st.rows) if (!st.alarms.has(id)) { row.remove(); st.rows.delete(id); }
  let before = body.firstChild;
  for (const id of ids) {
    const a = st.alarms.get(id);
    let row = st.rows.get(id);
    if (!row) {
      row = el("tr", { "data-id": id }, ...cells(a).map(([k]) => el("td", { "data-col": k })),
        el("td", { "data-col": "release" }));
      st.rows.set(id, row);
    }
    row.dataset.state = a.state;
    row.dataset.kind = a.kind;
    row.dataset.action = a.action;
    row.className = `${a.state} ${a.action}${st.held === id ? " held" : ""}`;
    for (const [k, v] of cells(a)) {
      const td = row.querySelector(`[data-col="${k}"]`);
      if (td.textContent !== String(v ?? "")) td.textContent = String(v ?? "");
    }
    const slot = row.querySelector('[data-col="release"]');
    if (a.state === "raised" && !slot.querySelector("form")) slot.replaceChildren(releaseForm(a));
    if (a.state !== "raised") {
      const text = a.comment ? a.comment : "";
      if (slot.querySelector("form") || slot.textContent !== text) slot.replaceChildren(text);
    }
    if (row !== before) body.insertBefore(row, before);
    before = row.nextSibling;
  }
  $("alarms-none").hidden = ids.length > 0;
  const raised = ids.filter((id) => st.alarms.get(id).state === "raised").length;
  $("alarms-count").textContent = ids.length ? `${raised} raised, ${ids.length} in all` : "";
  renderBanner();
}

function renderBanner() {
  const banner = $("hold-banner");
  banner.hidden = !st.heldText;
  if (!st.heldText) { delete banner.dataset.alarm; return; }
  $("hold-text").textContent = `Lot held by alarm ${st.heldText.slice("held:".length).trim()}`;
  if (st.held != null) banner.dataset.alarm = String(st.held); else delete banner.dataset.alarm;
}

export function wire() {
  $("hold-release").addEventListener("click", () => {
    const row = st.rows.get(st.held) || [...st.rows.values()].find((r) => r.dataset.state === "raised");
    if (!row) return;
    row.scrollIntoView({ block: "center" });
    const input = row.querySelector('input[name="operator"]');
    if (input) (input.value ? row.querySelector('input[name="comment"]') : input).focus();
  });
}

export function list() { return [...st.alarms.values()]; }
