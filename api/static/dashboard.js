// pricepipe dashboard: one panel per symbol with its price line, the 52-week
// high/low band behind it, its logo and last price. Recent history comes from
// the HTTP API; live ticks from the websocket server, resumed from the last
// entry ID the history returned so nothing falls between the two.
//
// Websocket URL, first match wins: ?ws=<url> in the page address, the API's
// PRICEPIPE_API_WS_URL (served as /config.js), ws(s)://<this host>/ws.
"use strict";

(function () {
  const params = new URLSearchParams(location.search);
  const config = window.PRICEPIPE_CONFIG || {};
  const HISTORY_MINUTES = Number(params.get("minutes")) || 10;
  const MAX_POINTS = 20000;          // per symbol; older points scroll away
  const HISTORY_PAGE = 5000;
  const DEFAULT_SYMBOLS = 6;

  const $ = (id) => document.getElementById(id);
  const panels = new Map();          // symbol -> panel state
  let allSymbols = [];               // from /v1/symbols
  let socket = null;
  let reconnectDelayMs = 500;
  let received = 0;

  function wsUrl() {
    let url = params.get("ws") || config.wsUrl ||
      `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
    const token = params.get("token");
    if (token) url += (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
    return url;
  }

  function setStatus(state, text) {
    const el = $("status");
    el.dataset.state = state;
    el.textContent = text;
  }

  function showMessage(text) {
    const el = $("message");
    el.hidden = !text;
    el.textContent = text || "";
  }

  // Entry IDs "ms-seq" compare numerically, part by part.
  function idAfter(a, b) {
    if (!b) return true;
    const [am, as] = a.split("-").map(Number);
    const [bm, bs] = b.split("-").map(Number);
    return am > bm || (am === bm && as > bs);
  }

  async function getJson(url) {
    const resp = await fetch(url, { headers: { Accept: "application/json" } });
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) throw new Error(body.error || `${resp.status} ${resp.statusText}`);
    return body;
  }

  function formatPrice(price) {
    return price >= 1000 ? price.toFixed(2) : price >= 1 ? price.toFixed(3) : price.toPrecision(4);
  }

  // --- panels ---------------------------------------------------------------------------------

  function makePanel(info) {
    const node = $("panel-template").content.firstElementChild.cloneNode(true);
    node.dataset.symbol = info.symbol;
    node.querySelector(".symbol").textContent = info.symbol;
    node.querySelector(".name").textContent = info.name || "";
    if (info.logo_url) {
      const img = node.querySelector(".logo");
      img.onload = () => { img.hidden = false; };
      img.onerror = () => { img.hidden = true; };
      img.src = info.logo_url;
    }
    const hasBand = info.week52_high != null && info.week52_low != null;
    node.querySelector(".band-note").textContent = hasBand
      ? `52-week range ${formatPrice(info.week52_low)} – ${formatPrice(info.week52_high)}`
      : "";
    $("panels").appendChild(node);
    const chartEl = node.querySelector(".chart");
    const series = [{}, { label: info.symbol, stroke: "#2563eb", width: 1.5, points: { show: false } }];
    const opts = {
      width: Math.max(chartEl.clientWidth, 300), height: 220,
      legend: { show: false }, cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true } }, series,
      axes: [{}, { size: 60 }],
    };
    if (hasBand) {
      series.push({ label: "52w high", stroke: "#94a3b8", dash: [4, 4], width: 1, points: { show: false } },
                  { label: "52w low", stroke: "#94a3b8", dash: [4, 4], width: 1, points: { show: false } });
      opts.bands = [{ series: [2, 3], fill: "rgba(148,163,184,0.15)" }];
    }
    const panel = {
      info, node, hasBand, xs: [], ys: [], lastId: null, lastPrice: null, dirty: false,
      plot: null, ready: false,   // ready: history loaded, live ticks may follow
    };
    panel.plot = new uPlot(opts, chartData(panel), chartEl);
    panels.set(info.symbol, panel);
    return panel;
  }

  function chartData(panel) {
    const data = [panel.xs, panel.ys];
    if (panel.hasBand) {
      data.push(panel.xs.map(() => panel.info.week52_high),
                panel.xs.map(() => panel.info.week52_low));
    }
    return data;
  }

  function addTicks(panel, ticks) {
    let added = 0;
    for (const t of ticks) {
      if (!idAfter(t.id, panel.lastId)) continue;   // replayed or duplicate
      panel.xs.push(t.ts_us / 1e6);
      panel.ys.push(t.price);
      panel.lastId = t.id;
      added += 1;
    }
    if (!added) return 0;
    if (panel.xs.length > MAX_POINTS) {
      panel.xs.splice(0, panel.xs.length - MAX_POINTS);
      panel.ys.splice(0, panel.ys.length - MAX_POINTS);
    }
    const price = panel.ys[panel.ys.length - 1];
    const el = panel.node.querySelector(".last-price");
    el.classList.toggle("up", panel.lastPrice != null && price > panel.lastPrice);
    el.classList.toggle("down", panel.lastPrice != null && price < panel.lastPrice);
    el.textContent = formatPrice(price);
    el.dataset.price = String(price);
    panel.node.dataset.points = String(panel.xs.length);
    panel.lastPrice = price;
    if (!panel.dirty) {
      panel.dirty = true;
      requestAnimationFrame(() => { panel.dirty = false; panel.plot.setData(chartData(panel)); });
    }
    return added;
  }

  async function loadHistory(panel) {
    const start = Date.now() * 1000 - HISTORY_MINUTES * 60e6;
    let cursor = null;
    for (let page = 0; page < 4; page += 1) {
      const q = new URLSearchParams({ start: String(start), limit: String(HISTORY_PAGE) });
      if (cursor) q.set("cursor", cursor);
      const body = await getJson(`/v1/ticks/${encodeURIComponent(panel.info.symbol)}?${q}`);
      addTicks(panel, body.ticks);
      cursor = body.next_cursor;
      if (!cursor) break;
    }
    if (panel.lastPrice == null && panel.info.last_price != null) {
      panel.node.querySelector(".last-price").textContent = formatPrice(panel.info.last_price);
    }
  }

  // --- websocket ------------------------------------------------------------------------------

  function subscribe(symbols) {
    if (!socket || socket.readyState !== WebSocket.OPEN || !symbols.length) return;
    const resume = {};
    for (const s of symbols) {
      const p = panels.get(s);
      if (p && p.lastId) resume[s] = p.lastId;
    }
    socket.send(JSON.stringify({ op: "subscribe", symbols, resume, snapshot: true }));
  }

  function onFrame(event) {
    let msg;
    try { msg = JSON.parse(event.data); } catch { return; }
    if (msg.type === "ticks" || msg.type === "snapshot") {
      const bySymbol = new Map();
      for (const t of msg.ticks || []) {
        if (!bySymbol.has(t.symbol)) bySymbol.set(t.symbol, []);
        bySymbol.get(t.symbol).push(t);
      }
      for (const [symbol, ticks] of bySymbol) {
        const panel = panels.get(symbol);
        if (panel) received += addTicks(panel, ticks);
      }
      const counter = $("tick-count");
      counter.textContent = String(received);
      counter.dataset.count = String(received);
    } else if (msg.type === "subscribed") {
      setStatus("live", `live · ${panels.size} symbol(s)`);
    } else if (msg.type === "error") {
      showMessage(`websocket server: ${msg.message || msg.code}`);
    } else if (msg.type === "unrecoverable") {
      showMessage(`some ticks of ${msg.symbol || "a symbol"} are no longer available (${msg.reason})`);
    }
  }

  function connect() {
    setStatus("connecting", "connecting…");
    socket = new WebSocket(wsUrl());
    socket.onopen = () => {
      reconnectDelayMs = 500;
      // Panels still loading history subscribe when it is in (see show()),
      // resuming after its last entry.
      subscribe([...panels.values()].filter((p) => p.ready).map((p) => p.info.symbol));
    };
    socket.onmessage = onFrame;
    socket.onclose = () => {
      setStatus("down", `disconnected; retrying in ${(reconnectDelayMs / 1000).toFixed(1)} s`);
      setTimeout(connect, reconnectDelayMs);
      reconnectDelayMs = Math.min(reconnectDelayMs * 2, 15000);
    };
  }

  // --- symbol picker --------------------------------------------------------------------------

  function selectedFromUrl() {
    const wanted = (params.get("symbols") || "").split(",").map((s) => s.trim().toUpperCase());
    return wanted.filter(Boolean);
  }

  function writeSelectionToUrl() {
    const url = new URL(location.href);
    url.searchParams.set("symbols", [...panels.keys()].join(","));
    history.replaceState(null, "", url);
  }

  async function show(symbol) {
    const info = allSymbols.find((s) => s.symbol === symbol) || { symbol };
    const panel = makePanel(info);
    try {
      await loadHistory(panel);
    } catch (err) {
      showMessage(`history of ${symbol}: ${err.message}`);
    }
    if (panels.get(symbol) !== panel) return;   // unticked meanwhile
    panel.ready = true;
    subscribe([symbol]);
  }

  function hide(symbol) {
    const panel = panels.get(symbol);
    if (!panel) return;
    panel.plot.destroy();
    panel.node.remove();
    panels.delete(symbol);
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({ op: "unsubscribe", symbols: [symbol] }));
    }
  }

  function buildPicker(selected) {
    const list = $("symbol-list");
    list.replaceChildren();
    for (const info of allSymbols) {
      const label = document.createElement("label");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.value = info.symbol;
      box.checked = selected.includes(info.symbol);
      box.onchange = () => {
        if (box.checked) show(info.symbol); else hide(info.symbol);
        writeSelectionToUrl();
      };
      label.append(box, " ", info.symbol);
      list.appendChild(label);
    }
  }

  async function main() {
    try {
      allSymbols = (await getJson("/v1/symbols")).symbols;
    } catch (err) {
      showMessage(`symbols: ${err.message}`);
    }
    let selected = selectedFromUrl();
    if (!selected.length) selected = allSymbols.slice(0, DEFAULT_SYMBOLS).map((s) => s.symbol);
    for (const s of selected) {
      if (!allSymbols.some((i) => i.symbol === s)) allSymbols.push({ symbol: s });
    }
    buildPicker(selected);
    if (!selected.length) showMessage("no symbols yet: start a publisher");
    connect();
    await Promise.all(selected.map(show));
    window.addEventListener("resize", () => {
      for (const p of panels.values()) {
        p.plot.setSize({ width: Math.max(p.node.querySelector(".chart").clientWidth, 300), height: 220 });
      }
    });
  }

  main();
})();
