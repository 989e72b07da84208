// pricepipe dashboard: one panel per symbol with its last-trade price line
// inside the bid/ask band of its quotes, the last price and the last quote
// (bid x ask), its logo and its 52-week range. Recent history comes from the
// HTTP API (/v1/trades and /v1/quotes); live trades and quotes from the
// websocket server (protocol v2), resumed per symbol and channel from the
// last entry IDs the history returned, so nothing falls between the two.
//
// Websocket URL, first match wins: ?ws=<url> in the page address, the API's
// PRICEPIPE_API_WS_URL (served as /config.js), ws(s)://<this host>/ws.
//
// A websocket token never travels in a URL (nginx, proxies and browser
// history record URLs; a page address also leaks through Referer): when the
// server's hello says auth_required, the page asks for the token once per tab,
// keeps it in sessionStorage (gone with the tab) and sends it in the protocol's
// {"op": "auth"} message before subscribing. A ?token= in the page address
// (an old link) is removed from the address and not used.
"use strict";

(function () {
  const params = new URLSearchParams(location.search);
  const config = window.PRICEPIPE_CONFIG || {};
  const HISTORY_MINUTES = Number(params.get("minutes")) || 10;
  const MAX_POINTS = 10000;          // per symbol and channel; older points scroll away
  const HISTORY_PAGE = 5000;
  const HISTORY_PAGES = 4;
  const DEFAULT_SYMBOLS = 6;
  const CHANNELS = ["trades", "quotes"];

  const $ = (id) => document.getElementById(id);
  const panels = new Map();          // symbol -> panel state
  let allSymbols = [];               // from /v1/symbols
  let socket = null;
  let reconnectDelayMs = 500;
  let nextReq = 1;
  let wsReady = false;               // hello seen and, if asked, auth_ok: may subscribe
  let tokenRefused = false;          // no token given: stop reconnecting until a reload
  const received = { trades: 0, quotes: 0 };

  function wsUrl() {
    return params.get("ws") || config.wsUrl ||
      `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
  }

  // --- websocket auth (the token in the auth message, never in a URL) -------------------------

  const TOKEN_KEY = "pricepipe.wsToken";

  function storedToken() {
    try { return sessionStorage.getItem(TOKEN_KEY); } catch { return null; }
  }

  function storeToken(token) {
    try {
      if (token) sessionStorage.setItem(TOKEN_KEY, token); else sessionStorage.removeItem(TOKEN_KEY);
    } catch { /* storage disabled: asked again on the next connection */ }
  }

  function dropTokenFromAddress() {
    if (!params.has("token")) return;
    params.delete("token");
    const url = new URL(location.href);
    url.searchParams.delete("token");
    history.replaceState(null, "", url);
    showMessage("a token in the page address is not used (addresses get logged): " +
                "enter it when the page asks for it");
  }

  // Answers the server's hello: the auth message when a token is required.
  // Returns whether the connection may subscribe now.
  function answerHello(hello) {
    if (!hello.auth_required) return true;
    let token = storedToken();
    if (!token) token = (window.prompt("This websocket server needs a token:") || "").trim();
    if (!token) {
      tokenRefused = true;
      showMessage("the websocket server needs a token: reload the page to enter it");
      socket.close();
      return false;
    }
    storeToken(token);
    socket.send(JSON.stringify({ op: "auth", token, req: nextReq++ }));
    return false;                    // subscribe on auth_ok
  }

  function onReady() {
    wsReady = true;
    // Panels still loading history subscribe when it is in (see show()),
    // resuming after its last entries.
    subscribe([...panels.values()].filter((p) => p.ready).map((p) => p.info.symbol));
    subscribeFeeds();
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

  // Entry IDs "ms-seq" compare numerically, part by part. A row without an
  // ID (backfilled history, never in a stream) is never a duplicate.
  function idAfter(a, b) {
    if (!a || !b) return true;
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
    if (price == null) return "–";
    return price >= 1000 ? price.toFixed(2) : price >= 1 ? price.toFixed(3) : price.toPrecision(4);
  }

  function updateCounters() {
    for (const channel of CHANNELS) {
      const el = $(`${channel}-count`);
      el.textContent = String(received[channel]);
      el.dataset.count = String(received[channel]);
    }
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
    const hasRange = info.week52_high != null && info.week52_low != null &&
      info.week52_high > info.week52_low;
    node.querySelector(".band-note").textContent = hasRange
      ? `52-week range ${formatPrice(info.week52_low)} – ${formatPrice(info.week52_high)}`
      : "";
    node.querySelector(".range").hidden = !hasRange;
    $("panels").appendChild(node);
    const chartEl = node.querySelector(".chart");
    // Every value holds until the next one: a price is the last trade's,
    // a bid or ask the last quote's (hence steps, not lines between points).
    const steps = uPlot.paths.stepped({ align: 1 });
    const opts = {
      width: Math.max(chartEl.clientWidth, 300), height: 220,
      legend: { show: false }, cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true } },
      series: [
        {},
        { label: "last price", stroke: "#2563eb", width: 1.5, paths: steps, points: { show: false } },
        { label: "ask", stroke: "rgba(220,38,38,0.7)", width: 1, paths: steps, points: { show: false } },
        { label: "bid", stroke: "rgba(22,163,74,0.7)", width: 1, paths: steps, points: { show: false } },
      ],
      bands: [{ series: [2, 3], fill: "rgba(100,116,139,0.25)" }],
      axes: [{}, { size: 60 }],
    };
    const panel = {
      info, node, hasRange,
      trades: { xs: [], price: [] },
      quotes: { xs: [], bid: [], ask: [] },
      lastId: { trades: null, quotes: null },
      lastPrice: null, dirty: false, plot: null,
      ready: false,   // history loaded: live events may follow
    };
    panel.plot = new uPlot(opts, chartData(panel), chartEl);
    panels.set(info.symbol, panel);
    return panel;
  }

  // The series share one x axis in uPlot: the times of trades and quotes
  // merged, each series holding its last value at every time (null before
  // its first event), so the price line and the band both step correctly.
  function chartData(panel) {
    const t = panel.trades;
    const q = panel.quotes;
    const xs = [], price = [], ask = [], bid = [];
    let i = 0, j = 0, p = null, a = null, b = null;
    while (i < t.xs.length || j < q.xs.length) {
      let x;
      if (j >= q.xs.length || (i < t.xs.length && t.xs[i] <= q.xs[j])) {
        x = t.xs[i]; p = t.price[i]; i += 1;
      } else {
        x = q.xs[j]; a = q.ask[j]; b = q.bid[j]; j += 1;
      }
      xs.push(x); price.push(p); ask.push(a); bid.push(b);
    }
    return [xs, price, ask, bid];
  }

  // Insert keeping times sorted: events arrive in entry order, and venue
  // times may step back a little.
  function insertAt(xs, x) {
    let k = xs.length;
    while (k > 0 && xs[k - 1] > x) k -= 1;
    return k;
  }

  function trim(arrays) {
    const extra = arrays[0].length - MAX_POINTS;
    if (extra > 0) for (const a of arrays) a.splice(0, extra);
  }

  function addTrades(panel, trades) {
    let added = 0;
    const t = panel.trades;
    for (const e of trades) {
      if (!idAfter(e.id, panel.lastId.trades)) continue;   // replayed or duplicate
      const x = e.ts_us / 1e6;
      const k = insertAt(t.xs, x);
      t.xs.splice(k, 0, x);
      t.price.splice(k, 0, e.price);
      if (e.id) panel.lastId.trades = e.id;
      added += 1;
    }
    if (!added) return 0;
    trim([t.xs, t.price]);
    const price = t.price[t.price.length - 1];
    const el = panel.node.querySelector(".last-price");
    el.classList.toggle("up", panel.lastPrice != null && price > panel.lastPrice);
    el.classList.toggle("down", panel.lastPrice != null && price < panel.lastPrice);
    el.textContent = formatPrice(price);
    el.dataset.price = String(price);
    panel.lastPrice = price;
    showRange(panel, price);
    redraw(panel);
    return added;
  }

  function addQuotes(panel, quotes) {
    let added = 0;
    const q = panel.quotes;
    for (const e of quotes) {
      if (!idAfter(e.id, panel.lastId.quotes)) continue;
      const x = e.ts_us / 1e6;
      const k = insertAt(q.xs, x);
      q.xs.splice(k, 0, x);
      q.bid.splice(k, 0, e.bid);
      q.ask.splice(k, 0, e.ask);
      if (e.id) panel.lastId.quotes = e.id;
      added += 1;
    }
    if (!added) return 0;
    trim([q.xs, q.bid, q.ask]);
    const last = q.xs.length - 1;
    const bid = q.bid[last], ask = q.ask[last];
    const el = panel.node.querySelector(".last-quote");
    el.querySelector(".bid").textContent = formatPrice(bid);
    el.querySelector(".ask").textContent = formatPrice(ask);
    el.dataset.bid = bid == null ? "" : String(bid);
    el.dataset.ask = ask == null ? "" : String(ask);
    el.title = bid != null && ask != null
      ? `last quote: bid × ask, spread ${formatPrice(ask - bid)}` : "last quote (one-sided)";
    redraw(panel);
    return added;
  }

  function showRange(panel, price) {
    if (!panel.hasRange) return;
    const { week52_low: low, week52_high: high } = panel.info;
    const at = Math.min(Math.max((price - low) / (high - low), 0), 1);
    panel.node.querySelector(".range-marker").style.left = `${(at * 100).toFixed(1)}%`;
  }

  function redraw(panel) {
    panel.node.dataset.points = String(panel.trades.xs.length + panel.quotes.xs.length);
    if (panel.dirty) return;
    panel.dirty = true;
    requestAnimationFrame(() => { panel.dirty = false; panel.plot.setData(chartData(panel)); });
  }

  async function loadChannel(panel, channel) {
    const start = Date.now() * 1000 - HISTORY_MINUTES * 60e6;
    let cursor = null;
    for (let page = 0; page < HISTORY_PAGES; page += 1) {
      const q = new URLSearchParams({ start: String(start), limit: String(HISTORY_PAGE) });
      if (cursor) q.set("cursor", cursor);
      const body = await getJson(`/v1/${channel}/${encodeURIComponent(panel.info.symbol)}?${q}`);
      if (channel === "trades") addTrades(panel, body.trades); else addQuotes(panel, body.quotes);
      cursor = body.next_cursor;
      if (!cursor) break;
    }
  }

  async function loadHistory(panel) {
    await Promise.all(CHANNELS.map((c) => loadChannel(panel, c)));
    if (panel.lastPrice == null && panel.info.last_price != null) {
      panel.node.querySelector(".last-price").textContent = formatPrice(panel.info.last_price);
    }
  }

  // --- websocket (protocol v2) ----------------------------------------------------------------

  function subscribe(symbols) {
    if (!socket || socket.readyState !== WebSocket.OPEN || !wsReady || !symbols.length) return;
    // Resume each (symbol, channel) after the last entry it has; without
    // one the server sends a snapshot of the latest event instead.
    const resume = {};
    for (const s of symbols) {
      const p = panels.get(s);
      if (!p) continue;
      const ids = {};
      for (const c of CHANNELS) if (p.lastId[c]) ids[c] = p.lastId[c];
      if (Object.keys(ids).length) resume[s] = ids;
    }
    socket.send(JSON.stringify({
      op: "subscribe", channels: CHANNELS, symbols, resume, snapshot: true, req: nextReq++,
    }));
  }

  function bySymbol(events) {
    const out = new Map();
    for (const e of events || []) {
      if (!out.has(e.symbol)) out.set(e.symbol, []);
      out.get(e.symbol).push(e);
    }
    return out;
  }

  function deliver(channel, events) {
    const add = channel === "trades" ? addTrades : addQuotes;
    for (const [symbol, list] of bySymbol(events)) {
      const panel = panels.get(symbol);
      if (panel) received[channel] += add(panel, list);
    }
  }

  function onFrame(event) {
    let msg;
    try { msg = JSON.parse(event.data); } catch { return; }
    onFeedFrame(msg);                // the feed indicator's part of any frame
    if (msg.type === "hello") {
      if (answerHello(msg)) onReady();
    } else if (msg.type === "auth_ok") {
      if (!wsReady) onReady();
    } else if (msg.type === "error" && msg.code === "auth_failed") {
      storeToken(null);              // asked again on the next connection
      showMessage("the websocket server refused the token");
    } else if (msg.type === "trades" || msg.type === "quotes" || msg.type === "snapshot") {
      // A conflated trades frame skipped some trades (msg.gaps names them):
      // a chart can do without them, its line joins the trades it has.
      if (msg.trades) deliver("trades", msg.trades);
      if (msg.quotes) deliver("quotes", msg.quotes);
      updateCounters();
    } else if (msg.type === "subscribed") {
      setStatus("live", `live · ${panels.size} symbol(s)`);
    } else if (msg.type === "error") {
      showMessage(`websocket server: ${msg.message || msg.code}`);
    } else if (msg.type === "unrecoverable") {
      // A snapshot of that channel follows, then live events.
      showMessage(`some ${msg.channel || "events"} of ${msg.symbol || "a symbol"} are no ` +
                  `longer available (${msg.reason})`);
    }
  }

  function connect() {
    setStatus("connecting", "connecting…");
    wsReady = false;
    socket = new WebSocket(wsUrl());
    // Subscriptions wait for the server's hello (and auth_ok when it asks for a token).
    socket.onopen = () => { reconnectDelayMs = 500; };
    socket.onmessage = onFrame;
    socket.onclose = () => {
      wsReady = false;
      if (tokenRefused) { setStatus("down", "no token"); return; }
      setStatus("down", `disconnected; retrying in ${(reconnectDelayMs / 1000).toFixed(1)} s`);
      setTimeout(connect, reconnectDelayMs);
      reconnectDelayMs = Math.min(reconnectDelayMs * 2, 15000);
    };
  }

  // --- feed indicator: the upstream feeds' status -----------------------------------------------
  //
  // Each feed's state as GET /v1/feeds shows it (polled every ?feedpoll=
  // seconds, default 5, which also applies the staleness-by-age rule), kept
  // current between polls by the websocket's "status" channel: its snapshot
  // holds every feed's state, then each status event (connected,
  // disconnected, stale, gaps) updates the indicator at once and is listed in
  // the feed log. A stale or disconnected feed is drawn in colour AND says so
  // in words; a change of state is announced to screen readers (#feed-alert).

  const FEED_POLL_MS = Math.max(Number(params.get("feedpoll")) || 5, 0.5) * 1000;
  const FEED_LOG_MAX = 50;
  const FEED_WORDS = {
    connecting: "connecting", connected: "connected", partial: "partly connected",
    disconnected: "disconnected", stale: "stale", stopped: "stopped",
  };
  const feeds = new Map();           // feed name -> its state, as /v1/feeds shows it
  const feedEventTs = new Map();     // feed name -> ts_us of the last status event applied
  const shownStates = new Map();     // feed name -> the state last drawn (for announcements)
  let statusCursor = null;           // the last status event id: where a resume starts
  let statusEpoch = null;
  let statusEvents = 0;
  let feedsRefetch = null;

  function subscribeFeeds() {
    if (!socket || socket.readyState !== WebSocket.OPEN || !wsReady) return;
    // No symbols: the status channel is one stream; its cursor goes under "feeds".
    const msg = { op: "subscribe", channels: ["status"], req: nextReq++ };
    if (statusCursor) {
      msg.resume = { feeds: statusEpoch ? { status: statusCursor, epoch: statusEpoch }
        : { status: statusCursor } };
    }
    socket.send(JSON.stringify(msg));
  }

  function refetchFeeds() {
    if (feedsRefetch) return;
    feedsRefetch = setTimeout(() => { feedsRefetch = null; pollFeeds(); }, 200);
  }

  async function pollFeeds() {
    try {
      const body = await getJson("/v1/feeds");
      $("feeds").dataset.error = "";
      setFeeds(body.feeds, true);
    } catch (err) {
      $("feeds").dataset.error = err.message;   // the last states stay shown
    }
  }

  function setFeeds(list, polled) {
    const seen = new Set();
    for (const f of list || []) {
      seen.add(f.feed);
      const mine = feeds.get(f.feed);
      // A poll answered before a status event already applied would undo
      // it: a feed writes its state with each event, never older than it.
      const older = polled && mine && (f.updated_us || 0) < (feedEventTs.get(f.feed) || 0);
      if (older && f.stale_reason !== "no_update") {
        mine.counts = f.counts;
        continue;
      }
      if (mine && mine.state === f.state && f.lastReason === undefined) f.lastReason = mine.lastReason;
      feeds.set(f.feed, f);
    }
    for (const name of [...feeds.keys()]) if (!seen.has(name)) feeds.delete(name);
    renderFeeds();
  }

  function applyStatus(e) {
    statusCursor = e.id;
    statusEvents += 1;
    logFeedEvent(e);
    const f = feeds.get(e.feed);
    if (!f) { refetchFeeds(); return; }   // a feed started after the snapshot
    feedEventTs.set(e.feed, e.ts_us);
    f.updated_us = Math.max(f.updated_us || 0, e.ts_us);
    const total = f.connections || 1;
    const gaps = (f.open_gaps || []).filter((g) => g.symbol !== e.symbol);
    if (e.kind === "connected") {
      f.connected = Math.min((f.connected || 0) + 1, total);
      f.state = f.connected >= total ? "connected" : "partial";
      f.stale_reason = null; f.lastReason = null;
    } else if (e.kind === "disconnected") {
      f.connected = Math.max((f.connected || 0) - 1, 0);
      f.state = f.connected ? "partial" : e.reason === "stop" ? "stopped" : "disconnected";
      f.stale_reason = null; f.lastReason = e.reason;
      if (e.reason === "stop") f.open_gaps = [];
    } else if (e.kind === "stale") {
      f.state = "stale"; f.stale_reason = "reported"; f.lastReason = e.reason;
    } else if (e.kind === "gap_detected") {
      gaps.push({ symbol: e.symbol, first_id: e.first_id, last_id: e.last_id, id: e.id });
      f.open_gaps = gaps;
    } else if (e.kind === "gap_repaired" || e.kind === "gap_unrepairable") {
      f.open_gaps = gaps;
      if (e.kind === "gap_unrepairable" && f.counts) {
        f.counts.gaps_unrepairable = (f.counts.gaps_unrepairable || 0) + 1;
      }
    }
  }

  function eventText(e) {
    const range = e.first_id == null ? "" : ` ${e.first_id}…${e.last_id == null ? "" : e.last_id}`;
    const what = {
      gap_detected: `gap detected in ${e.symbol}:${range}`,
      gap_repaired: `gap repaired in ${e.symbol}:${range} (${e.trades} trades)`,
      gap_unrepairable: `trades lost in ${e.symbol}:${range} (${e.reason})`,
    }[e.kind] || (e.reason ? `${e.kind.replace("_", " ")} (${e.reason})` : e.kind.replace("_", " "));
    return `${(e.ts || "").slice(11, 19)} ${e.feed}: ${what}`;
  }

  function logFeedEvent(e) {
    const log = $("feed-log");
    const li = document.createElement("li");
    li.dataset.kind = e.kind;
    li.dataset.feed = e.feed;
    li.textContent = eventText(e);
    log.prepend(li);
    while (log.children.length > FEED_LOG_MAX) log.lastElementChild.remove();
    const count = $("status-count");
    count.textContent = String(statusEvents);
    count.dataset.count = String(statusEvents);
  }

  function feedDetail(f) {
    const gaps = (f.open_gaps || []).length;
    const parts = [];
    if (f.state === "stale" && f.stale_reason === "no_update") {
      parts.push(`no update for ${Math.round(f.age_s || 0)} s`);
      if (f.reported_state) parts.push(`last said ${FEED_WORDS[f.reported_state] || f.reported_state}`);
    } else if ((f.state === "stale" || f.state === "disconnected") && f.lastReason) {
      parts.push(f.state === "stale" ? `no ${f.lastReason}` : f.lastReason);
    }
    if (gaps) parts.push(`${gaps} gap${gaps > 1 ? "s" : ""} open`);
    return parts.join(", ");
  }

  function renderFeeds() {
    const box = $("feeds");
    const list = $("feed-list");
    box.hidden = feeds.size === 0;
    // Each feed keeps its element (a tooltip being read stays put); gone feeds go.
    const items = new Map([...list.children].map((li) => [li.dataset.feed, li]));
    for (const [name, li] of items) if (!feeds.has(name)) li.remove();
    const alerts = [];
    for (const f of [...feeds.values()].sort((a, b) => a.feed.localeCompare(b.feed))) {
      const li = items.get(f.feed) || document.createElement("li");
      li.replaceChildren();
      li.className = "feed";
      li.dataset.feed = f.feed;
      li.dataset.state = f.state;
      li.dataset.reason = f.stale_reason || f.lastReason || "";
      const detail = feedDetail(f);
      const name = document.createElement("span");
      name.className = "feed-name";
      name.textContent = f.feed;
      const state = document.createElement("span");
      state.className = "feed-state";
      state.textContent = FEED_WORDS[f.state] || f.state;
      li.append(name, " ", state);
      if (detail) {
        const more = document.createElement("span");
        more.className = "feed-detail";
        more.textContent = `(${detail})`;
        li.append(" ", more);
      }
      const c = f.counts || {};
      li.title = `${f.feed} (${f.venue}): ${FEED_WORDS[f.state] || f.state}` +
        `${f.reported_state && f.reported_state !== f.state ? `, last reported ${f.reported_state}` : ""}` +
        `; last message ${f.last_message || "never"}; ${c.trades || 0} trades, ` +
        `${c.quotes || 0} quotes, ${c.reconnects || 0} reconnects, gaps ${c.gaps_detected || 0} ` +
        `detected / ${c.gaps_repaired || 0} repaired / ${c.gaps_unrepairable || 0} unrepairable`;
      list.appendChild(li);          // (re)appended: kept in name order
      const before = shownStates.get(f.feed);
      if (before !== undefined && before !== f.state) {
        alerts.push(`feed ${f.feed} is ${FEED_WORDS[f.state] || f.state}${detail ? `: ${detail}` : ""}`);
      }
      shownStates.set(f.feed, f.state);
    }
    if (alerts.length) $("feed-alert").textContent = alerts.join("; ");
  }

  function onFeedFrame(msg) {
    if (msg.type === "subscribed" && (msg.channels || []).includes("status")) {
      if (!statusCursor && msg.epochs && msg.epochs.feeds) statusEpoch = msg.epochs.feeds;
    } else if (msg.type === "snapshot" && (msg.feeds || (msg.epochs && msg.epochs.feeds))) {
      if (msg.epochs && msg.epochs.feeds) statusEpoch = msg.epochs.feeds;
      // The newest event is already in the states: it is only the cursor.
      for (const e of msg.status || []) statusCursor = e.id;
      if (msg.feeds) setFeeds(msg.feeds, false);
    } else if (msg.type === "status") {
      for (const e of msg.status || []) applyStatus(e);
      if (msg.gaps) refetchFeeds();   // events were skipped: the states say where feeds are
      renderFeeds();
    } else if (msg.type === "unrecoverable" && msg.channel === "status") {
      statusCursor = null;            // a snapshot of every feed follows
    }
  }

  function startFeeds() {
    pollFeeds();
    setInterval(pollFeeds, FEED_POLL_MS);
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
    dropTokenFromAddress();
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
    startFeeds();
    await Promise.all(selected.map(show));
    window.addEventListener("resize", () => {
      for (const p of panels.values()) {
        p.plot.setSize({ width: Math.max(p.node.querySelector(".chart").clientWidth, 300), height: 220 });
      }
    });
  }

  main();
})();
