// edgeproxy's live status page: polls the admin API's JSON once a second and renders it.
// Every value goes into the page as text (textContent), never as markup: route names, URLs
// and config values come from a config file and must not become HTML.
"use strict";

const POLL_MS = 1000;
const WINDOW_S = 10;          // rates and percentiles over this many seconds of polls
const samples = [];           // [{time, routes}] from /stats, oldest first
let token = sessionStorage.getItem("edgeproxy-admin-token") || "";

async function get(path) {
  const headers = token ? {Authorization: "Bearer " + token} : {};
  const resp = await fetch(path, {headers, cache: "no-store"});
  if (resp.status === 401) {
    document.getElementById("login").hidden = false;
    throw new Error("the admin API needs a token");
  }
  if (!resp.ok) throw new Error(path + ": HTTP " + resp.status);
  return resp.json();
}

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function badge(text) {
  return el("span", text, "badge " + text);
}

function fill(tableId, rows) {
  const body = document.querySelector("#" + tableId + " tbody");
  body.replaceChildren(...rows);
}

function row(cells, attrs) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    if (c instanceof Node) {
      const td = el("td");
      td.appendChild(c);
      tr.appendChild(td);
    } else if (typeof c === "number") {
      tr.appendChild(el("td", c.toLocaleString("en"), "num"));
    } else {
      tr.appendChild(el("td", c === null || c === undefined ? "–" : c));
    }
  }
  for (const [k, v] of Object.entries(attrs || {})) tr.setAttribute(k, v);
  return tr;
}

// The q-quantile of a histogram (counts per bucket of ``bounds``, then +Inf), interpolated
// linearly inside its bucket as Prometheus' histogram_quantile does; in milliseconds.
function quantile(q, bounds, counts) {
  const total = counts.reduce((a, b) => a + b, 0);
  if (!total) return null;
  const rank = q * total;
  let seen = 0;
  for (let i = 0; i < counts.length; i++) {
    if (seen + counts[i] >= rank && counts[i] > 0) {
      if (i >= bounds.length) return bounds[bounds.length - 1] * 1000;  // past the last bound
      const lo = i === 0 ? 0 : bounds[i - 1];
      return (lo + (bounds[i] - lo) * ((rank - seen) / counts[i])) * 1000;
    }
    seen += counts[i];
  }
  return bounds[bounds.length - 1] * 1000;
}

function ms(v) {
  return v === null ? "–" : v < 10 ? v.toFixed(2) : v.toFixed(0);
}

function renderRoutes(stats) {
  samples.push(stats);
  while (samples.length > 1 && stats.time - samples[0].time > WINDOW_S) samples.shift();
  const old = samples[0];
  const dt = stats.time - old.time;
  const rows = [];
  for (const [name, r] of Object.entries(stats.routes)) {
    if (!name && !r.requests) continue;  // "no route matched" only once it happened
    const before = old.routes[name];
    const delta = (k) => r.status[k] - (before ? before.status[k] : 0);
    const n = r.requests - (before ? before.requests : 0);
    const hist = r.duration.map((c, i) => c - (before ? before.duration[i] : 0));
    const share = (k) => (n ? Math.round(100 * delta(k) / n) + "%" : "–");
    rows.push(row([
      name || "(no route)", dt > 0 ? (n / dt).toFixed(1) : "–",
      share("2xx"), share("3xx"), share("4xx"), share("5xx"),
      ms(quantile(0.5, stats.buckets, hist)), ms(quantile(0.9, stats.buckets, hist)),
      ms(quantile(0.99, stats.buckets, hist)), r.requests,
    ], {"data-route": name}));
  }
  fill("routes", rows);
  document.getElementById("window").textContent = Math.max(1, Math.round(dt));
  fill("events", stats.events.map((e) => row([e.family, e.route, e.event, e.count])));
}

function health(server, serving) {
  if (server.down) return "disabled";
  if (server.available_in_workers === 0) return "down";
  return server.available_in_workers < serving ? "partial" : "up";
}

function renderUpstreams(ups, serving) {
  const rows = [];
  for (const up of ups.upstreams) {
    for (const s of up.servers) {
      const state = health(s, serving);
      rows.push(row([
        up.name + (up.circuit !== "closed" ? " (circuit " + up.circuit + ")" : ""),
        s.url + (s.backup ? " (backup)" : ""), s.weight, badge(state), badge(s.circuit),
        s.active, s.idle, s.requests, s.failures,
      ], {"data-server": up.name + " " + s.url, "data-health": state}));
    }
  }
  fill("servers", rows);
}

function utc(t) {
  return new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19);
}

function renderStatus(st) {
  const serving = st.workers.filter((w) => w.state === "serving").length;
  const listen = st.listeners.map((l) => l.address).join(", ");
  document.getElementById("summary").textContent =
    `edgeproxy ${st.version} · pid ${st.pid} · up ${Math.round(st.uptime_seconds)} s · generation ` +
    `${st.generation} · ${serving} worker(s) · ${listen}`;
  fill("workers", st.workers.map((w) => row(
    [String(w.pid), badge(w.state), w.generation, w.connections, w.requests])));
  const reloads = (st.recent_reloads || []).map((r) => row([
    utc(r.time), r.trigger, badge(r.result), r.generation, r.duration_ms,
    r.errors.map((e) => (e.path ? e.path + ": " : "") + e.message).join("; ") || "",
  ]));
  fill("reloads", reloads.length ? reloads : [row(["none since start"])]);
  return serving;
}

async function poll() {
  const live = document.getElementById("live");
  try {
    const [st, ups, stats] = await Promise.all([get("/status"), get("/upstreams"),
                                                get("/stats")]);
    const serving = renderStatus(st);
    renderUpstreams(ups, serving);
    renderRoutes(stats);
    if (st.generation !== poll.generation) {
      poll.generation = st.generation;
      const cfg = await get("/config");
      document.getElementById("config").textContent = JSON.stringify(cfg.config, null, 2);
    }
    live.textContent = "live " + utc(stats.time).slice(11);
    live.className = "badge live";
  } catch (err) {
    live.textContent = "not updating: " + err.message;
    live.className = "badge stale";
  }
  setTimeout(poll, POLL_MS);
}

document.getElementById("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = document.getElementById("token").value;
  sessionStorage.setItem("edgeproxy-admin-token", token);
  document.getElementById("login").hidden = true;
  poll.generation = undefined;
});

poll();
