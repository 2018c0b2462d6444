// The analyst page: the alert queue of a day, one-click labels and how the model is doing.
// Everything shown comes from the keyed JSON endpoints (/alerts, /performance, /labels) and is rendered as text
// (text nodes and textContent only, no HTML parsing); the key lives in sessionStorage and only ever travels in the x-api-key header.
"use strict";

const KEY_NAME = "fraud.key";
const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (name === "class") node.className = value;
    else if (name.startsWith("data-")) node.setAttribute(name, value);
    else node[name] = value;
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

const fmt = {
  money: (v) => Number.isFinite(v) ? v.toLocaleString("en", { minimumFractionDigits: 2, maximumFractionDigits: 2 }) : "-",
  pct: (v) => v === null || v === undefined ? "-" : `${(100 * v).toFixed(1)} %`,
  score: (v) => v.toFixed(3),
  time: (iso) => iso.replace("T", " ").replace(/(\.\d+)?\+00:00$/, " UTC"),
  ms: (text) => new Date(Number(text)).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC"),
};

class Unauthorized extends Error {}

async function api(path, options) {
  const key = sessionStorage.getItem(KEY_NAME);
  const headers = { "x-api-key": key || "", ...((options && options.headers) || {}) };
  const response = await fetch(path, { ...options, headers, cache: "no-store", credentials: "omit" });
  if (response.status === 401) throw new Unauthorized("the key was refused");
  if (!response.ok) throw new Error(`${path.split("?")[0]}: HTTP ${response.status}`);
  return response.json();
}

function say(text) { $("message").textContent = text; }

function showSignedIn(signedIn) {
  $("signin").hidden = signedIn;
  $("app").hidden = !signedIn;
  $("signout").hidden = !signedIn;
}

function signOut(reason) {
  sessionStorage.removeItem(KEY_NAME);
  showSignedIn(false);
  $("signin-error").textContent = reason || "";
  $("key").value = "";
}

async function guarded(work) {
  try {
    await work();
  } catch (error) {
    if (error instanceof Unauthorized) signOut("The key was refused: sign in again.");
    else say(`Could not load: ${error.message}`);
  }
}

// --- the queue ------------------------------------------------------------------------------------------------

function fillSelect(select, values, keep, labels) {
  const chosen = keep !== undefined ? keep : select.value;
  const fixed = [...select.querySelectorAll("option[data-fixed]")];
  select.replaceChildren(...fixed);
  for (const value of values) select.append(el("option", { value }, labels ? labels(value) : value));
  if ([...select.options].some((o) => o.value === chosen)) select.value = chosen;
}

function tile(name, value, id) {
  return el("div", { class: "tile", "data-tile": id }, el("div", { class: "value" }, value), el("div", { class: "name" }, name));
}

function renderSummary(s) {
  $("summary").replaceChildren(
    tile("cards in queue", s.cards, "cards"), tile("open cards", s.open_cards, "open"),
    tile("alerts", s.alerts, "alerts"), tile("reviewed today", s.reviewed_today, "reviewed-today"),
    tile("confirmed fraud", s.confirmed_fraud, "confirmed-fraud"),
    tile("precision so far (cards)", fmt.pct(s.precision), "precision"));
}

function labelButtons(ids, what) {
  const fraud = el("button", { type: "button", class: "fraud label-fraud", title: `label ${what} as fraud` }, "Fraud");
  const legit = el("button", { type: "button", class: "legitimate label-legitimate", title: `label ${what} as legitimate` },
    "Legitimate");
  fraud.addEventListener("click", () => label(ids, 1, [fraud, legit]));
  legit.addEventListener("click", () => label(ids, 0, [fraud, legit]));
  return [fraud, legit];
}

function reasonsList(reasons) {
  return el("ul", { class: "reasons" }, ...reasons.map((r) => el("li", {
    class: r.direction, title: `${r.feature}: ${r.contribution >= 0 ? "+" : ""}${r.contribution.toFixed(2)} log-odds`,
  }, r.text)));
}

function alertRow(t) {
  const row = el("tr", { class: "alert-row", "data-transaction": t.transaction_id, "data-status": t.status },
    el("td", { class: "tx-id" }, t.transaction_id), el("td", {}, fmt.time(t.tx_datetime)),
    el("td", { class: "num" }, fmt.money(t.amount)), el("td", {}, t.terminal_id),
    el("td", { class: "num" }, fmt.score(t.fraud_probability)), el("td", {}, `v${t.model_version}`),
    el("td", {}, reasonsList(t.reasons)), el("td", {}, el("span", { class: `badge ${t.status}` }, t.status)));
  row.append(el("td", {}, ...(t.status === "open" ? labelButtons([t.transaction_id], "this transaction") : [])));
  return row;
}

