// DOM helpers shared by the operator UI's modules (plain ES modules, no build step).

export const $ = (id) => document.getElementById(id);

const SVG_NS = "http://www.w3.org/2000/svg";

function fill(node, attrs, children, svgNode) {
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null) continue;
    if (k === "class") {
      if (svgNode) node.setAttribute("class", v); else node.className = v;
    } else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === undefined || c === null) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

/** An HTML element: el("td", {class: "num", text: "3"}, ...children). */
export function el(tag, attrs = {}, ...children) {
  return fill(document.createElement(tag), attrs, children, false);
}

/** An SVG element, same calling convention as el(). */
export function svg(tag, attrs = {}, ...children) {
  return fill(document.createElementNS(SVG_NS, tag), attrs, children, true);
}

/** The bearer token, if the page was opened with ?token=... (kept for the session). */
export function token() {
  const fromUrl = new URLSearchParams(location.search).get("token");
  if (fromUrl) sessionStorage.setItem("ate-token", fromUrl);
  return sessionStorage.getItem("ate-token");
}

/** GET a JSON document of the master's API; null when it answers with an error. */
export async function getJson(path) {
  let response;
  try {
    response = await fetch(path, { cache: "no-store", headers: { Accept: "application/json" } });
  } catch (e) {
    console.warn(`GET ${path} failed`, e);
    return null;
  }
  if (!response.ok) {
    console.warn(`GET ${path}: HTTP ${response.status}`);
    return null;
  }
  return response.json();
}

/** POST a JSON body with the token (when one is known); resolves to {ok, status, body}. */
export async function postJson(path, body) {
  const headers = { "Content-Type": "application/json", Accept: "application/json" };
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  let response;
  try {
    response = await fetch(path, { method: "POST", headers, body: JSON.stringify(body) });
  } catch (e) {
    return { ok: false, status: 0, body: { error: "network", message: String(e) } };
  }
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  return { ok: response.ok, status: response.status, body: data };
}

export function fmtNumber(v, digits = 1) {
  return typeof v === "number" && Number.isFinite(v) ? v.toFixed(digits) : (v == null ? "–" : String(v));
}

/** Local time of an epoch-seconds value: "HH:MM:SS", or "YYYY-MM-DD HH:MM" with date. */
export function fmtTime(epoch, withDate = false) {
  if (typeof epoch !== "number" || !Number.isFinite(epoch)) return "–";
  const d = new Date(epoch * 1000);
  const p = (n) => String(n).padStart(2, "0");
  const time = `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  return withDate ? `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${time}` : time;
}

/** A duration in seconds as "1h 02m 03s" / "2m 03s" / "4.2 s". */
export function fmtDuration(seconds) {
  if (typeof seconds !== "number" || !Number.isFinite(seconds) || seconds < 0) return "–";
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const p = (n) => String(n).padStart(2, "0");
  return h ? `${h}h ${p(m)}m ${p(s % 60)}s` : `${m}m ${p(s % 60)}s`;
}
