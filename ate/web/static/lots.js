// The history page (/history, protocol §15.3): the finalised lots, newest first, from
// GET /api/v1/lots (filter by part type, "Older" pages with before=<next>); a click on a
// row shows GET /api/v1/lots/{id}: per-site yields, soft and hard bins, the alarms, and a
// link that downloads the lot's STDF file (GET /api/v1/lots/{id}/stdf).

import { $, el, getJson, fmtNumber, fmtTime, fmtDuration } from "./dom.js";

const PAGE = 50;
const st = { lots: [], next: null, selected: null, loading: false };

function query(before) {
  const q = new URLSearchParams({ limit: String(PAGE) });
  const partType = $("lots-part-type").value.trim();
  if (partType) q.set("part_type", partType);
  if (before != null) q.set("before", String(before));
  return `/api/v1/lots?${q}`;
}

/** (Re)load the list; with `more`, append the next older page. */
export async function load(more = false) {
  if (st.loading) return;
  st.loading = true;
  $("lots-status").textContent = "loading…";
  const data = await getJson(query(more ? st.next : null));
  st.loading = false;
  if (!data || !Array.isArray(data.lots)) {
    $("lots-status").textContent = "the lot history is not available";
    $("lots").dataset.loaded = "error";
    return;
  }
  st.lots = more ? [...st.lots, ...data.lots] : data.lots;
  st.next = data.next ?? null;
  renderList();
}

function renderList() {
  const body = $("lots-table").tBodies[0];
  body.replaceChildren(...st.lots.map((lot) => {
    const row = el("tr", { "data-id": lot.id, class: st.selected === lot.id ? "selected" : "" },
      el("td", { "data-col": "lot", text: lot.lot }),
      el("td", { "data-col": "part_type", text: lot.part_type || "" }),
      el("td", { "data-col": "program", text: lot.program || "" }),
      el("td", { "data-col": "start", text: fmtTime(lot.start_t, true) }),
      el("td", { "data-col": "duration", class: "num", text: fmtDuration(lot.duration_s) }),
      el("td", { "data-col": "parts", class: "num", text: String(lot.parts ?? "") }),
      el("td", { "data-col": "yield", class: "num",
        text: lot.yield_percent == null ? "–" : `${fmtNumber(lot.yield_percent)}%` }),
      el("td", { "data-col": "end_reason", text: lot.end_reason || "" }),
      el("td", { "data-col": "alarms", class: "num" }, String(lot.alarms ?? 0),
        lot.held ? el("span", { class: "tag held", text: "held" }) : ""));
    row.addEventListener("click", () => select(lot.id));
    return row;
  }));
  $("lots-status").textContent = st.lots.length ? `${st.lots.length} lot${st.lots.length === 1 ? "" : "s"}` : "no finalised lot yet";
  $("lots-more").hidden = st.next == null;
  $("lots").dataset.loaded = String(st.lots.length);
}

async function select(id) {
  st.selected = id;
  for (const row of $("lots-table").tBodies[0].rows) row.classList.toggle("selected", row.dataset.id === String(id));
  const box = $("lot-detail");
  box.hidden = false;
  box.dataset.id = String(id);
  box.dataset.loaded = "";
  const data = await getJson(`/api/v1/lots/${encodeURIComponent(id)}`);
  if (st.selected !== id) return;
  if (!data) { $("lot-title").textContent = `lot ${id}: not available`; return; }
  renderDetail(data);
  box.dataset.loaded = "1";
}

function table(id, head, rows) {
  const t = $(id);
  t.tHead.replaceChildren(el("tr", {}, ...head.map(([text, cls]) => el("th", { class: cls || "", text }))));
  t.tBodies[0].replaceChildren(...rows);
}

function renderDetail(lot) {
  const summary = lot.summary || {};
  $("lot-title").textContent = `Lot ${lot.lot}` + (lot.part_type ? ` – ${lot.part_type}` : "");
  $("lot-facts").replaceChildren(...[
    ["program", lot.program], ["device", lot.device], ["start", fmtTime(lot.start_t, true)],
    ["finish", fmtTime(lot.finish_t, true)], ["duration", fmtDuration(lot.duration_s)],
    ["parts", lot.parts], ["yield", lot.yield_percent == null ? "–" : `${fmtNumber(lot.yield_percent)}%`],
    ["end", lot.end_reason + (lot.held ? " (held)" : "")], ["datalog", lot.datalog],
  ].flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { "data-key": k, text: v ?? "" })]));
  const link = $("lot-stdf");
  link.href = `/api/v1/lots/${encodeURIComponent(lot.id)}/stdf`;
  link.setAttribute("download", lot.datalog || `${lot.lot}.stdf`);
  link.hidden = !lot.datalog;

  const perSite = Array.isArray(lot.site_yields) ? lot.site_yields : (summary.per_site || []);
  table("lot-sites", [["Site"], ["Parts", "num"], ["Good", "num"], ["Yield", "num"]],
    perSite.map((s) => el("tr", { "data-site": s.site }, el("td", { text: s.site }),
      el("td", { class: "num", text: s.parts }), el("td", { class: "num", text: s.good }),
      el("td", { class: "num", "data-col": "yield", text: `${fmtNumber(s.yield_percent)}%` }))));

  const bins = (Array.isArray(lot.soft_bins) ? lot.soft_bins : (summary.bins || []))
    .filter((b) => b.total > 0);
  table("lot-bins", [["SBin", "num"], ["HBin", "num"], ["Name"], ["Group"], ["Parts", "num"], ["%", "num"]],
    bins.map((b) => el("tr", { "data-sbin": b.sbin }, el("td", { class: "num", text: b.sbin }),
      el("td", { class: "num", text: b.hbin ?? "" }), el("td", { text: b.name || "" }),
      el("td", { text: b.group || "" }), el("td", { class: "num", "data-col": "total", text: b.total }),
      el("td", { class: "num", text: fmtNumber(b.percent) }))));

  const alarms = Array.isArray(lot.alarm_list) ? lot.alarm_list : (summary.alarms || []);
  $("lot-alarms").replaceChildren(...(alarms.length ? alarms.map((a) => el("li", { "data-id": a.id ?? "" },
    el("b", { text: a.name || a.kind || "alarm" }), ` ${a.message || ""}`,
    a.released_by ? el("span", { class: "muted", text: ` – released by ${a.released_by}: ${a.comment || ""}` }) : ""))
    : [el("li", { class: "none", text: "no alarms" })]));
}

export function wire() {
  $("lots-filter").addEventListener("submit", (ev) => { ev.preventDefault(); load(false); });
  $("lots-more").addEventListener("click", () => load(true));
}