function table(headers, rows) {
  return el("table", {}, el("thead", {}, el("tr", {}, ...headers.map(([h, cls]) => el("th", { class: cls || "" }, h)))),
    el("tbody", {}, ...rows));
}

function recentTable(recent) {
  const rows = recent.map((r) => el("tr", {}, el("td", {}, r.transaction_id), el("td", {}, fmt.time(r.tx_datetime)),
    el("td", { class: "num" }, fmt.money(r.amount)), el("td", {}, r.terminal_id),
    el("td", {}, r.is_fraud === null ? "no label" : r.is_fraud ? "fraud" : "legitimate")));
  return el("details", { class: "recent" }, el("summary", {}, `recent transactions of the card (${recent.length})`),
    table([["transaction"], ["time"], ["amount", "num"], ["terminal"], ["label"]], rows));
}

function cardBlock(card) {
  const open = card.alerts.filter((t) => t.status === "open").map((t) => t.transaction_id);
  const head = el("div", { class: "card-head" }, el("span", { class: "muted" }, `#${card.rank}`),
    el("span", { class: "title" }, `card ${card.customer_id}`),
    el("span", {}, `highest score ${fmt.score(card.max_probability)}`),
    el("span", { class: `badge ${card.status}` }, card.status),
    ...(open.length ? labelButtons(open, "the card's open alerts") : []));
  const alerts = table([["transaction"], ["time"], ["amount", "num"], ["terminal"], ["score", "num"], ["model"],
    ["reasons"], ["status"], [""]], card.alerts.map(alertRow));
  return el("div", { class: "card", "data-card": card.customer_id }, head, alerts, recentTable(card.recent));
}

function queryString() {
  const params = new URLSearchParams();
  for (const [name, id] of [["day", "day"], ["model_version", "version"], ["status", "status"]]) {
    if ($(id).value) params.set(name, $(id).value);
  }
  return params.toString();
}

async function loadQueue() {
  say("loading...");
  const data = await api(`/alerts?${queryString()}`);
  fillSelect($("day"), data.days, data.day || "");
  fillSelect($("version"), data.model_versions, undefined, (v) => `v${v}`);
  renderSummary(data.summary);
  const queue = $("queue");
  queue.replaceChildren(...data.cards.map(cardBlock));
  if (!data.cards.length) queue.append(el("p", { class: "muted empty" }, data.day ? "Nothing to show for these filters." : "No scores yet."));
  say(data.day ? `${data.cards.length} cards shown, day ${data.day}` : "no scores yet");
}

async function label(ids, isFraud, buttons) {
  for (const b of buttons) b.disabled = true;
  await guarded(async () => {
    const body = JSON.stringify({ labels: ids.map((id) => ({ transaction_id: id, is_fraud: isFraud })) });
    const answer = await api("/labels", { method: "POST", body, headers: { "content-type": "application/json" } });
    await loadQueue();
    say(`${answer.stored} label(s) stored as ${isFraud ? "fraud" : "legitimate"}`);
    await loadPerformance();
  });
  for (const b of buttons) b.disabled = false;
}

// --- how the model is doing -------------------------------------------------------------------------------------

const W = 640, H = 220, PAD = { left: 40, right: 12, top: 12, bottom: 34 };

function frame(yMax, yTicks, yLabel) {
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
  const y = (v) => PAD.top + (H - PAD.top - PAD.bottom) * (1 - v / yMax);
  for (const t of yTicks) {
    root.append(svg("line", { class: "grid", x1: PAD.left, x2: W - PAD.right, y1: y(t), y2: y(t) }));
    root.append(svg("text", { x: PAD.left - 4, y: y(t) + 3, "text-anchor": "end" }, yLabel(t)));
  }
  root.append(svg("line", { class: "axis", x1: PAD.left, x2: PAD.left, y1: PAD.top, y2: H - PAD.bottom }));
  root.append(svg("line", { class: "axis", x1: PAD.left, x2: W - PAD.right, y1: H - PAD.bottom, y2: H - PAD.bottom }));
  return { root, y };
}

function xScale(n) {
  const width = W - PAD.left - PAD.right;
  return (i) => PAD.left + (n === 1 ? width / 2 : (width * i) / (n - 1));
}

function xLabels(root, labels, x) {
  const every = Math.max(1, Math.ceil(labels.length / 8));
  labels.forEach((text, i) => {
    if (i % every === 0) root.append(svg("text", { x: x(i), y: H - PAD.bottom + 14, "text-anchor": "middle" }, text));
  });
}

