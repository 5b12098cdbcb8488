// Tern's dashboard: polls the admin API with the bearer token and draws what it answers.
// No framework and no build step. The token comes from the URL fragment (#token=...) or the
// form, and is kept in sessionStorage (this tab only); the fragment is then removed from the URL.
"use strict";

const POLL_MS = 2000;
const HISTORY = 150; // points kept per chart (5 minutes at 2 s)
const KEY = "tern-admin-token";

const $ = (id) => document.getElementById(id);
const points = { t: [], connections: [], rateIn: [], rateOut: [] };
let previous = null; // the last stats, for rates
let timer = null;
let generation = 0; // bumped by every poll: only the latest schedules the next one

function token() { return sessionStorage.getItem(KEY); }

function takeTokenFromFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const given = params.get("token");
  if (given) {
    sessionStorage.setItem(KEY, given);
    window.history.replaceState(null, "", location.pathname + location.search);
    if (!location.hash) document.body.dataset.fragmentCleared = "true";
  }
}

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { "Authorization": "Bearer " + token(), "Content-Type": "application/json" },
  });
  if (response.status === 401) throw new Unauthorized("the token was refused");
  if (response.status === 204) return null;
  const body = await response.json().catch(() => null);
  if (!response.ok && !(path.endsWith("/ready") && body)) {
    throw new Error((body && body.error) || response.status + " " + response.statusText);
  }
  return body;
}

function showLogin(message) {
  clearTimeout(timer);
  sessionStorage.removeItem(KEY);
  $("main").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("status").textContent = "locked";
  $("status").className = "pill";
  $("token-input").focus();
}

function showMain() {
  $("login").hidden = true;
  $("main").hidden = false;
  $("logout").hidden = false;
}

function text(element, value) { element.textContent = value; }

