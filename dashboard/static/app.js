// medge dashboard: one EventSource; a snapshot on (re)connect, then results, error entries,
// alerts and coalesced summaries. Every value from a device is inserted as text, never HTML.
"use strict";

const MAX_RESULTS = 500;
const MAX_SHOWN = 200;
const data = {
  summary: null, clockOffset: 0,
  results: [], resultIds: new Set(),
  errors: [], errorIds: new Set(),
  alerts: [], alertIds: new Set(),
  dismissed: new Set(JSON.parse(localStorage.getItem("medge.dismissed") || "[]")),
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

const fmtTime = (epoch) => epoch ? new Date(epoch * 1000).toLocaleTimeString([], {hour12: false}) : "–";
const fmtNum = (value, digits = 3) => (value === null || value === undefined) ? "–" : Number(value).toFixed(digits);
const fmtMs = (value) => (value === null || value === undefined) ? "–" : `${Number(value).toFixed(0)} ms`;
function fmtAge(seconds) {
  if (seconds === null || seconds === undefined) return "never";
  if (seconds < 90) return `${Math.round(seconds)} s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  return `${(seconds / 3600).toFixed(1)} h ago`;
}
const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
const serverNow = () => Date.now() / 1000 - data.clockOffset;

// ---- incoming messages -------------------------------------------------------------------
function addResult(row) {
  if (data.resultIds.has(row.id)) return false;  // QoS 1 re-delivery or snapshot overlap
  data.resultIds.add(row.id);
  data.results.push(row);
  while (data.results.length > MAX_RESULTS) data.resultIds.delete(data.results.shift().id);
  return true;
}
function addError(row) {
  if (data.errorIds.has(row.id)) return false;
  data.errorIds.add(row.id);
  data.errors.push(row);
  while (data.errors.length > MAX_RESULTS) data.errorIds.delete(data.errors.shift().id);
  return true;
}
function addAlert(alert, live) {
  if (data.alertIds.has(alert.id)) return false;
  data.alertIds.add(alert.id);
  data.alerts.push(alert);
  if (live) notify(alert);
  return true;
}
function setSummary(summary) {
  data.summary = summary;
  data.clockOffset = Date.now() / 1000 - summary.now;
}

// Live rows by server-sent event name. The server folds every MQTT message kind into these
// views by its role (medge.edge.comms.topics), so a new message kind needs nothing here.
const LIVE = {
  result: addResult,
  error_entry: addError,
  alert: (alert) => addAlert(alert, true),
  summary: (summary) => { setSummary(summary); return true; },
};

function connect() {
  const source = new EventSource("/api/events");
  source.addEventListener("snapshot", (event) => {
    const snap = JSON.parse(event.data);
    data.results = []; data.resultIds.clear(); data.errors = []; data.errorIds.clear();
    snap.results.forEach(addResult);
    snap.errors.forEach(addError);
    snap.alerts.forEach((alert) => addAlert(alert, false));
    setSummary(snap);
    setLive(true);
    scheduleRender();
  });
  for (const [name, take] of Object.entries(LIVE)) {
    source.addEventListener(name, (event) => { if (take(JSON.parse(event.data))) scheduleRender(); });
  }
  source.onopen = () => setLive(true);
  source.onerror = () => setLive(false);  // EventSource reconnects by itself
}

function setLive(ok) {
  const badge = $("live-badge");
  badge.textContent = ok ? "live" : "live: reconnecting…";
  badge.className = "pill " + (ok ? "pill-ok" : "pill-bad");
}

// ---- notifications -----------------------------------------------------------------------
function notify(alert) {
  if (!("Notification" in window) || Notification.permission !== "granted") return;
  if (data.dismissed.has(alert.id)) return;
  new Notification(`medge: ${alert.kind.replace("_", " ")}`, {body: alert.message, tag: alert.id});
}
function setupNotifications() {
  const button = $("notify-button");
  if (!("Notification" in window)) { button.hidden = true; return; }
  const refresh = () => {
    button.textContent = Notification.permission === "granted" ? "Notifications on" : "Enable notifications";
    button.disabled = Notification.permission !== "default";
  };
  button.addEventListener("click", () => Notification.requestPermission().then(refresh));
  refresh();
}

// ---- rendering ---------------------------------------------------------------------------
let renderPending = false;
function scheduleRender() {
  if (renderPending) return;
  renderPending = true;
  requestAnimationFrame(() => { renderPending = false; render(); });
}

function render() {
  if (!data.summary) return;
  renderBroker();
  renderAlerts();
  renderVersions();
  renderKpis();
  renderDevices();
  renderFleet();
  renderFilters();
  renderResults();
  renderErrors();
  renderRateChart();
  renderScoreCharts();
}

function renderBroker() {
  const broker = data.summary.broker;
  const badge = $("broker-badge");
  badge.textContent = `broker ${broker.url || ""}: ${broker.connected ? "connected" : "disconnected"}`;
  badge.className = "pill " + (broker.connected ? "pill-ok" : "pill-bad");
  badge.title = broker.message || "";
}

function renderAlerts() {
  const active = data.alerts.filter((alert) => !data.dismissed.has(alert.id)).reverse();
  $("alerts").hidden = active.length === 0;
  const list = $("alert-list");
  list.replaceChildren(...active.slice(0, 6).map((alert) => {
    const close = el("button", {type: "button", title: "Dismiss", "aria-label": "Dismiss", text: "×"});
    close.addEventListener("click", () => dismiss([alert.id]));
    return el("li", {class: `alert alert-${alert.level}`, "data-kind": alert.kind},
      el("span", {class: "alert-kind", text: alert.kind.replace("_", " ")}),
      el("span", {class: "alert-message", text: alert.message}),
      el("span", {class: "muted", text: fmtTime(alert.received)}), close);
  }));
  if (active.length > 6) list.append(el("li", {class: "muted", text: `+ ${active.length - 6} more`}));
}
function dismiss(ids) {
  ids.forEach((id) => data.dismissed.add(id));
  localStorage.setItem("medge.dismissed", JSON.stringify([...data.dismissed].slice(-1000)));
  renderAlerts();
}

function renderVersions() {
  const versions = data.summary.versions;
  const box = $("version-warning");
  box.hidden = !versions.mismatch;
  if (versions.mismatch) {
    const parts = Object.entries(versions.by_version).map(([label, keys]) => `${label} on ${keys.join(", ")}`);
    box.textContent = `Model version mismatch: devices run different models — ${parts.join("; ")}`;
  }
}

function renderKpis() {
  const totals = data.summary.totals;
  const lastMinute = data.summary.devices.reduce((sum, dev) => sum + dev.per_minute, 0);
  $("kpi-online").textContent = `${totals.online || 0} / ${totals.devices || 0}`;
  $("kpi-results").textContent = totals.results || 0;
  $("kpi-positives").textContent = totals.positives || 0;
  $("kpi-rate").textContent = lastMinute;
  $("kpi-errors").textContent = (totals.errors || 0) + (totals.invalid || 0);
  if ($("kpi-refers")) $("kpi-refers").textContent = totals.refers || 0;
}

function deviceState(dev) {
  if (dev.state === "online" && dev.stale) return "stale";
  return dev.state;
}

function renderDevices() {
  const devices = data.summary.devices;
  const box = $("devices");
  if (!devices.length) return;
  box.replaceChildren(...devices.map((dev) => {
    const state = deviceState(dev);
    const age = dev.last_heartbeat === null ? null : Math.max(0, serverNow() - dev.last_heartbeat);
    const latency = dev.latency_ms || {};
    const counters = dev.counters || {};
    const last = dev.last_result;
    const model = el("dd", {class: dev.version_mismatch ? "mismatch" : null,
      text: (dev.model_label || "unknown") + (dev.version_mismatch ? " ⚠ differs" : "")});
    const lastText = last ? (last.status === "classified" ? `${last.decision === "refer" ? "refer · " : ""}${last.class} · ${fmtNum(last.score)}` : "not applicable") : "–";
    return el("article", {class: `device is-${state}`, "data-device": dev.key, "data-state": state},
      el("div", {class: "device-head"},
        el("div", {}, el("div", {class: "device-name", text: dev.device}), el("div", {class: "device-site", text: `site ${dev.site}`})),
        el("span", {class: `badge badge-${state}`, text: state})),
      el("dl", {},
        el("dt", {text: "Model"}), model,
        el("dt", {text: "Heartbeat"}), el("dd", {class: "heartbeat-age", "data-since": dev.last_heartbeat ?? "", text: fmtAge(age)}),
        el("dt", {text: "Throughput"}), el("dd", {text: `${dev.per_minute} / min · ${dev.results} total`}),
        el("dt", {text: "Latency p50/p95"}), el("dd", {text: `${fmtMs(latency.p50)} / ${fmtMs(latency.p95)}`}),
        el("dt", {text: "Device counters"}),
        el("dd", {text: `${counters.processed ?? "–"} processed · ${counters.rejected ?? "–"} rejected · ${counters.queued ?? "–"} queued`}),
        ...pacsLine(dev.pacs),
        ...fleetLine(dev.fleet),
        ...driftLine(dev.drift),
        el("dt", {text: "Last result"}), el("dd", {class: last && last.decision === "refer" ? "last-refer" : (last && last.positive ? "last-positive" : null), text: lastText}),
        el("dt", {text: "Findings"}), el("dd", {class: "findings", text: `${dev.positives} positive · ${dev.refers || 0} refer · ${plural(dev.errors, "error")}`}),
        dev.state === "offline" ? el("dt", {text: "Offline since"}) : null,
        dev.state === "offline" ? el("dd", {text: `${fmtTime(dev.state_since)} (${dev.reason || "no reason"})`}) : null));
  }));
}

// PACS delivery (edge/pacs), only for devices whose heartbeat carries pacs_* counters;
// the server decides `warning` (dashboard/state.py) so the page and `medge monitor` agree.
function pacsLine(pacs) {
  if (!pacs) return [];
  let text = `${pacs.delivered} delivered, ${pacs.queued} queued, ${pacs.refused} refused`;
  if (pacs.unwritable) text += `, ${pacs.unwritable} unwritable`;
  if (pacs.queued && pacs.last_event === "pacs_down") text += " · PACS down";
  return [el("dt", {text: "PACS"}),
    el("dd", {class: `pacs${pacs.warning ? " pacs-warning" : ""}`, "data-warning": pacs.warning ? "true" : "false", text})];
}

// Input drift (edge/drift.py) from the device's heartbeat: PSI of the recent window against the
// bundle's validation reference; the device decides `alert` (enough inputs, PSI past its level).
function driftLine(drift) {
  if (!drift) return [];
  const pct = (value) => (value === null || value === undefined) ? "–" : `${Math.round(value * 100)}%`;
  let text = drift.psi === null || drift.psi === undefined ? "no reference in the bundle" : `PSI ${fmtNum(drift.psi, 2)}`;
  text += ` · ${drift.window_n} inputs · OOD ${pct(drift.ood_rate)} · refer ${pct(drift.refer_rate)}`;
  if (drift.alert) text += " · DRIFT";
  else if (drift.min_window && drift.window_n < drift.min_window) text += ` (alerts from ${drift.min_window})`;
  return [el("dt", {text: "Input drift"}),
    el("dd", {class: `drift${drift.alert ? " drift-alert" : ""}`, "data-alert": drift.alert ? "true" : "false", text})];
}

// Fleet rollout (dashboard/fleet.py): the server decides on_target/failed so the page and
// `medge monitor` agree.
const modelText = (model) => model ? `${model.name} ${model.version}` : "–";
function shadowText(shadow) {
  if (!shadow) return "–";
  const agreement = shadow.agreement === null || shadow.agreement === undefined ? "" : ` · ${fmtNum(shadow.agreement)}`;
  return `${shadow.seen}/${shadow.target}${agreement}`;
}
function rolloutText(fleet) {
  let text = fleet.state.replace("_", " ");
  if (fleet.candidate && (fleet.in_progress || fleet.failed)) text += ` ${modelText(fleet.candidate)}`;
  if (fleet.state === "shadow" && fleet.shadow) text += ` (${shadowText(fleet.shadow)})`;
  return text;
}
function fleetLine(fleet) {
  if (!fleet) return [];
  const out = [el("dt", {text: "Rollout"}),
    el("dd", {class: `rollout rollout-${fleet.state}`, "data-state": fleet.state, text: rolloutText(fleet)})];
  if (fleet.on_target === false) out.push(el("dt", {text: "Site target"}),
    el("dd", {class: "off-target", text: `${modelText(fleet.target)} ⚠ not running`}));
  return out;
}
function renderFleet() {
  const devices = data.summary.devices.filter((dev) => dev.fleet);
  const targets = data.summary.targets || {};
  $("fleet").hidden = devices.length === 0 && Object.keys(targets).length === 0;
  // The operator's signed record, verified when the dashboard has the key (--fleet-key).
  const trust = data.summary.target_trust || {};
  $("fleet-targets").textContent = Object.entries(targets)
    .map(([site, model]) => `site ${site} target: ${modelText(model)} (${trust[site] || "unverified"})`).join(" · ");
  $("fleet-body").replaceChildren(...devices.map((dev) => {
    const fleet = dev.fleet;
    const target = fleet.on_target === null ? "–" : (fleet.on_target ? "✓ runs target" : `⚠ not ${modelText(fleet.target)}`);
    return el("tr", {"data-device": dev.key, "data-state": fleet.state,
      class: fleet.failed ? "rollout-failed" : (fleet.on_target === false ? "off-target-row" : null)},
      el("td", {text: dev.site}), el("td", {text: dev.device}),
      el("td", {class: "active-cell", text: modelText(fleet.active), title: fleet.active ? fleet.active.sha256 || "" : ""}),
      el("td", {class: "candidate-cell", text: modelText(fleet.candidate)}),
      el("td", {class: "state-cell", text: fleet.state.replace("_", " ")}),
      el("td", {class: "num shadow-cell", text: shadowText(fleet.shadow)}),
      el("td", {class: "reason-cell", text: fleet.reason || ""}),
      el("td", {class: "target-cell", text: target}));
  }));
}

function tickAges() {
  for (const node of document.querySelectorAll(".heartbeat-age")) {
    const since = parseFloat(node.dataset.since);
    node.textContent = fmtAge(Number.isNaN(since) ? null : Math.max(0, serverNow() - since));
  }
}

function fillSelect(select, values) {
  const current = select.value;
  const wanted = ["", ...values];
  const existing = [...select.options].map((option) => option.value);
  if (wanted.join("\u0000") === existing.join("\u0000")) return;
  select.replaceChildren(...wanted.map((value) => el("option", {value, text: value || "all"})));
  select.value = wanted.includes(current) ? current : "";
}
function renderFilters() {
  const unique = (key) => [...new Set(data.results.map((row) => row[key]).filter((v) => v))].sort();
  fillSelect($("filter-site"), unique("site"));
  fillSelect($("filter-device"), unique("device"));
  fillSelect($("filter-class"), unique("class"));
}

function renderResults() {
  const site = $("filter-site").value, device = $("filter-device").value, cls = $("filter-class").value;
  const positivesOnly = $("filter-positive").checked;
  const rows = data.results.filter((row) => (!site || row.site === site) && (!device || row.device === device)
    && (!cls || row.class === cls) && (!positivesOnly || (row.positive && row.decision !== "refer")));
  $("results-count").textContent = `${rows.length} of ${data.results.length} recent results`;
  $("results-body").replaceChildren(...rows.slice(-MAX_SHOWN).reverse().map((row) => {
    const classified = row.status === "classified";
    const refer = classified && row.decision === "refer";  // uncertain: its own colour, never a positive
    return el("tr", {class: refer ? "refer" : (row.positive ? "positive" : (classified ? null : "not-applicable")),
      "data-id": row.id, "data-decision": row.decision || null},
      el("td", {text: fmtTime(row.received), title: row.ts}),
      el("td", {text: row.site}), el("td", {text: row.device}), el("td", {text: row.source}),
      el("td", {class: "class-cell", text: refer ? `refer (${row.class})` : (classified ? row.class : `not applicable${row.reason ? ": " + row.reason : ""}`)}),
      el("td", {class: "num", text: fmtNum(row.score)}), el("td", {class: "num", text: fmtNum(row.threshold)}),
      el("td", {text: row.model}), el("td", {class: "num", text: fmtMs(row.total_ms)}));
  }));
}

function renderErrors() {
  $("errors-count").textContent = `${data.errors.length} recent`;
  $("errors-body").replaceChildren(...data.errors.slice(-MAX_SHOWN).reverse().map((row) => {
    const message = el("td", {class: "message-cell"}, row.message || "");
    if (row.invalid) message.append(el("br"), el("span", {class: "muted", text: `topic ${row.topic}: `}), el("code", {text: row.raw || ""}));
    return el("tr", {class: `level-${row.level}${row.invalid ? " invalid" : ""}`, "data-id": row.id},
      el("td", {text: fmtTime(row.received), title: row.ts || ""}), el("td", {text: row.site}), el("td", {text: row.device}),
      el("td", {class: "level-cell", text: row.level}), el("td", {text: row.invalid ? "invalid message" : row.kind}), message);
  }));
}

// ---- charts (plain canvas / SVG: the page works without internet) ----------------------------
function renderRateChart() {
  const canvas = $("rate-chart");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = canvas.clientHeight;
  canvas.width = width * ratio; canvas.height = height * ratio;
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  ctx.clearRect(0, 0, width, height);
  const minutes = data.summary.per_minute;
  const max = Math.max(1, ...minutes.map((m) => m.results));
  const left = 34, bottom = 22, top = 8, plotW = width - left - 8, plotH = height - top - bottom;
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#6b7686"; ctx.strokeStyle = "#e2e7ee";
  for (const fraction of [0, 0.5, 1]) {
    const y = top + plotH * (1 - fraction);
    ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(left + plotW, y); ctx.stroke();
    ctx.fillText(String(Math.round(max * fraction)), 4, y + 4);
  }
  const barW = plotW / minutes.length;
  minutes.forEach((m, i) => {
    const x = left + i * barW + 1;
    const total = (m.results / max) * plotH, positive = (m.positives / max) * plotH;
    ctx.fillStyle = "#5b8fc7"; ctx.fillRect(x, top + plotH - total, barW - 2, total - positive);
    ctx.fillStyle = "#d14343"; ctx.fillRect(x, top + plotH - positive, barW - 2, positive);
    if (i % 10 === 0 || i === minutes.length - 1) {
      ctx.fillStyle = "#6b7686";
      ctx.fillText(new Date(m.minute * 1000).toLocaleTimeString([], {hour: "2-digit", minute: "2-digit", hour12: false}), x, height - 6);
    }
  });
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}
function renderScoreCharts() {
  const devices = data.summary.devices.filter((dev) => dev.score_bins.some((n) => n > 0));
  const box = $("score-charts");
  if (!devices.length) return;
  box.replaceChildren(...devices.map((dev) => {
    const bins = dev.score_bins, max = Math.max(1, ...bins);
    const chart = svg("svg", {viewBox: "0 0 200 90", preserveAspectRatio: "none", role: "img",
      "aria-label": `score distribution of ${dev.key}`});
    bins.forEach((n, i) => {
      const h = (n / max) * 76;
      chart.append(svg("rect", {x: i * 20 + 1, y: 82 - h, width: 18, height: h,
        fill: dev.threshold !== null && (i + 1) / bins.length > dev.threshold ? "#d14343" : "#5b8fc7"}));
    });
    chart.append(svg("line", {x1: 0, y1: 82, x2: 200, y2: 82, stroke: "#c4ccd6"}));
    if (dev.threshold !== null) {
      const x = dev.threshold * 200;
      chart.append(svg("line", {x1: x, y1: 2, x2: x, y2: 82, stroke: "#1c2430", "stroke-dasharray": "4 3"}));
    }
    return el("figure", {class: "score-chart"}, chart,
      el("figcaption", {text: `${dev.key} · ${dev.results} results · 0 → 1`}));
  }));
}

document.addEventListener("DOMContentLoaded", () => {
  for (const id of ["filter-site", "filter-device", "filter-class", "filter-positive"]) $(id).addEventListener("change", renderResults);
  $("dismiss-all").addEventListener("click", () => dismiss(data.alerts.map((alert) => alert.id)));
  window.addEventListener("resize", scheduleRender);
  setupNotifications();
  setInterval(tickAges, 1000);
  connect();
});