function weeksChart(weeks) {
  const box = $("chart-weeks");
  const labels = [...new Set(weeks.map((w) => w.week))].sort();
  const versions = [...new Set(weeks.map((w) => w.model_version))];
  if (!labels.length) return box.replaceChildren(el("p", { class: "muted" }, "No scores yet."));
  const { root, y } = frame(1, [0, 0.25, 0.5, 0.75, 1], (t) => `${t * 100}%`);
  const x = xScale(labels.length);
  xLabels(root, labels, x);
  versions.forEach((version, k) => {
    const points = weeks.filter((w) => w.model_version === version && w.precision !== null)
      .map((w) => [x(labels.indexOf(w.week)), y(w.precision), w]);
    const cls = `s${k % 5}`;
    if (points.length > 1) root.append(svg("polyline", { class: `line ${cls}`, points: points.map((p) => `${p[0]},${p[1]}`).join(" ") }));
    for (const [px, py, w] of points) {
      const dot = svg("circle", { class: cls, cx: px, cy: py, r: 4 });
      dot.append(svg("title", {}, `v${version}, week of ${w.week}: precision ${fmt.pct(w.precision)}, recall ${fmt.pct(w.recall)} (${w.labelled} labelled)`));
      root.append(dot);
    }
    root.append(svg("text", { class: cls, x: W - PAD.right - 60 * (k + 1), y: H - 4 }, `v${version}`));
  });
  box.replaceChildren(root);
}

function daysChart(days) {
  const box = $("chart-days");
  if (!days.length) return box.replaceChildren(el("p", { class: "muted" }, "No scores yet."));
  const top = Math.max(1, ...days.map((d) => d.alerts));
  const { root, y } = frame(top, [0, Math.round(top / 2), top], (t) => String(t));
  const width = (W - PAD.left - PAD.right) / days.length;
  days.forEach((d, i) => {
    const bar = svg("rect", { class: "bar", x: PAD.left + i * width + 1, width: Math.max(1, width - 2), y: y(d.alerts), height: y(0) - y(d.alerts) });
    bar.append(svg("title", {}, `${d.day}: ${d.alerts} alerts of ${d.scored} scored`));
    root.append(bar);
  });
  xLabels(root, days.map((d) => d.day.slice(5)), (i) => PAD.left + (i + 0.5) * width);
  box.replaceChildren(root);
}

function renderPerformance(p) {
  weeksChart(p.weeks);
  daysChart(p.alerts_per_day);
  const rows = p.weeks.map((w) => el("tr", {}, el("td", {}, w.week), el("td", {}, `v${w.model_version}`),
    el("td", { class: "num" }, w.scored), el("td", { class: "num" }, w.alerts), el("td", { class: "num" }, w.labelled),
    el("td", { class: "num" }, w.frauds), el("td", { class: "num" }, fmt.pct(w.precision)),
    el("td", { class: "num" }, fmt.pct(w.recall)),
    el("td", { class: "num" }, w.average_precision === null ? "-" : w.average_precision.toFixed(3))));
  $("weeks").replaceChildren(table([["week of"], ["model"], ["scored", "num"], ["alerts", "num"], ["labelled", "num"],
    ["frauds", "num"], ["precision", "num"], ["recall", "num"], ["AUPRC", "num"]], rows));
  const history = p.champion_history.map((m) => el("li", {},
    `${fmt.ms(m.time)}: ${m.kind || "move"} to v${m.version}${m.previous_version ? ` (from v${m.previous_version})` : ""}`
    + ` by ${m.actor || "?"}: ${m.reason || "no reason given"}`));
  $("history").replaceChildren(...(history.length ? history : [el("li", { class: "muted" }, "no recorded moves")]));
  const drift = p.drift.map((d) => el("li", { class: d.drift_detected ? "drifted" : "" },
    `${d.month}: ${d.drift_detected ? "drift detected" : "no drift"}${d.score_psi === null ? "" : `, score PSI ${d.score_psi.toFixed(3)}`}`));
  $("drift").replaceChildren(...(drift.length ? drift : [el("li", { class: "muted" }, "no drift reports")]));
}

async function loadPerformance() {
  renderPerformance(await api("/performance"));
}

// --- wiring -----------------------------------------------------------------------------------------------------

function start() {
  for (const select of [$("version")]) {
    for (const option of select.options) option.setAttribute("data-fixed", "");
  }
  $("signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_NAME, $("key").value);
    $("key").value = "";
    $("signin-error").textContent = "";
    showSignedIn(true);
    guarded(async () => { await loadQueue(); await loadPerformance(); });
  });
  $("signout").addEventListener("click", () => signOut(""));
  $("refresh").addEventListener("click", () => guarded(async () => { await loadQueue(); await loadPerformance(); }));
  for (const id of ["day", "version", "status"]) $(id).addEventListener("change", () => guarded(loadQueue));
  if (sessionStorage.getItem(KEY_NAME)) {
    showSignedIn(true);
    guarded(async () => { await loadQueue(); await loadPerformance(); });
  }
}

document.addEventListener("DOMContentLoaded", start);
