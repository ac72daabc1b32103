// nasc dashboard: one page, routed by the address's #fragment, drawn from the server's JSON.
// Every value from the store is put into the document as text (text nodes, textContent,
// attributes), never parsed as markup: a reply holding <script> shows as those characters.
"use strict";

// What went wrong on the page, for the browser tests: script errors, rejected promises, console
// errors and anything the content policy refused.
window.__nascErrors = [];
window.addEventListener("error", (e) => window.__nascErrors.push(String(e.message || e)));
window.addEventListener("unhandledrejection", (e) => window.__nascErrors.push(String(e.reason)));
document.addEventListener("securitypolicyviolation", (e) => window.__nascErrors.push(`refused by the content policy: ${e.violatedDirective} ${e.blockedURI}`));
const consoleError = console.error.bind(console);
console.error = (...args) => { window.__nascErrors.push(args.map(String).join(" ")); consoleError(...args); };

const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#2f6fde", "#d35400", "#2e8b57", "#8e44ad", "#c0392b", "#16a085", "#7f8c8d", "#b7950b"];
const main = () => document.getElementById("main");

// An element with attributes (on* are listeners) and children (strings become text nodes).
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "class") e.className = v;
    // Through the CSSOM: the content policy refuses style attributes.
    else if (k === "style") e.style.cssText = v;
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function svg(tag, attrs, ...children) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, String(v));
  }
  for (const c of children.flat(Infinity)) if (c) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

async function api(path) {
  const r = await fetch(path, { headers: { Accept: "application/json" } });
  const body = await r.json().catch(() => ({ error: `${r.status} ${r.statusText}` }));
  if (!r.ok) throw new Error(body.error || `${r.status}`);
  return body;
}

const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%");
const acc = (x) => (x === null || x === undefined ? "–" : x.toFixed(4));
const num = (x) => (x === null || x === undefined ? "–" : Number(x).toLocaleString("en-US"));
const TRAINING_FAILURES = ["diverged", "oom", "timeout", "crashed"];
function verdictTag(v) {
  const cls = v === "ok" ? "ok" : v === "unfinished" || v === "claimed" ? "" : "bad";
  return el("span", { class: `verdict ${cls}` }, v);
}
const card = (k, v, extra) => el("div", { class: "card" }, el("div", { class: "k" }, k), el("div", { class: "v", ...extra }, v));

// ---- charts: plain SVG with hover tips; points may open candidates -----------------------------

function showTip(evt, text) {
  const tip = document.getElementById("tip");
  tip.textContent = text;
  tip.hidden = false;
  tip.style.left = evt.clientX + 12 + "px";
  tip.style.top = evt.clientY + 12 + "px";
}
const hideTip = () => (document.getElementById("tip").hidden = true);

