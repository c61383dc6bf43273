// The cluster page: polls this node's admin endpoints once a second and draws what they say.
// Everything is built with DOM calls and textContent: no value from the cluster becomes markup.
"use strict";

const COLORS = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
  "#ff9da7", "#9c755f", "#bab0ac", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"];
const SVG = "http://www.w3.org/2000/svg";
const SAMPLES = 120;
const TWO64 = 18446744073709551616;

const $ = (sel) => document.querySelector(sel);
let samples = [];
// A token, when the node requires one: kept for this tab only.
let token = sessionStorage.getItem("dynamokv-token");
let colors = new Map();
let keyPosition = null;
let lastContext = null;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : String(c));
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

async function json(url, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = Object.assign({}, opts.headers || {});
  if (token) opts.headers.Authorization = `Bearer ${token}`;
  const response = await fetch(url, opts);
  if (response.status === 401) $("#token-form").hidden = false;
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = { message: text }; }
  return { status: response.status, headers: response.headers, body };
}

function seen(up) {
  return el("span", { class: up ? "up" : "down" }, up ? "up" : "down");
}

function angle(token) {
  return (Number(token) / TWO64) * 2 * Math.PI - Math.PI / 2;
}

function point(a, r) {
  return [Math.cos(a) * r, Math.sin(a) * r];
}

function drawRing(ring) {
  const root = $("#ring");
  const inRing = ring.members.filter((m) => m.status === "Up" || m.status === "Leaving");
  const tokens = [];
  for (const m of inRing) for (const t of m.tokens) tokens.push([Number(t), m.id]);
  tokens.sort((a, b) => a[0] - b[0]);
  const parts = [svg("circle", { r: 120, fill: "none", stroke: "#eef", "stroke-width": 26 })];
  // Each token owns the arc from the token before it up to itself.
  for (let i = 0; i < tokens.length; i++) {
    const [t, owner] = tokens[i];
    const prev = tokens[(i + tokens.length - 1) % tokens.length][0];
    let a0 = angle(prev);
    let a1 = angle(t);
    if (tokens.length === 1) { a0 = -Math.PI / 2; a1 = a0 + 2 * Math.PI - 1e-6; }
    if (a1 < a0) a1 += 2 * Math.PI;
    const [x0, y0] = point(a0, 120);
    const [x1, y1] = point(a1, 120);
    const large = a1 - a0 > Math.PI ? 1 : 0;
    parts.push(svg("path", {
      d: `M ${x0.toFixed(2)} ${y0.toFixed(2)} A 120 120 0 ${large} 1 ${x1.toFixed(2)} ${y1.toFixed(2)}`,
      fill: "none", stroke: colors.get(owner) || "#999", "stroke-width": 24, "data-owner": owner,
    }));
  }
  // Inside: each node's share of the key space as first replica, in one turn.
  let start = -Math.PI / 2;
  for (const m of inRing) {
    if (m.share <= 0) continue;
    const end = start + m.share * 2 * Math.PI - 1e-6;
    const [x0, y0] = point(start, 84);
    const [x1, y1] = point(end, 84);
    parts.push(svg("path", {
      d: `M ${x0.toFixed(2)} ${y0.toFixed(2)} A 84 84 0 ${end - start > Math.PI ? 1 : 0} 1 ${x1.toFixed(2)} ${y1.toFixed(2)}`,
      fill: "none", stroke: colors.get(m.id) || "#999", "stroke-width": 14, "data-share": m.id,
    }));
    const [lx, ly] = point((start + end) / 2, 84);
    const label = svg("text", { x: lx, y: ly + 4, class: "label share-label" });
    label.textContent = m.id;
    parts.push(label);
    start = end;
  }
  if (keyPosition !== null) {
    const [x, y] = point(angle(keyPosition), 120);
    const [lx, ly] = point(angle(keyPosition), 148);
    parts.push(svg("circle", { cx: x, cy: y, r: 6, fill: "#1d232b", id: "key-marker" }));
    const label = svg("text", { x: lx, y: ly + 4, class: "label" });
    label.textContent = "key";
    parts.push(label);
  }
  const centre = svg("text", { x: 0, y: 4, class: "label", id: "ring-caption" });
  centre.textContent = `${inRing.length} nodes, N=${ring.n} R=${ring.r} W=${ring.w}`;
  parts.push(centre);
  root.replaceChildren(...parts);
  fill($("#legend tbody"), ring.members.map((m) => el("tr", { "data-node": m.id },
    el("td", {}, el("span", { class: "swatch", style: `background:${colors.get(m.id)}` })),
    el("td", {}, m.id),
    el("td", {}, `${(m.share * 100).toFixed(1)}%`),
    el("td", {}, m.status === "Up" || m.status === "Leaving" ? m.tokens.length : `0 (${m.status.toLowerCase()})`))));
}