function cell(row, value, className) {
  const td = document.createElement("td");
  td.textContent = value === null || value === undefined ? "–" : String(value);
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function duration(seconds) {
  const d = Math.floor(seconds / 86400), h = Math.floor(seconds / 3600) % 24;
  const m = Math.floor(seconds / 60) % 60, s = seconds % 60;
  if (d) return d + "d " + h + "h";
  if (h) return h + "h " + m + "m";
  if (m) return m + "m " + s + "s";
  return s + "s";
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function rate(value) { return value < 10 ? value.toFixed(1) : Math.round(value).toString(); }

function renderStats(stats, now) {
  text($("version"), "v" + stats.version);
  text($("stat-connections"), stats.connections);
  text($("stat-offline"), stats.sessions_offline);
  text($("stat-subscriptions"), stats.subscriptions);
  text($("stat-dropped"), stats.messages_dropped);
  text($("stat-auth-failures"), stats.auth_failures);
  text($("stat-uptime"), duration(stats.uptime_s));
  let rateIn = 0, rateOut = 0;
  const first = previous === null; // no rate yet: a rate needs two polls
  if (previous) {
    const seconds = Math.max((now - previous.at) / 1000, 0.001);
    rateIn = Math.max(stats.messages_received - previous.stats.messages_received, 0) / seconds;
    rateOut = Math.max(stats.messages_sent - previous.stats.messages_sent, 0) / seconds;
  }
  previous = { at: now, stats };
  text($("stat-rate-in"), rate(rateIn));
  text($("stat-rate-out"), rate(rateOut));
  const samples = [["t", now], ["connections", stats.connections]];
  if (!first) samples.push(["rateIn", rateIn], ["rateOut", rateOut]);
  for (const [name, value] of samples) {
    points[name].push(value);
    if (points[name].length > HISTORY) points[name].shift();
  }
  drawChart($("chart-connections"), [{ values: points.connections, color: "--accent" }]);
  drawChart($("chart-rates"), [{ values: points.rateIn, color: "--in" }, { values: points.rateOut, color: "--out" }]);

  const store = $("store");
  store.replaceChildren();
  const facts = [
    ["State", stats.store_accepting ? "accepting" : "refusing new durable work"],
    ["Size on disk", bytes(stats.store_bytes)],
    ["Retained messages", stats.retained_messages + " (" + bytes(stats.retained_bytes) + ")"],
    ["Queued messages", stats.queued_messages],
    ["In flight", stats.inflight_messages],
    ["Received", stats.messages_received + " messages, " + bytes(stats.bytes_received)],
    ["Sent", stats.messages_sent + " messages, " + bytes(stats.bytes_sent)],
  ];
  for (const [term, value] of facts) {
    const dt = document.createElement("dt"); dt.textContent = term;
    const dd = document.createElement("dd"); dd.textContent = value;
    if (term === "State") dd.id = "store-state";
    store.append(dt, dd);
  }
}

// A line chart on a canvas: the series over the kept history, a grid, the latest values.
function drawChart(canvas, series) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || canvas.width, height = canvas.clientHeight || canvas.height;
  if (canvas.width !== Math.round(width * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const g = canvas.getContext("2d");
  const style = getComputedStyle(document.documentElement);
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  const pad = { left: 44, right: 8, top: 8, bottom: 18 };
  const plotW = width - pad.left - pad.right, plotH = height - pad.top - pad.bottom;
  let max = 1;
  for (const s of series) for (const v of s.values) max = Math.max(max, v);
  max = niceCeiling(max);
  g.font = "11px system-ui, sans-serif";
  g.fillStyle = style.getPropertyValue("--muted");
  g.strokeStyle = style.getPropertyValue("--line");
  g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = pad.top + plotH - (plotH * i) / 4;
    g.beginPath(); g.moveTo(pad.left, y + 0.5); g.lineTo(pad.left + plotW, y + 0.5); g.stroke();
    const label = (max * i) / 4;
    g.fillText(label >= 10 ? Math.round(label).toString() : String(Number(label.toFixed(2))), 4, y + 4);
  }
  g.fillText((HISTORY * POLL_MS) / 60000 + " min", pad.left, height - 4);
  for (const s of series) {
    const n = s.values.length;
    if (n === 0) continue;
    g.strokeStyle = style.getPropertyValue(s.color);
    g.lineWidth = 2;
    g.beginPath();
    s.values.forEach((v, i) => {
      const x = pad.left + plotW - ((n - 1 - i) * plotW) / (HISTORY - 1);
      const y = pad.top + plotH - (v / max) * plotH;
      if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
    });
    g.stroke();
    if (n === 1) { // one poll so far: a dot, not an invisible line
      g.fillStyle = g.strokeStyle;
      g.beginPath();
      g.arc(pad.left + plotW, pad.top + plotH - (s.values[0] / max) * plotH, 2.5, 0, 2 * Math.PI);
      g.fill();
    }
  }
}

function niceCeiling(value) {
  const power = Math.pow(10, Math.floor(Math.log10(value)));
  for (const step of [1, 2, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

function renderClients(clients, more, connections) {
  const body = $("clients").tBodies[0];
  body.replaceChildren();
  for (const c of clients) {
    const row = document.createElement("tr");
    row.dataset.clientId = c.client_id;
    cell(row, c.client_id, "client-id");
    cell(row, c.username);
    cell(row, c.peer);
    cell(row, c.protocol);
    cell(row, new Date(c.connected_at * 1000).toLocaleString());
    cell(row, c.subscriptions, "num");
    cell(row, c.queued, "num");
    cell(row, c.inflight, "num");
    const action = cell(row, "");
    const kick = document.createElement("button");
    kick.type = "button";
    kick.className = "danger";
    kick.textContent = "Kick";
    kick.addEventListener("click", () => kickClient(c.client_id, kick));
    action.appendChild(kick);
    body.appendChild(row);
  }
  text($("clients-count"), more
    ? "(the first " + clients.length + " of " + connections + ")"
    : "(" + clients.length + ")");
  $("clients-empty").hidden = clients.length !== 0;
}

// The id is shown as a JSON string: quoted, with newlines, other controls and the
// bidirectional overrides escaped, so a client id cannot make the dialog say something else. (Ids "." and ".." cannot be kicked
// from here, fetch normalises them as path segments: use `tern ctl kick`.)
async function kickClient(id, button) {
  const shown = JSON.stringify(id).replace(/[\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g,
    (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"));
  if (!window.confirm("Disconnect the client " + shown + "?")) return;
  button.disabled = true;
  try {
    await api("/api/v1/clients/" + encodeURIComponent(id), { method: "DELETE" });
  } catch (error) {
    button.disabled = false;
    failed(error);
    return;
  }
  await poll();
}

async function loadRetained() {
  const filter = $("retained-filter").value || "#";
  const page = await api("/api/v1/retained?limit=200&filter=" + encodeURIComponent(filter));
  const body = $("retained").tBodies[0];
  body.replaceChildren();
  for (const m of page.items) {
    const row = document.createElement("tr");
    row.dataset.topic = m.topic;
    cell(row, m.topic, "topic");
    cell(row, m.qos, "num");
    cell(row, m.payload_bytes, "num");
    row.addEventListener("click", () => showRetained(m.topic, row));
    body.appendChild(row);
  }
  text($("retained-note"), page.items.length === 0 ? "No retained message matches."
    : page.next_after ? "The first " + page.items.length + " topics." : "");
}

async function showRetained(topic, row) {
  for (const other of $("retained").tBodies[0].rows) other.classList.remove("chosen");
  row.classList.add("chosen");
  try {
    const m = await api("/api/v1/retained/message?topic=" + encodeURIComponent(topic));
    const lines = ["topic: " + m.topic, "qos: " + m.qos];
    if (m.content_type) lines.push("content type: " + m.content_type);
    if (m.expires_in_s !== null) lines.push("expires in: " + duration(m.expires_in_s));
    lines.push("", m.payload !== null ? m.payload : "(binary, base64) " + m.payload_base64);
    $("retained-message").textContent = lines.join("\n");
    $("retained-message").className = "";
  } catch (error) { failed(error); }
}

function failed(error) {
  if (error instanceof Unauthorized) { showLogin("The token was refused."); return; }
  $("status").textContent = "unreachable";
  $("status").className = "pill bad";
  text($("error"), String(error.message || error));
}

// Every poll schedules the next, unless a newer one started meanwhile (a kick polls at
// once): one poll loop, never none, never two.
async function poll() {
  clearTimeout(timer);
  const mine = ++generation;
  try {
    const [stats, clients, ready] = await Promise.all([
      api("/api/v1/stats"),
      api("/api/v1/clients?limit=1000"),
      api("/api/v1/ready"),
    ]);
    if (mine !== generation) return; // a newer poll is drawing
    renderStats(stats, Date.now());
    renderClients(clients.items, clients.next_after !== null && clients.next_after !== undefined, stats.connections);
    $("status").textContent = ready.ready ? "ready" : "not ready: " + ready.reasons.join(", ");
    $("status").className = "pill " + (ready.ready ? "ok" : "bad");
    text($("error"), "");
    document.body.dataset.loaded = "true";
  } catch (error) {
    if (mine !== generation) return;
    failed(error);
    if (error instanceof Unauthorized) return;
  }
  if (mine === generation) timer = setTimeout(poll, POLL_MS);
}

async function start() {
  showMain();
  try { await loadRetained(); } catch (error) { failed(error); if (error instanceof Unauthorized) return; }
  await poll();
}

document.addEventListener("DOMContentLoaded", () => {
  takeTokenFromFragment();
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $("token-input").value.trim());
    $("token-input").value = "";
    start();
  });
  $("retained-form").addEventListener("submit", (event) => {
    event.preventDefault();
    loadRetained().catch(failed);
  });
  $("logout").addEventListener("click", () => showLogin(""));
  if (token()) start(); else showLogin("");
});