// series: [{name, color, kind: "line"|"points"|"bars", data: [{x, y, label, href, id}]}]
function chart(title, series, opts = {}) {
  const W = 640, H = 260, L = 52, R = 12, T = 14, B = 34;
  const all = series.flatMap((s) => s.data.filter((d) => d.y !== null && d.y !== undefined));
  const box = el("div", { class: "panel" }, el("h2", {}, title));
  if (all.length === 0) {
    box.append(el("p", { class: "muted" }, "nothing to show yet"));
    return box;
  }
  const xs = all.map((d) => d.x), ys = all.map((d) => d.y);
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  // Bars stand on zero; lines and points get the range of their values, a little padded.
  const bars = series.some((s) => s.kind === "bars");
  const pad = (Math.max(...ys) - Math.min(...ys)) * 0.08 || 0.01;
  let [y0, y1] = opts.yRange || (bars ? [0, Math.max(...ys)] : [Math.min(...ys) - pad, Math.max(...ys) + pad]);
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (y0 === y1) { y1 = y0 + 1; }
  const px = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const py = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
  const g = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  g.append(svg("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
  g.append(svg("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
  for (let i = 0; i <= 4; i++) {
    const y = y0 + ((y1 - y0) * i) / 4;
    g.append(svg("text", { x: L - 6, y: py(y) + 4, "text-anchor": "end" }, opts.yFormat ? opts.yFormat(y) : y.toFixed(2)));
  }
  const xticks = opts.xTicks || [...new Set(xs)].slice(0, 12);
  for (const x of xticks) g.append(svg("text", { x: px(x), y: H - B + 16, "text-anchor": "middle" }, String(x)));
  if (opts.xLabel) g.append(svg("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle" }, opts.xLabel));
  series.forEach((s, si) => {
    const color = s.color || COLORS[si % COLORS.length];
    const data = s.data.filter((d) => d.y !== null && d.y !== undefined);
    if (s.kind === "line" && data.length > 1) {
      g.append(svg("polyline", { fill: "none", stroke: color, "stroke-width": 2, points: data.map((d) => `${px(d.x)},${py(d.y)}`).join(" ") }));
    }
    if (s.kind === "bars") {
      const w = Math.max(2, ((W - L - R) / Math.max(1, data.length)) * 0.8);
      for (const d of data) {
        const base = d.y0 === undefined ? 0 : d.y0;
        g.append(svg("rect", {
          x: px(d.x) - w / 2, y: py(base + d.y), width: w, height: Math.max(0, py(base) - py(base + d.y)), fill: d.color || color,
          onmousemove: (e) => showTip(e, d.label), onmouseleave: hideTip,
        }));
      }
      return;
    }
    for (const d of data) {
      const dot = svg("circle", {
        class: "pt", cx: px(d.x), cy: py(d.y), r: s.kind === "points" ? 3.5 : 4, fill: color, "data-id": d.id,
        onmousemove: (e) => showTip(e, d.label), onmouseleave: hideTip,
        onclick: d.href ? () => { hideTip(); location.hash = d.href; } : undefined,
      });
      g.append(dot);
    }
  });
  box.append(g);
  const named = series.filter((s) => s.name);
  if (named.length > 1 || opts.legend) {
    box.append(el("div", { class: "legend" }, named.map((s, i) => el("span", {}, el("i", { style: `background:${s.color || COLORS[i % COLORS.length]}` }), s.name))));
  }
  return box;
}

// ---- arch syntax, diffs ------------------------------------------------------------------------

const KEYWORDS = new Set(["arch", "net", "block", "in", "classes", "true", "false"]);
// One line of arch as coloured text nodes.
function archLine(line) {
  const out = [];
  const hash = line.indexOf("#");
  const code = hash >= 0 ? line.slice(0, hash) : line;
  const re = /([A-Za-z_][A-Za-z0-9_]*)|(\d+(?:\.\d+)?(?:e-?\d+)?)|([^A-Za-z0-9_]+)/g;
  let m;
  while ((m = re.exec(code))) {
    if (m[1]) {
      const next = code.slice(re.lastIndex).trimStart();
      const cls = KEYWORDS.has(m[1]) ? "tok-kw" : next.startsWith("(") || /^\s*$/.test(next) ? "tok-op" : "tok-name";
      out.push(el("span", { class: cls }, m[1]));
    } else if (m[2]) out.push(el("span", { class: "tok-num" }, m[2]));
    else out.push(m[3]);
  }
  if (hash >= 0) out.push(el("span", { class: "tok-com" }, line.slice(hash)));
  return out;
}

// A program as numbered, coloured lines; `marks` gives a class per line index ("add"/"del").
function codeBlock(text, marks = {}) {
  const box = el("div", { class: "code" });
  (text || "").split("\n").forEach((line, i) => box.append(el("span", { class: `ln ${marks[i] || ""}` }, archLine(line))));
  return box;
}

// A unified diff, its lines coloured by kind and their arch text highlighted.
function diffBlock(diff) {
  const box = el("div", { class: "code", "data-role": "diff" });
  for (const line of (diff || "").split("\n")) {
    const kind = line.startsWith("@@") ? "hunk" : line.startsWith("+") && !line.startsWith("+++") ? "add"
      : line.startsWith("-") && !line.startsWith("---") ? "del" : "";
    const body = kind === "add" || kind === "del" || line.startsWith(" ") ? [line[0], archLine(line.slice(1))] : [line];
    box.append(el("span", { class: `ln ${kind}` }, body));
  }
  return box;
}

// Which lines of a and b are not in their longest common subsequence (removed, added).
function lineChanges(a, b) {
  const x = (a || "").split("\n"), y = (b || "").split("\n");
  const n = x.length, m = y.length;
  if (n * m > 4e6) return [{}, {}];
  const dp = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--)
    dp[i][j] = x[i] === y[j] ? dp[i + 1][j + 1] + 1 : Math.max(dp[i + 1][j], dp[i][j + 1]);
  const del = {}, add = {};
  let i = 0, j = 0;
  while (i < n && j < m) {
    if (x[i] === y[j]) { i++; j++; } else if (dp[i + 1][j] >= dp[i][j + 1]) del[i++] = "del"; else add[j++] = "add";
  }
  while (i < n) del[i++] = "del";
  while (j < m) add[j++] = "add";
  return [del, add];
}

// The reply with its extracted part marked.
function replyBlock(reply, extracted) {
  const box = el("pre", { class: "code", "data-role": "reply" });
  const text = reply || "";
  const at = extracted ? text.indexOf(extracted) : -1;
  if (at < 0) box.append(text);
  else box.append(text.slice(0, at), el("mark", {}, extracted), text.slice(at + extracted.length));
  return box;
}

// ---- pages -------------------------------------------------------------------------------------

let state = { runs: [], versions: [] };

function crumbs(...parts) {
  const nav = document.getElementById("crumbs");
  nav.replaceChildren(...parts.map(([text, href]) => (href ? el("a", { href }, text) : el("span", {}, text))));
}

function runName(k) {
  const r = state.runs[k];
  return r ? r.label : `run ${k}`;
}

async function pageRuns() {
  const runs = await api("/api/runs");
  state.runs = runs;
  crumbs(["runs"]);
  const rows = [];
  for (const r of runs) {
    const c = r.config || {};
    const alive = (r.workers || []).filter((w) => w.state !== "stopped");
    rows.push(el("tr", { class: "row", onclick: () => (location.hash = `#/run/${r.index}`) },
      el("td", {}, el("a", { href: `#/run/${r.index}` }, r.label)),
      el("td", { class: "hide-narrow" }, r.store),
      el("td", {}, r.state || "–"),
      el("td", { class: "num" }, `${r.cycle} / ${c.cycles ?? "?"}`),
      el("td", { class: "num" }, num(r.rows)),
      el("td", { class: "num" }, num(r.unfinished)),
      el("td", {}, c.generator || "–"),
      el("td", { class: "hide-narrow" }, r.model || c.openai?.model || "–"),
      el("td", { class: "num" }, `${alive.length} / ${(r.workers || []).length}`)));
  }
  const table = el("table", { "data-role": "runs" },
    el("thead", {}, el("tr", {}, ["run", "store", "state", "cycle", "rows", "training", "generator", "model", "workers"].map((h, i) =>
      el("th", { class: [3, 4, 5, 8].includes(i) ? "num" : i === 1 || i === 7 ? "hide-narrow" : "" }, h)))),
    el("tbody", {}, rows));
  const parts = [el("h1", {}, runs.length === 1 ? "Run" : "Runs"), el("div", { class: "panel" }, table)];
  for (const r of runs) {
    parts.push(el("details", { "data-role": "config" }, el("summary", {}, `Config of ${r.label}`),
      el("pre", { class: "code" }, JSON.stringify(r.config, null, 2))));
  }
  if (runs.length > 1) parts.push(el("p", {}, el("a", { href: "#/compare" }, "Compare the runs' cycles side by side")));
  for (const r of runs) {
    if ((r.workers || []).length === 0) continue;
    parts.push(el("h2", {}, `Workers of ${r.label}`), el("div", { class: "panel" }, el("table", {},
      el("thead", {}, el("tr", {}, ["name", "host", "device", "state", "trained", "last seen"].map((h) => el("th", {}, h)))),
      el("tbody", {}, r.workers.map((w) => el("tr", {}, el("td", {}, w.name), el("td", {}, w.host), el("td", {}, w.device),
        el("td", {}, w.state), el("td", { class: "num" }, w.trained), el("td", {}, new Date(w.seen_at * 1000).toLocaleTimeString())))))));
  }
  main().replaceChildren(...parts);
}

function cycleSeries(rows, pick) {
  // Rows are per generator × dataset × cycle: merge each cycle's by weighting with candidates.
  const by = new Map();
  for (const r of rows) {
    const e = by.get(r.cycle) || { n: 0, rows: [] };
    e.n += r.candidates;
    e.rows.push(r);
    by.set(r.cycle, e);
  }
  return [...by.entries()].sort((a, b) => a[0] - b[0]).map(([cycle, e]) => ({ x: cycle, y: pick(e.rows, e.n), label: "" }));
}
const weighted = (field) => (rows, n) => (n ? rows.reduce((s, r) => s + (r[field] || 0) * r.candidates, 0) / n : null);
const maxOf = (field) => (rows) => rows.reduce((m, r) => (r[field] === null || r[field] === undefined ? m : Math.max(m ?? -1, r[field])), null);

async function pageRun(k) {
  const [{ report, facets }, runs] = await Promise.all([api(`/api/runs/${k}/report`), api("/api/runs")]);
  state.runs = runs;
  const run = runs[k];
  crumbs(["runs", "#/"], [run.label]);
  const rows = report.rows;
  const cands = rows.reduce((s, r) => s + r.candidates, 0);
  const valid = rows.reduce((s, r) => s + r.valid, 0);
  const best = report.best;
  const totalsRate = report.totals.map((t) => t.candidates_per_hour).filter((x) => x);
  const cards = el("div", { class: "cards" },
    card("state", run.state || "–"), card("cycle", `${run.cycle} / ${run.config?.cycles ?? "?"}`),
    card("candidates", num(cands), { "data-role": "candidates" }), card("valid", cands ? pct(valid / cands) : "–"),
    card("best accuracy", best ? acc(best.accuracy) : "–"), card("training now", num(run.unfinished)),
    card("candidates / hour", totalsRate.length ? Math.round(totalsRate[0]).toString() : "–"),
    card("generator", run.config?.generator || "–"), card("model / adapter", run.model || run.config?.openai?.model || "–"));
  const valid_ = chart("Valid rate per cycle", [{ kind: "line", data: cycleSeries(rows, weighted("valid_rate")).map((d) => ({ ...d, label: `cycle ${d.x}: ${pct(d.y)} valid` })) }],
    { yRange: [0, 1], yFormat: pct, xLabel: "cycle" });
  const meanS = cycleSeries(rows, (rs) => { const t = rs.filter((r) => r.mean_accuracy !== null); const n = t.reduce((s, r) => s + r.trained, 0); return n ? t.reduce((s, r) => s + r.mean_accuracy * r.trained, 0) / n : null; });
  const bestS = cycleSeries(rows, maxOf("best_accuracy"));
  let soFar = null;
  const soFarS = bestS.map((d) => { if (d.y !== null) soFar = Math.max(soFar ?? d.y, d.y); return { x: d.x, y: soFar, label: `best so far after cycle ${d.x}: ${acc(soFar)}` }; });
  const accChart = chart("First-epoch accuracy per cycle", [
    { name: "mean", kind: "line", data: meanS.map((d) => ({ ...d, label: `cycle ${d.x}: mean ${acc(d.y)}` })) },
    { name: "best", kind: "line", data: bestS.map((d) => ({ ...d, label: `cycle ${d.x}: best ${acc(d.y)}` })) },
    { name: "best so far", kind: "line", data: soFarS }], { xLabel: "cycle", legend: true });
  // The verdicts of each cycle, stacked.
  const verdictNames = [...new Set(rows.flatMap((r) => Object.keys(r.verdicts)))].sort();
  const vColor = (v) => (v === "ok" ? "#2e8b57" : TRAINING_FAILURES.includes(v) ? "#d68910" : v === "unfinished" ? "#95a5a6" : COLORS[(verdictNames.indexOf(v) + 3) % COLORS.length]);
  const stacks = [];
  for (const [cycle, group] of Object.entries(rows.reduce((m, r) => ((m[r.cycle] ||= []).push(r), m), {}))) {
    let base = 0;
    for (const v of verdictNames) {
      const n = group.reduce((s, r) => s + (r.verdicts[v] || 0), 0);
      if (!n) continue;
      stacks.push({ x: Number(cycle), y: n, y0: base, color: vColor(v), label: `cycle ${cycle}: ${v} ${n}` });
      base += n;
    }
  }
  const verdictChart = chart("Verdicts per cycle", [{ kind: "bars", data: stacks }], { xLabel: "cycle", yFormat: (y) => y.toFixed(0) });
  verdictChart.append(el("div", { class: "legend" }, verdictNames.map((v) => el("span", {}, el("i", { style: `background:${vColor(v)}` }), v))));
  const novelty = chart("Mean novelty per cycle", [{ kind: "line", data: cycleSeries(rows, weighted("mean_novelty")).map((d) => ({ ...d, label: `cycle ${d.x}: novelty ${d.y === null ? "–" : d.y.toFixed(3)}` })) }],
    { yRange: [0, 1], xLabel: "cycle" });
  // Every trained candidate (the latest 1000): click one to open it.
  const trained = await api(`/api/runs/${k}/candidates?verdict=ok&sort=id&order=desc&per_page=1000`);
  const pts = trained.rows.filter((r) => r.accuracy !== null).map((r) => ({
    x: r.cycle + (r.slot % 50) / 60, y: r.accuracy, id: r.id, href: `#/run/${k}/candidate/${r.id}`,
    label: `#${r.id} cycle ${r.cycle} ${r.dataset}\naccuracy ${acc(r.accuracy)} · ${num(r.params)} params`,
  }));
  const scatter = chart("Candidates by accuracy (click one to open it)", [{ kind: "points", data: pts }], { xLabel: "cycle", xTicks: facets.cycles });
  scatter.setAttribute("data-role", "scatter");
  // The accuracy distribution.
  const accs = pts.map((p) => p.y);
  const hist = [];
  if (accs.length) {
    const lo = Math.min(...accs), hi = Math.max(...accs), bins = 20, w = (hi - lo) / bins || 1;
    const counts = new Array(bins).fill(0);
    for (const a of accs) counts[Math.min(bins - 1, Math.floor((a - lo) / w))]++;
    counts.forEach((c, i) => hist.push({ x: lo + (i + 0.5) * w, y: c, label: `${(lo + i * w).toFixed(3)}–${(lo + (i + 1) * w).toFixed(3)}: ${c}` }));
  }
  const histChart = chart("Accuracy distribution", [{ kind: "bars", data: hist }], { xLabel: "first-epoch accuracy", xTicks: hist.filter((_, i) => i % 4 === 0).map((d) => Number(d.x.toFixed(3))), yFormat: (y) => y.toFixed(0) });
  const bestLink = best ? el("p", {}, "Best: ", el("a", { href: `#/run/${k}/candidate/${best.id}` }, `candidate #${best.id}`), ` (${best.dataset}, cycle ${best.cycle}, ${acc(best.accuracy)})`) : null;
  main().replaceChildren(el("h1", {}, run.label), cards, bestLink,
    el("p", {}, el("a", { href: `#/run/${k}/candidates` }, "All candidates →")),
    el("div", { class: "grid2" }, valid_, accChart, verdictChart, novelty, scatter, histChart));
}

async function pageCompare() {
  const runs = await api("/api/runs");
  state.runs = runs;
  crumbs(["runs", "#/"], ["compare"]);
  const reports = await Promise.all(runs.map((r) => api(`/api/runs/${r.index}/report`)));
  const valid = reports.map((r, i) => ({ name: runs[i].label, kind: "line", data: cycleSeries(r.report.rows, weighted("valid_rate")).map((d) => ({ ...d, label: `${runs[i].label}, cycle ${d.x}: ${pct(d.y)} valid` })) }));
  const best = reports.map((r, i) => ({ name: runs[i].label, kind: "line", data: cycleSeries(r.report.rows, maxOf("best_accuracy")).map((d) => ({ ...d, label: `${runs[i].label}, cycle ${d.x}: best ${acc(d.y)}` })) }));
  main().replaceChildren(el("h1", {}, "Runs side by side"), el("div", { class: "grid2" },
    chart("Valid rate per cycle", valid, { yRange: [0, 1], yFormat: pct, xLabel: "cycle", legend: true }),
    chart("Best first-epoch accuracy per cycle", best, { xLabel: "cycle", legend: true })));
}

const COLUMNS = [["id", "id"], ["cycle", "cycle"], ["dataset"], ["generator"], ["verdict"],
  ["accuracy", "accuracy"], ["params", "params"], ["MACs", "macs"], ["novelty", "novelty"], ["parent"]];
// Columns a narrow screen leaves out.
const NARROW_HIDDEN = new Set(["generator", "params", "MACs", "parent"]);
const narrow = (label) => (NARROW_HIDDEN.has(label) ? " hide-narrow" : "");

async function pageCandidates(k, params) {
  const q = new URLSearchParams(params);
  const page = Number(q.get("page") || 1);
  const [data, { facets }, runs] = await Promise.all([api(`/api/runs/${k}/candidates?${q}`), api(`/api/runs/${k}/report`), state.runs.length ? state.runs : api("/api/runs")]);
  state.runs = runs;
  crumbs(["runs", "#/"], [runName(k), `#/run/${k}`], ["candidates"]);
  const go = (changes) => {
    const next = new URLSearchParams(q);
    for (const [key, v] of Object.entries(changes)) if (v === "" || v === null) next.delete(key); else next.set(key, v);
    location.hash = `#/run/${k}/candidates?${next}`;
  };
  const filter = (name, values) => el("label", {}, name,
    el("select", { name, onchange: (e) => go({ [name]: e.target.value, page: 1 }) },
      el("option", { value: "" }, "all"), values.map((v) => el("option", { value: v, selected: String(v) === q.get(name) }, v))));
  const sort = q.get("sort") || "id", order = q.get("order") || "asc";
  const head = el("tr", {}, COLUMNS.map(([label, key]) => key
    ? el("th", { class: `sortable num${narrow(label)} ${sort === key ? "sorted " + order : ""}`, "data-sort": key,
      onclick: () => go({ sort: key, order: sort === key && order === "desc" ? "asc" : "desc", page: 1 }) }, label)
    : el("th", { class: narrow(label) }, label)));
  const body = el("tbody", {}, data.rows.map((r) => el("tr", { class: "row", "data-id": r.id, onclick: () => (location.hash = `#/run/${k}/candidate/${r.id}`) },
    el("td", { class: "num" }, el("a", { href: `#/run/${k}/candidate/${r.id}` }, `#${r.id}`)), el("td", { class: "num" }, r.cycle),
    el("td", {}, r.dataset), el("td", { class: "hide-narrow" }, r.generator), el("td", {}, verdictTag(r.status === "claimed" ? "unfinished" : r.verdict)),
    el("td", { class: "num" }, acc(r.accuracy)), el("td", { class: "num hide-narrow" }, num(r.params)), el("td", { class: "num hide-narrow" }, num(r.macs)),
    el("td", { class: "num" }, r.novelty === null ? "–" : r.novelty.toFixed(3)), el("td", { class: "num hide-narrow" }, r.parent_id ? `#${r.parent_id}` : "–"))));
  const pages = Math.max(1, Math.ceil(data.total / data.per_page));
  const pager = el("div", { class: "pager" },
    el("button", { disabled: page <= 1, onclick: () => go({ page: page - 1 }) }, "← previous"),
    el("span", { "data-role": "total" }, `page ${page} of ${pages} · ${num(data.total)} candidates`),
    el("button", { disabled: page >= pages, onclick: () => go({ page: page + 1 }) }, "next →"));
  main().replaceChildren(el("h1", {}, `Candidates of ${runName(k)}`),
    el("div", { class: "filters" }, filter("dataset", facets.datasets), filter("cycle", facets.cycles), filter("verdict", facets.verdicts), filter("generator", facets.generators)),
    pager, el("div", { class: "panel" }, el("table", { "data-role": "candidates" }, el("thead", {}, head), body)));
}

async function pageCandidate(k, id) {
  const [data, runs] = await Promise.all([api(`/api/runs/${k}/candidates/${id}`), state.runs.length ? state.runs : api("/api/runs")]);
  state.runs = runs;
  const c = data.candidate;
  crumbs(["runs", "#/"], [runName(k), `#/run/${k}`], ["candidates", `#/run/${k}/candidates`], [`#${c.id}`]);
  const tr = c.train_result || {};
  const m = tr.metrics || {};
  const cards = el("div", { class: "cards" },
    card("verdict", verdictTag(c.status === "claimed" ? "unfinished" : c.verdict), { "data-role": "verdict" }),
    card("front-half verdict", c.front_verdict), card("accuracy", acc(c.accuracy)), card("dataset", c.dataset),
    card("cycle · slot", `${c.cycle} · ${c.slot}`), card("generator", c.generator + (c.adapter ? ` (${c.adapter})` : "")),
    card("parameters", num(c.params)), card("MACs", num(c.macs)),
    card("novelty", c.similarity === null ? "–" : (1 - c.similarity).toFixed(3)),
    card("attempts", `${c.attempts}: ${(c.attempt_verdicts || []).join(", ")}`),
    card("trained by", c.trained_by || "–"), card("train time", c.train_s ? `${c.train_s.toFixed(1)} s` : "–"));
  const parts = [el("h1", {}, `Candidate #${c.id}`), cards];
  if (c.diagnostic) parts.push(el("h2", {}, "Diagnostic"), el("pre", { class: "code", "data-role": "diagnostic" }, c.diagnostic));
  if (c.diff) parts.push(el("h2", {}, "Diff against its parent"), diffBlock(c.diff));
  if (data.parent_program !== null && c.program) {
    const [del, add] = lineChanges(data.parent_program, c.program);
    parts.push(el("h2", {}, "Parent and child"), el("div", { class: "side" },
      el("div", {}, el("div", { class: "muted" }, `parent #${c.parent_id}`), codeBlock(data.parent_program, del)),
      el("div", {}, el("div", { class: "muted" }, `candidate #${c.id}`), codeBlock(c.program, add))));
  } else if (c.program) {
    parts.push(el("h2", {}, "Program"), codeBlock(c.program));
  }
  if (c.reply) {
    parts.push(el("h2", {}, "Reply (the extracted part marked)"), replyBlock(c.reply, c.extracted));
    parts.push(el("p", { class: "muted" }, `tolerances: ${(c.tolerances || []).length ? c.tolerances.join(", ") : "none (it applied strictly)"}`));
  }
  if (c.prompt) parts.push(el("details", {}, el("summary", {}, "Prompt"), el("pre", { class: "code" }, c.prompt)));
  const sh = data.shapes;
  if (sh) {
    parts.push(el("h2", {}, "Shapes"));
    if (sh.error) parts.push(el("pre", { class: "code error" }, sh.error));
    else parts.push(el("div", { class: "panel" }, el("table", { "data-role": "shapes" },
      el("thead", {}, el("tr", {}, ["line", "operation", "output", "params", "MACs"].map((h, i) => el("th", { class: i === 0 || i > 2 ? "num" : "" }, h)))),
      el("tbody", {}, sh.rows.map((r) => el("tr", {}, el("td", { class: "num" }, r.line), el("td", {}, "  ".repeat(r.depth) + r.op),
        el("td", {}, r.shape), el("td", { class: "num" }, num(r.params)), el("td", { class: "num" }, num(r.macs))))))));
  }
  if (tr.metrics) {
    parts.push(el("h2", {}, "Training"));
    const epochs = m.epochs || [];
    parts.push(el("div", { class: "cards" }, card("train loss", m.train_loss?.toFixed(4) ?? "–"), card("test loss", m.test_loss?.toFixed(4) ?? "–"),
      card("images / s", m.images_per_s ? Math.round(m.images_per_s) : "–"), card("steps", num(m.steps)),
      card("peak memory", m.peak_rss_bytes ? `${(m.peak_rss_bytes / 2 ** 20).toFixed(0)} MiB` : "–"), card("message", tr.message || "–")));
    if (epochs.length) parts.push(chart("Training loss per epoch", [{ kind: "line", data: epochs.map((e) => ({ x: e.epoch, y: e.train_loss, label: `epoch ${e.epoch}: ${e.train_loss.toFixed(4)} in ${e.seconds.toFixed(1)} s` })) }], { xLabel: "epoch" }));
  }
  parts.push(el("h2", {}, "Lineage"));
  const chain = [...data.lineage].reverse();
  const tree = el("ul", { class: "tree", "data-role": "lineage" });
  chain.forEach((p, i) => tree.append(el("li", { style: `padding-left:${i * 1.2}rem` }, el("a", { href: `#/run/${k}/candidate/${p.id}` }, `#${p.id}`),
    ` ${p.role}, cycle ${p.cycle}, ${p.verdict}, ${acc(p.accuracy)}`)));
  tree.append(el("li", { style: `padding-left:${chain.length * 1.2}rem` }, el("strong", {}, `#${c.id}`), ` cycle ${c.cycle}, ${c.verdict}, ${acc(c.accuracy)}`));
  parts.push(tree);
  if (data.children.length) {
    parts.push(el("h2", {}, `Children (${data.children.length})`), el("ul", { class: "tree" }, data.children.map((ch) =>
      el("li", {}, el("a", { href: `#/run/${k}/candidate/${ch.id}` }, `#${ch.id}`), ` cycle ${ch.cycle}, ${ch.verdict}, ${acc(ch.accuracy)}`))));
  }
  main().replaceChildren(...parts);
}

// ---- routing and live updates ------------------------------------------------------------------

let rendering = Promise.resolve();
function route() {
  const hash = location.hash || "#/";
  const [path, query] = hash.slice(1).split("?");
  const p = path.split("/").filter(Boolean);
  let page;
  if (p.length === 0) page = pageRuns();
  else if (p[0] === "compare") page = pageCompare();
  else if (p[0] === "run" && p.length === 2) page = pageRun(Number(p[1]));
  else if (p[0] === "run" && p[2] === "candidates") page = pageCandidates(Number(p[1]), query || "");
  else if (p[0] === "run" && p[2] === "candidate") page = pageCandidate(Number(p[1]), Number(p[3]));
  else page = Promise.reject(new Error(`no page ${hash}`));
  rendering = page.catch((e) => main().replaceChildren(el("p", { class: "error" }, `Could not load this page: ${e.message}`)));
  return rendering;
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", () => {
  route();
  const live = document.getElementById("live");
  const source = new EventSource("/api/events");
  source.addEventListener("open", () => { live.textContent = "live"; live.className = "on"; });
  source.addEventListener("error", () => { live.textContent = "reconnecting…"; live.className = ""; });
  source.addEventListener("versions", (e) => {
    const versions = JSON.parse(e.data);
    const changed = state.versions.length > 0 && JSON.stringify(versions) !== JSON.stringify(state.versions);
    state.versions = versions;
    // Redraw what is shown, keeping the scroll position; a page being drawn is let finish first.
    if (changed) rendering.then(() => { const y = window.scrollY; route().then(() => window.scrollTo(0, y)); });
  });
});