function drawMembers(ring) {
  $("#viewer").textContent = ring.node;
  // Members that left or were removed are not down: they are listed apart, without health.
  const departed = ring.members.filter((m) => m.status === "Left");
  $("#departed-box").hidden = departed.length === 0;
  fill($("#departed tbody"), departed.map((m) => el("tr", { "data-node": m.id },
    el("td", {}, m.id),
    el("td", {}, "left the cluster"),
    el("td", {}, m.http_addr || ""))));
  fill($("#members tbody"), ring.members.filter((m) => m.status !== "Left").map((m) => {
    const link = m.http_addr ? el("a", { href: `http://${m.http_addr}/` }, m.http_addr) : "";
    return el("tr", { "data-node": m.id, "data-up": String(m.up) },
      el("td", {}, m.id === ring.node ? `${m.id} (here)` : m.id),
      el("td", {}, m.status.toLowerCase()),
      el("td", { class: "seen" }, seen(m.up)),
      el("td", {}, !m.detector ? "-" : m.detector.phi > 1e6 ? "∞" : m.detector.phi.toFixed(2)),
      el("td", {}, m.id === ring.node ? "-" : (m.connected ? "yes" : "no")),
      el("td", {}, m.heartbeat),
      el("td", {}, link));
  }));
}

function drawBackground(stats) {
  const ae = stats.anti_entropy;
  const bg = stats.background;
  const rows = [
    ["background share", `${Math.round(bg.share * 100)}% (target p99 ${bg.target_p99_ms || "off"} ms, backed off ${bg.backoffs} times)`],
    ["anti-entropy round", ae.round === null ? `idle (last finished: ${ae.last_round})` : `${ae.round} in progress`],
    ["exchanges / failed", `${ae.exchanges} / ${ae.failed}`],
    ["keys repaired", ae.keys_repaired],
    ["trees", `${ae.trees} (${ae.trees_building} building), ${ae.tree_keys} keys`],
    ["tombstones collected", ae.tombstones_collected],
    ["rebuilding lost data", ae.rebuilding ? `yes (${ae.rebuilding_ranges} ranges)` : "no"],
    ["hints stored / delivered", `${stats.hints_stored} / ${stats.hints_delivered}`],
    ["read repairs", stats.read_repairs],
  ];
  fill($("#background tbody"), rows.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v))));
  const owners = Object.entries(stats.hints_pending_by_owner);
  fill($("#hints tbody"), owners.length ? owners.map(([o, n]) => el("tr", { "data-owner": o },
    el("td", {}, o), el("td", {}, n))) : [el("tr", {}, el("td", { colspan: 2, class: "muted" }, "none"))]);
  const t = stats.transfer;
  const box = $("#transfer");
  if (!t.change) {
    box.replaceChildren(el("span", { class: "muted" }, "none in progress"));
  } else {
    box.replaceChildren(el("div", {}, `${t.change}: ${t.confirmed} of ${t.ranges} ranges confirmed, ${Math.round(t.elapsed_ms / 1000)} s`),
      el("progress", { max: Math.max(t.ranges, 1), value: t.confirmed }));
  }
}

function chart(root, series) {
  const max = Math.max(1, ...series.flatMap((s) => s.values.filter((v) => v !== null)));
  const parts = [];
  for (const s of series) {
    const pts = [];
    s.values.forEach((v, i) => {
      if (v === null) return;
      const x = (400 * (i + SAMPLES - s.values.length)) / (SAMPLES - 1);
      pts.push(`${x.toFixed(1)},${(96 - (v / max) * 90).toFixed(1)}`);
    });
    parts.push(svg("polyline", { points: pts.join(" "), class: s.class }));
  }
  const top = svg("text", { x: 2, y: 10 });
  top.textContent = max.toFixed(max < 10 ? 1 : 0);
  parts.push(top);
  root.replaceChildren(...parts);
}

function drawCharts() {
  chart($("#ops-chart"), [{ class: "ops", values: samples.map((s) => s.ops) }]);
  chart($("#latency-chart"), [
    { class: "p99", values: samples.map((s) => s.p99) },
    { class: "p50", values: samples.map((s) => s.p50) },
  ]);
  const last = samples[samples.length - 1];
  if (last) {
    $("#ops-now").textContent = `now ${Math.round(last.ops)}/s`;
    $("#latency-now").textContent = last.p99 === null ? "(too few operations)" : `now p99 ${last.p99} ms, p50 ${last.p50} ms`;
  }
}

