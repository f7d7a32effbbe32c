// The operator's dashboard: polls the admin API with the token the operator gave (typed in,
// or in the address's fragment `#token=…`, which never reaches a server or a log), keeps it
// in this page's memory only, and draws what the API answers. Every number shown carries
// its exact value (atomic units) in a data-value attribute.
"use strict";

const EVERY_MS = 2000;
let token = null;
let decimals = 6;
let timer = null;

const $ = (id) => document.getElementById(id);

function takeTokenFromFragment() {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    token = decodeURIComponent(m[1]);
    // Out of the address bar and the history entry.
    history.replaceState(null, "", location.pathname + location.search);
  }
}

async function api(path) {
  const r = await fetch("/api" + path, {
    headers: { Authorization: "Bearer " + token },
    cache: "no-store",
    credentials: "omit",
  });
  if (r.status === 401) throw new Error("unauthorized");
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

// Atomic units (a decimal string) as a token amount, exact (BigInt), grouped.
function fmt(atomic) {
  if (atomic === null || atomic === undefined) return "–";
  const v = BigInt(atomic);
  const unit = 10n ** BigInt(decimals);
  const whole = (v / unit).toLocaleString("en-US");
  let frac = (v % unit).toString().padStart(decimals, "0").replace(/0+$/, "");
  if (frac.length < 2) frac = frac.padEnd(2, "0");
  return decimals === 0 ? whole : whole + "." + frac;
}

function setValue(id, value, text) {
  const el = $(id);
  el.dataset.value = value === null || value === undefined ? "" : String(value);
  el.textContent = text;
}

function short(hex) {
  return hex ? hex.slice(0, 8) + "…" + hex.slice(-4) : "";
}

function when(unix) {
  if (!unix) return "–";
  return new Date(unix * 1000).toISOString().replace("T", " ").slice(0, 19);
}

function duration(secs) {
  const s = Math.abs(secs);
  const text = s >= 86400 ? Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h"
    : s >= 3600 ? Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min"
    : s >= 60 ? Math.floor(s / 60) + " min " + (s % 60) + " s" : s + " s";
  return secs < 0 ? "passed " + text + " ago" : text;
}

function cell(row, text, opts = {}) {
  const td = document.createElement("td");
  td.textContent = text;
  if (opts.num) td.className = "num";
  if (opts.mono) td.classList.add("mono");
  if (opts.field) td.dataset.field = opts.field;
  if (opts.value !== undefined && opts.value !== null) td.dataset.value = String(opts.value);
  if (opts.title) td.title = opts.title;
  row.appendChild(td);
  return td;
}

function fill(tableId, rows, columns, draw) {
  const body = $(tableId).tBodies[0];
  body.replaceChildren();
  if (rows.length === 0) {
    const tr = body.insertRow();
    const td = cell(tr, "none");
    td.colSpan = columns;
    td.className = "empty";
    return;
  }
  for (const r of rows) draw(body.insertRow(), r);
}

function bar(row, fraction, extra) {
  const td = document.createElement("td");
  const b = document.createElement("div");
  b.className = "bar" + (extra ? " " + extra : "");
  b.style.width = Math.max(1, Math.round(120 * fraction)) + "px";
  td.appendChild(b);
  row.appendChild(td);
}

function drawTotals(t) {
  decimals = t.decimals;
  $("unit").textContent = "amounts in " + t.asset_name + " (" + t.decimals + " decimals), token " + t.token;
  const rev = t.revenue || {};
  setValue("revenue-claimed", rev.claimed, fmt(rev.claimed));
  setValue("revenue-swept", rev.swept, fmt(rev.swept));
  setValue("revenue-unswept", rev.unswept, fmt(rev.unswept));
  setValue("unclaimed", t.unclaimed, fmt(t.unclaimed));
  setValue("at-risk", t.unclaimed_at_risk, fmt(t.unclaimed_at_risk));
  setValue("charged", t.charged, fmt(t.charged));
  setValue("balance", t.balance, fmt(t.balance));
  setValue("channels-count", t.channels, String(t.channels));
  setValue("paid-requests", t.paid_requests, t.paid_requests === null ? "–" : t.paid_requests.toLocaleString("en-US"));
  setValue("settler", t.settler, t.settler ? "this instance" : "another instance");
  setValue("blocked-count", t.blocked_payers, String(t.blocked_payers));
  const note = t.withdrawals_pending === 0
    ? "No withdrawal is pending: the exposure below is not under a deadline."
    : t.withdrawals_pending + " channel(s) withdrawing; what stays unclaimed past the deadline is lost.";
  $("deadlines-note").textContent = note;
  fill("deadlines", t.nearest_deadlines, 5, (tr, c) => {
    tr.dataset.channelId = c.channel_id;
    cell(tr, short(c.channel_id), { mono: true, title: c.channel_id });
    cell(tr, short(c.payer), { mono: true, title: c.payer });
    cell(tr, fmt(c.unclaimed), { num: true, field: "unclaimed", value: c.unclaimed });
    cell(tr, when(c.withdrawal.deadline), { field: "deadline", value: c.withdrawal.deadline });
    cell(tr, duration(c.withdrawal.seconds_left), { num: true });
  });
  const top = t.largest_unclaimed.length ? BigInt(t.largest_unclaimed[0].unclaimed) : 1n;
  fill("largest", t.largest_unclaimed, 4, (tr, c) => {
    tr.dataset.channelId = c.channel_id;
    cell(tr, short(c.channel_id), { mono: true, title: c.channel_id });
    cell(tr, short(c.payer), { mono: true, title: c.payer });
    cell(tr, fmt(c.unclaimed), { num: true, field: "unclaimed", value: c.unclaimed });
    bar(tr, top > 0n ? Number((BigInt(c.unclaimed) * 1000n) / top) / 1000 : 0);
  });
}

function svg(tag, attrs) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

function drawChart(samples) {
  const chart = $("revenue-chart");
  chart.replaceChildren();
  chart.dataset.samples = String(samples.length);
  const W = 1200, H = 240, L = 80, R = 10, T = 10, B = 24;
  chart.appendChild(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }));
  chart.appendChild(svg("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }));
  if (samples.length === 0) {
    const t = svg("text", { x: L + 10, y: H / 2 });
    t.textContent = "no samples yet";
    chart.appendChild(t);
    return;
  }
  const t0 = samples[0].at, t1 = Math.max(samples[samples.length - 1].at, t0 + 1);
  let max = 1n;
  for (const s of samples) if (BigInt(s.earned) > max) max = BigInt(s.earned);
  const last = samples[samples.length - 1];
  for (const key of ["earned", "claimed", "swept", "unclaimed"]) chart.dataset["last" + key[0].toUpperCase() + key.slice(1)] = last[key];
  const x = (at) => L + ((at - t0) / (t1 - t0)) * (W - L - R);
  const y = (v) => H - B - Number((BigInt(v) * 10000n) / max) / 10000 * (H - T - B);
  for (const key of ["earned", "claimed", "swept", "unclaimed"]) {
    const points = samples.map((s) => x(s.at).toFixed(1) + "," + y(s[key]).toFixed(1)).join(" ");
    chart.appendChild(svg("polyline", { points, class: key }));
  }
  const label = (text, attrs) => { const t = svg("text", attrs); t.textContent = text; chart.appendChild(t); };
  label(fmt(max.toString()), { x: 4, y: T + 10 });
  label("0", { x: 4, y: H - B });
  label(when(t0).slice(11), { x: L, y: H - 6 });
  label(when(t1).slice(11), { x: W - R - 56, y: H - 6 });
}

function drawActivity(a) {
  drawChart(a.samples);
  fill("claims", a.claims, 9, (tr, c) => {
    tr.dataset.tx = c.tx_hash;
    cell(tr, when(c.at));
    cell(tr, String(c.batch), { field: "batch", value: c.batch });
    cell(tr, short(c.tx_hash), { mono: true, title: c.tx_hash });
    cell(tr, String(c.rows), { num: true, field: "rows", value: c.rows });
    cell(tr, fmt(c.amount), { num: true, field: "amount", value: c.amount });
    cell(tr, c.gas_used === null ? "–" : c.gas_used.toLocaleString("en-US"), { num: true, field: "gas", value: c.gas_used });
    cell(tr, c.fee_wei === null ? "–" : (Number(BigInt(c.fee_wei) / 1000n) / 1e6).toFixed(3), { num: true, field: "fee", value: c.fee_wei });
    cell(tr, c.paid_requests === null ? "–" : String(c.paid_requests), { num: true, field: "paid-requests", value: c.paid_requests });
    cell(tr, c.gas_per_paid_request === null ? "–" : c.gas_per_paid_request.toLocaleString("en-US"), { num: true, field: "gas-per-paid-request", value: c.gas_per_paid_request });
  });
  const most = a.rejections.length ? a.rejections[0].count : 1;
  fill("rejections", a.rejections, 3, (tr, r) => {
    tr.dataset.reason = r.reason;
    cell(tr, r.reason.replace("invalid_batch_settlement_evm_", ""), { title: r.reason });
    cell(tr, String(r.count), { num: true, field: "count", value: r.count });
    bar(tr, r.count / most, "reject");
  });
}

function drawChannels(page) {
  $("channels-page").textContent = page.channels.length + " of " + page.total + ", most unclaimed first";
  $("channels").dataset.total = String(page.total);
  fill("channels", page.channels, 9, (tr, c) => {
    tr.dataset.channelId = c.channel_id;
    cell(tr, short(c.channel_id), { mono: true, title: c.channel_id });
    cell(tr, short(c.payer), { mono: true, title: c.payer, field: "payer", value: c.payer });
    cell(tr, fmt(c.balance), { num: true, field: "balance", value: c.balance });
    cell(tr, fmt(c.charged), { num: true, field: "charged", value: c.charged });
    cell(tr, fmt(c.claimed), { num: true, field: "claimed", value: c.claimed });
    cell(tr, fmt(c.unclaimed), { num: true, field: "unclaimed", value: c.unclaimed });
    cell(tr, when(c.last_voucher_at), { field: "last-voucher", value: c.last_voucher_at });
    const w = cell(tr, "", { field: "withdrawal", value: c.withdrawal.state });
    const tag = document.createElement("span");
    tag.className = "tag " + c.withdrawal.state;
    tag.textContent = c.withdrawal.state === "none" ? "–" : c.withdrawal.state + " · " + duration(c.withdrawal.seconds_left);
    w.appendChild(tag);
    const b = cell(tr, "");
    if (c.blocked) {
      const t = document.createElement("span");
      t.className = "tag blocked";
      t.textContent = "blocked";
      b.appendChild(t);
    }
  });
}

async function refresh() {
  try {
    const [totals, activity, channels] = await Promise.all([
      api("/totals"), api("/activity"), api("/channels?limit=50"),
    ]);
    drawTotals(totals);
    drawActivity(activity);
    drawChannels(channels);
    $("main").hidden = false;
    document.body.dataset.state = "live";
    $("status").textContent = "live";
    const now = new Date();
    $("refreshed").textContent = "refreshed " + now.toISOString().replace("T", " ").slice(0, 19) + " UTC, every " + EVERY_MS / 1000 + " s";
    document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
  } catch (e) {
    document.body.dataset.state = "error";
    $("status").textContent = e.message === "unauthorized" ? "wrong token" : "error: " + e.message;
    if (e.message === "unauthorized") stop();
  }
}

function stop() {
  if (timer) clearInterval(timer);
  timer = null;
}

function start() {
  stop();
  refresh();
  timer = setInterval(refresh, EVERY_MS);
}

$("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = $("token").value.trim();
  $("token").value = "";
  if (token) start();
});

takeTokenFromFragment();
if (token) start();