async function refresh() {
  try {
    const [ring, stats] = await Promise.all([json("/admin/ring"), json("/admin/stats")]);
    if (ring.status !== 200 || stats.status !== 200) throw new Error("the node answered an error");
    const ids = ring.body.members.map((m) => m.id).sort();
    colors = new Map(ids.map((id, i) => [id, COLORS[i % COLORS.length]]));
    const down = ring.body.members.filter((m) => !m.up).length;
    $("#summary").textContent = `node ${ring.body.node} - ${ring.body.members.length} members, ${down} seen down - ring ${ring.body.version}`;
    drawRing(ring.body);
    drawMembers(ring.body);
    drawBackground(stats.body);
    samples = stats.body.traffic.map((t) => ({ ops: t.ops, p99: t.p99_ms, p50: t.p50_ms }));
    drawCharts();
    $("#updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.ready = "true";
  } catch (e) {
    $("#updated").textContent = `cannot reach this node: ${e.message}`;
  }
}

async function askEveryNode() {
  const box = $("#views");
  box.textContent = "asking...";
  const r = await json("/admin/views");
  if (r.status !== 200) { box.textContent = r.body.message; return; }
  const members = [...new Set(r.body.views.flatMap((v) => v.members ? v.members.map((m) => m.id) : []))].sort();
  const head = el("tr", {}, el("th", {}, "as seen by"), ...members.map((m) => el("th", {}, m)));
  const rows = r.body.views.map((v) => el("tr", { "data-viewer": v.node },
    el("th", {}, v.node),
    ...(v.error ? [el("td", { colspan: members.length, class: "down" }, v.error)]
      : members.map((id) => {
        const m = v.members.find((x) => x.id === id);
        if (m && m.status === "left") return el("td", { class: "muted" }, "departed");
        return el("td", {}, m ? seen(m.up) : "-", m && m.status !== "up" ? ` (${m.status})` : "");
      }))));
  box.replaceChildren(el("table", { id: "views-table" }, el("thead", {}, head), el("tbody", {}, ...rows)));
}

function keyUrl(prefix) {
  return prefix + encodeURIComponent($("#key").value);
}

function decode(b64) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

async function showPreference() {
  const r = await json(keyUrl("/admin/preference-list/"));
  if (r.status !== 200) return;
  keyPosition = r.body.position;
  fill($("#preference tbody"), r.body.entries.map((e) => el("tr", { "data-node": e.node },
    el("td", {}, e.node),
    el("td", {}, e.primary ? "primary" : `fallback for ${e.fallback_for}`),
    el("td", {}, seen(e.up)))));
}

async function keyOperation(method) {
  if (!$("#key").value) { $("#kv-status").textContent = "enter a key"; return; }
  const status = $("#kv-status");
  const headers = { Accept: "application/json" };
  const options = { method, headers };
  if (method !== "GET" && $("#use-context").checked && lastContext) headers["X-Context"] = lastContext;
  if (method === "PUT") options.body = $("#value").value;
  status.textContent = `${method}...`;
  const r = await json(keyUrl("/kv/"), options);
  const context = r.headers.get("x-context");
  if (method === "GET") {
    const list = $("#siblings");
    if (r.status === 200 || r.status === 300) {
      lastContext = r.body.context;
      fill(list, r.body.siblings.map((s) => el("li", { class: "sibling" }, decode(s.value))));
      status.textContent = r.status === 300 ? `${r.body.siblings.length} siblings (a put with this context reconciles them)` : "found";
    } else {
      lastContext = r.status === 404 ? context : null;
      fill(list, []);
      status.textContent = r.status === 404 ? "not found" : `${r.status}: ${r.body && r.body.message}`;
    }
  } else if (r.status === 204) {
    lastContext = context;
    status.textContent = method === "PUT" ? "written" : "deleted";
  } else {
    status.textContent = `${r.status}: ${r.body && r.body.message}`;
  }
  $("#context").textContent = lastContext ? `context ${lastContext}` : "";
  await showPreference();
}

document.addEventListener("DOMContentLoaded", () => {
  $("#views-button").addEventListener("click", askEveryNode);
  $("#token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    token = $("#token").value;
    sessionStorage.setItem("dynamokv-token", token);
    $("#token-form").hidden = true;
    refresh();
  });
  $("#get").addEventListener("click", () => keyOperation("GET"));
  $("#put").addEventListener("click", () => keyOperation("PUT"));
  $("#delete").addEventListener("click", () => keyOperation("DELETE"));
  $("#key").addEventListener("change", () => { lastContext = null; });
  refresh();
  setInterval(refresh, 1000);
});
