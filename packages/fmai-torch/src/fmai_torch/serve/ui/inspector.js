// The fmai memory inspector: a page over `fmai serve`'s conversations API.
//
// Text safety: every piece of data is put in the page with textContent (the `el` helper),
// never as HTML. The page is served with a Content-Security-Policy that allows only this
// script and the vendored uPlot (script-src 'self'). The API key lives in sessionStorage.
"use strict";

(function () {
  const API = "/v1";
  const KEY_NAME = "fmai-inspector-key";
  const TURN_PAGE = 1000; // turn summaries per request (the API's largest page)
  const MESSAGE_PAGE = 200; // transcript messages rendered at a time
  const PARTS = ["system_prompt", "pinned", "summary", "history", "recalled", "new"];
  const PART_LABELS = {
    system_prompt: "System prompt",
    pinned: "Pinned",
    summary: "Summary",
    history: "History",
    recalled: "Recalled",
    new: "New message",
  };
  const COLORS = {
    system_prompt: "#7b6fd6",
    pinned: "#c060a1",
    summary: "#e59f3a",
    history: "#3b82c4",
    recalled: "#2fa37a",
    new: "#888888",
  };

  const $ = (id) => document.getElementById(id);
  // uPlot is the next deferred script: it has run once DOMContentLoaded fires
  const chartsReady = new Promise((resolve) => {
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", resolve);
    else resolve();
  });
  const state = {
    key: null,
    model: null,
    cid: null,
    turns: [],
    messages: [],
    olderMessages: false,
    turn: null,
    plots: [],
    convAfter: null,
  };
  // What tests and the benchmark read: the plots' data and the page's own timings.
  window.fmaiInspector = { state: state, plots: state.plots, timings: {} };

  // -- DOM helpers (text only) ---------------------------------------------------------
  function el(tag, options, children) {
    const node = document.createElement(tag);
    const o = options || {};
    if (o.cls) node.className = o.cls;
    if (o.text !== undefined && o.text !== null) node.textContent = String(o.text);
    if (o.title) node.title = String(o.title);
    if (o.data) for (const k of Object.keys(o.data)) node.dataset[k] = String(o.data[k]);
    for (const child of children || []) if (child) node.appendChild(child);
    return node;
  }
  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }
  function status(text, isError) {
    const s = $("status");
    s.textContent = text || "";
    s.className = isError ? "error" : "";
  }
  function when(seconds) {
    return new Date(seconds * 1000).toLocaleString();
  }
  function fmt(value) {
    if (value === null || value === undefined) return "n/a";
    if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(1);
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  }

  // -- the API ---------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }
  async function api(path, options) {
    const o = options || {};
    const headers = { Authorization: "Bearer " + state.key };
    if (o.body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(API + path, {
      method: o.method || "GET",
      headers: headers,
      body: o.body === undefined ? undefined : JSON.stringify(o.body),
      cache: "no-store",
    });
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const message = body && body.error ? body.error.message : response.statusText;
      throw new ApiError(response.status, message);
    }
    return body;
  }
  function failed(error) {
    if (error instanceof ApiError && error.status === 401) {
      lockOut("The key was refused (401): enter a valid API key.");
      return;
    }
    status(error.message || String(error), true);
  }
  function lockOut(message) {
    // A wrong key sees nothing: drop every piece of data from the page.
    sessionStorage.removeItem(KEY_NAME);
    state.key = null;
    state.cid = null;
    destroyPlots();
    clear(document.querySelector("#conv-table tbody"));
    for (const id of ["transcript", "parts", "sent-messages", "evicted", "recalled",
      "policy-stats", "turn-stats", "search-results"]) clear($(id));
    $("app").hidden = true;
    $("conversation").hidden = true;
    $("forget").hidden = true;
    document.body.dataset.state = "locked";
    status(message, true);
  }

  // -- conversations -----------------------------------------------------------------------
  async function start(key) {
    state.key = key;
    document.body.dataset.state = "loading";
    status("Loading...");
    try {
      clear(document.querySelector("#conv-table tbody"));
      state.convAfter = null;
      const wanted = new URLSearchParams(location.hash.slice(1)).get("c");
      // all at once: nothing is shown unless the key is accepted (every call needs it)
      const [models] = await Promise.all([
        api("/models"),
        loadConversations(),
        wanted ? openConversation(wanted) : null,
      ]);
      state.model = models.data.length ? models.data[0].id : "default";
      sessionStorage.setItem(KEY_NAME, key);
      $("forget").hidden = false;
      $("app").hidden = false;
      status("");
      document.body.dataset.state = "ready";
      if (wanted) performance.mark("fmai-interactive");
    } catch (error) {
      failed(error);
    }
  }

  async function loadConversations() {
    const after = state.convAfter ? "&after=" + encodeURIComponent(state.convAfter) : "";
    const page = await api("/conversations?limit=100" + after);
    const body = document.querySelector("#conv-table tbody");
    for (const c of page.data) {
      const row = el("tr", { data: { cid: c.id } }, [
        el("td", {}, [el("a", { text: c.id, title: c.title })]),
        el("td", { text: c.turns, cls: "num" }),
        el("td", { text: c.prompt_tokens, cls: "num" }),
        el("td", { text: c.archive_tokens, cls: "num" }),
        el("td", { text: when(c.updated_at) }),
      ]);
      row.querySelector("a").href = "#c=" + encodeURIComponent(c.id);
      body.appendChild(row);
    }
    state.convAfter = page.last_id;
    $("conv-more").hidden = !page.has_more;
    if (!page.data.length && !body.childElementCount) {
      body.appendChild(el("tr", {}, [el("td", { text: "No conversations yet." })]));
    }
  }

  async function openConversation(cid) {
    const t0 = performance.now();
    document.body.dataset.state = "loading";
    state.cid = cid;
    for (const row of document.querySelectorAll("#conv-table tbody tr")) {
      row.classList.toggle("selected", row.dataset.cid === cid);
    }
    const base = "/conversations/" + encodeURIComponent(cid);
    const wanted = parseInt(new URLSearchParams(location.hash.slice(1)).get("t"), 10);
    const which = Number.isFinite(wanted) ? String(wanted) : "latest";
    const [page, turns, trace] = await Promise.all([
      api(base + "/messages?limit=" + MESSAGE_PAGE),
      loadTurns(cid),
      api(base + "/turns/" + which).catch((error) => {
        if (error instanceof ApiError && error.status === 404) return null; // no trace yet
        throw error;
      }),
    ]);
    if (state.cid !== cid) return;
    state.turns = turns;
    state.messages = page.data;
    state.olderMessages = page.has_more;
    $("conversation").hidden = false;
    $("conv-title").textContent = cid;
    const last = turns.length ? turns[turns.length - 1] : null;
    $("conv-summary").textContent = last
      ? turns.length + " turns traced; last prompt " + last.stats.prompt_tokens +
        " tokens; archive " + last.archive_segments + " segments (" + last.archive_tokens +
        " tokens); policy " + last.policy + "."
      : "No traced turns yet.";
    renderTranscript();
    await chartsReady;
    drawPlots();
    await selectTurn(trace ? trace.turn : null, trace);
    window.fmaiInspector.timings.open_ms = performance.now() - t0;
    if (state.key && !$("app").hidden) {
      performance.mark("fmai-interactive");
      document.body.dataset.state = "ready";
    }
  }

  async function earlierMessages() {
    if (!state.messages.length) return;
    const base = "/conversations/" + encodeURIComponent(state.cid);
    const page = await api(
      base + "/messages?limit=" + MESSAGE_PAGE + "&before=" + state.messages[0].seq
    );
    state.messages = page.data.concat(state.messages);
    state.olderMessages = page.has_more;
    renderTranscript();
  }

  async function loadTurns(cid) {
    let out = [];
    let after = null;
    for (;;) {
      const q = "?limit=" + TURN_PAGE + (after === null ? "" : "&after=" + after);
      const page = await api("/conversations/" + encodeURIComponent(cid) + "/turns" + q);
      out = out.concat(page.data);
      if (!page.has_more) return out;
      after = page.last_id;
    }
  }

  // -- transcript and chat ----------------------------------------------------------------
  function messageItem(m) {
    const item = el("li", { cls: "msg " + m.role, data: { turn: m.turn, role: m.role } }, [
      el("span", { cls: "who", text: m.role + " · turn " + m.turn }),
      el("div", { cls: "text", text: m.content }),
    ]);
    item.addEventListener("click", () => selectTurn(m.turn));
    return item;
  }
  function renderTranscript() {
    const list = $("transcript");
    clear(list);
    const fragment = document.createDocumentFragment();
    for (const m of state.messages) fragment.appendChild(messageItem(m));
    list.appendChild(fragment);
    $("earlier").hidden = !state.olderMessages;
    list.scrollTop = list.scrollHeight;
  }

  async function send(text) {
    const cid = state.cid;
    const list = $("transcript");
    const turn = state.turns.length ? state.turns[state.turns.length - 1].turn + 1 : 0;
    list.appendChild(messageItem({ role: "user", content: text, turn: turn }));
    const reply = messageItem({ role: "assistant", content: "", turn: turn });
    const replyText = reply.querySelector(".text");
    list.appendChild(reply);
    list.scrollTop = list.scrollHeight;
    $("chat-send").disabled = true;
    try {
      const response = await fetch(API + "/chat/completions", {
        method: "POST",
        headers: {
          Authorization: "Bearer " + state.key,
          "Content-Type": "application/json",
          "X-Session-ID": cid,
        },
        body: JSON.stringify({
          model: state.model,
          messages: [{ role: "user", content: text }],
          stream: true,
        }),
      });
      if (!response.ok) {
        const body = await response.json().catch(() => null);
        throw new ApiError(response.status, body && body.error ? body.error.message : "error");
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const event = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          for (const line of event.split("\n")) {
            if (!line.startsWith("data: ")) continue;
            const data = line.slice(6);
            if (data === "[DONE]") continue;
            const parsed = JSON.parse(data);
            if (parsed.error) throw new ApiError(500, parsed.error.message);
            for (const choice of parsed.choices || []) {
              if (choice.delta && choice.delta.content) replyText.textContent += choice.delta.content;
            }
            list.scrollTop = list.scrollHeight;
          }
        }
      }
      await refresh(cid);
    } catch (error) {
      replyText.textContent += " [not stored: " + (error.message || error) + "]";
      failed(error);
    } finally {
      $("chat-send").disabled = false;
    }
  }

  async function refresh(cid) {
    if (state.cid !== cid) return;
    location.hash = "c=" + encodeURIComponent(cid);
    clear(document.querySelector("#conv-table tbody"));
    state.convAfter = null;
    await loadConversations();
    await openConversation(cid);
  }

  // -- the selected turn ------------------------------------------------------------------
  async function selectTurn(n, prefetched) {
    if (n === null || n === undefined || !state.turns.length) {
      $("turn-number").textContent = "(none yet)";
      for (const id of ["parts", "sent-messages", "evicted", "recalled", "policy-stats",
        "turn-stats"]) clear($(id));
      return;
    }
    const first = state.turns[0].turn;
    const last = state.turns[state.turns.length - 1].turn;
    n = Math.max(first, Math.min(last, n));
    state.turn = n;
    for (const item of document.querySelectorAll("#transcript li")) {
      item.classList.toggle("selected", Number(item.dataset.turn) === n);
    }
    for (const u of state.plots) u.redraw(false, false);
    const trace = prefetched && prefetched.turn === n ? prefetched : await api(
      "/conversations/" + encodeURIComponent(state.cid) + "/turns/" + n
    );
    if (state.turn !== n) return;
    renderTurn(trace);
  }

  function segmentItem(s, extra) {
    const head = s.role + " · " + s.tokens + " tokens · turn " + s.turn + (extra || "");
    return el("li", { cls: "segment " + s.role }, [
      el("span", { cls: "who", text: head }),
      el("div", { cls: "text", text: s.text }),
    ]);
  }
  function partBlock(name, tokens, items) {
    const label = PART_LABELS[name] + " — " + tokens + " tokens" +
      (items.length > 1 ? " (" + items.length + " segments)" : "");
    const list = el("ol", { cls: "segments" }, items);
    const block = el("section", { cls: "part", data: { part: name, tokens: tokens } }, [
      el("h5", {}, [el("span", { cls: "swatch " + name }), el("span", { text: label })]),
      list,
    ]);
    if (!items.length) list.appendChild(el("li", { cls: "muted", text: "(empty)" }));
    return block;
  }
  function scoreText(s) {
    return s.score === null || s.score === undefined ? " · no score" : " · score " + s.score.toFixed(3);
  }
  function statsList(target, data) {
    clear(target);
    for (const k of Object.keys(data || {})) {
      if (k === "policy_stats") continue;
      target.appendChild(el("dt", { text: k }));
      target.appendChild(el("dd", { text: fmt(data[k]) }));
    }
  }

  function renderTurn(t) {
    $("turn-number").textContent = String(t.turn);
    const s = t.stats || {};
    $("turn-figures").textContent =
      "Prompt " + t.prompt_tokens + " tokens as counted whole (its parts: " +
      (t.prompt_tokens - t.overhead_tokens) + "; template and count difference: " +
      t.overhead_tokens + "); reused " + fmt(s.reused_tokens) + ", prefilled " + fmt(s.prefill_tokens) +
      "; ttft " + fmt(s.ttft_ms) + " ms, latency " + fmt(s.latency_ms) + " ms; policy " + t.policy + ".";
    const parts = $("parts");
    clear(parts);
    const p = t.part_tokens;
    const text = (value) => el("li", { cls: "segment" }, [el("div", { cls: "text", text: value })]);
    parts.appendChild(partBlock("system_prompt", p.system_prompt, t.system_prompt ? [text(t.system_prompt)] : []));
    parts.appendChild(partBlock("pinned", p.pinned, t.pinned.map((x) => segmentItem(x))));
    parts.appendChild(partBlock("summary", p.summary, t.summary ? [segmentItem(t.summary)] : []));
    parts.appendChild(partBlock("history", p.history, t.history.map((x) => segmentItem(x))));
    parts.appendChild(partBlock("recalled", p.recalled, t.recalled.map((x) => segmentItem(x, scoreText(x)))));
    parts.appendChild(partBlock("new", p.new, [text(t.new_message)]));
    const sent = $("sent-messages");
    clear(sent);
    for (const m of t.messages) {
      sent.appendChild(el("li", { cls: "msg " + m.role }, [
        el("span", { cls: "who", text: m.role }),
        el("div", { cls: "text", text: m.content }),
      ]));
    }
    const evicted = $("evicted");
    clear(evicted);
    for (const x of t.evicted) evicted.appendChild(segmentItem(x));
    if (!t.evicted.length) evicted.appendChild(el("li", { cls: "muted", text: "Nothing was evicted at this turn." }));
    const recalled = $("recalled");
    clear(recalled);
    const byScore = t.recalled.slice().sort((a, b) => (b.score || 0) - (a.score || 0));
    for (const x of byScore) recalled.appendChild(segmentItem(x, scoreText(x)));
    if (!t.recalled.length) recalled.appendChild(el("li", { cls: "muted", text: "Nothing was recalled at this turn." }));
    statsList($("policy-stats"), t.policy_stats);
    statsList($("turn-stats"), s);
  }

  // -- archive search -----------------------------------------------------------------------
  async function search(query) {
    const results = $("search-results");
    clear(results);
    $("search-summary").textContent = "Searching...";
    try {
      const found = await api("/conversations/" + encodeURIComponent(state.cid) + "/search", {
        method: "POST",
        body: { query: query },
      });
      const byScore = found.recalled.slice().sort((a, b) => (b.score || 0) - (a.score || 0));
      $("search-summary").textContent =
        byScore.length + " segments would be recalled (" + found.part_tokens.recalled +
        " tokens) from " + found.archive_segments + " archived; policy " + found.policy + ".";
      for (const x of byScore) results.appendChild(segmentItem(x, scoreText(x)));
    } catch (error) {
      $("search-summary").textContent = "";
      failed(error);
    }
  }

  // -- plots ----------------------------------------------------------------------------------
  function destroyPlots() {
    for (const u of state.plots) u.destroy();
    state.plots.length = 0;
  }
  function markers(u) {
    // evictions (dashed red) and the selected turn (grey), drawn over a plot
    const ctx = u.ctx;
    const top = u.bbox.top;
    const height = u.bbox.height;
    ctx.save();
    ctx.lineWidth = 1 * devicePixelRatio;
    ctx.strokeStyle = "rgba(200, 40, 40, 0.55)";
    ctx.setLineDash([4 * devicePixelRatio, 3 * devicePixelRatio]);
    for (const t of state.turns) {
      if (!t.evicted_segments) continue;
      const x = Math.round(u.valToPos(t.turn, "x", true));
      ctx.beginPath();
      ctx.moveTo(x, top);
      ctx.lineTo(x, top + height);
      ctx.stroke();
    }
    if (state.turn !== null) {
      ctx.setLineDash([]);
      ctx.strokeStyle = "rgba(0, 0, 0, 0.35)";
      ctx.lineWidth = 2 * devicePixelRatio;
      const x = Math.round(u.valToPos(state.turn, "x", true));
      ctx.beginPath();
      ctx.moveTo(x, top);
      ctx.lineTo(x, top + height);
      ctx.stroke();
    }
    ctx.restore();
  }
  function stacked(names, rows) {
    // cumulative series, drawn top band first so each fill covers only its own band
    const sums = rows[0].map(() => 0);
    const cumulative = [];
    for (const row of rows) {
      for (let i = 0; i < row.length; i++) sums[i] += row[i] || 0;
      cumulative.push(sums.slice());
    }
    return { data: cumulative.reverse(), names: names.slice().reverse(), raw: rows.slice().reverse() };
  }
  function plot(target, title, xs, series, options) {
    const width = Math.max(260, target.clientWidth || 300);
    const o = options || {};
    const opts = {
      width: width,
      height: 150,
      legend: { live: true },
      cursor: { drag: { x: false, y: false }, points: { show: false } },
      scales: { x: { time: false } },
      axes: [{ size: 30 }, { size: 50 }],
      series: [{ label: "turn" }].concat(series.map((s) => s.options)),
      hooks: { draw: [markers] },
    };
    if (o.bars) opts.scales.x.range = (u, min, max) => [min - 0.5, max + 0.5];
    const u = new uPlot(opts, [xs].concat(series.map((s) => s.data)), target);
    u.over.addEventListener("click", () => {
      if (u.cursor.idx !== null && u.cursor.idx !== undefined) selectTurn(xs[u.cursor.idx]);
    });
    u.fmaiTitle = title;
    state.plots.push(u);
    return u;
  }

  function drawPlots() {
    destroyPlots();
    for (const id of ["plot-parts", "plot-cache", "plot-time", "plot-evictions"]) clear($(id));
    const turns = state.turns;
    if (!turns.length) return;
    const xs = turns.map((t) => t.turn);
    // 1. composition: stacked tokens per part
    const rows = PARTS.map((name) => turns.map((t) => t.part_tokens[name]));
    const s = stacked(PARTS, rows);
    plot($("plot-parts"), "composition", xs, s.names.map((name, i) => ({
      data: s.data[i],
      options: {
        label: PART_LABELS[name],
        stroke: COLORS[name],
        fill: COLORS[name] + "cc",
        width: 1,
        value: (u, v, si, idx) => (idx === null ? "--" : String(s.raw[i][idx])),
      },
    })));
    // 2. reused vs prefilled, stacked
    const reused = turns.map((t) => t.stats.reused_tokens || 0);
    const prefilled = turns.map((t) => t.stats.prefill_tokens);
    const c = stacked(["reused", "prefilled"], [reused, prefilled]);
    const cacheColors = { reused: "#2fa37a", prefilled: "#d9822b" };
    plot($("plot-cache"), "cache", xs, c.names.map((name, i) => ({
      data: c.data[i],
      options: {
        label: name,
        stroke: cacheColors[name],
        fill: cacheColors[name] + "bb",
        width: 1,
        value: (u, v, si, idx) => (idx === null ? "--" : String(c.raw[i][idx])),
      },
    })));
    // 3. time to first token and latency
    plot($("plot-time"), "time", xs, [
      { data: turns.map((t) => t.stats.ttft_ms), options: { label: "ttft ms", stroke: "#7b6fd6", width: 1.5 } },
      { data: turns.map((t) => t.stats.latency_ms), options: { label: "latency ms", stroke: "#c04040", width: 1.5 } },
    ]);
    // 4. evictions on the timeline: tokens evicted per turn, as bars
    plot($("plot-evictions"), "evictions", xs, [
      {
        data: turns.map((t) => t.evicted_tokens),
        options: {
          label: "evicted tokens",
          stroke: "#c82828",
          fill: "#c82828aa",
          paths: uPlot.paths.bars({ size: [0.8, 12] }),
          points: { show: false },
        },
      },
    ], { bars: true });
  }

  // -- wiring -------------------------------------------------------------------------------
  function boot() {
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const key = $("key").value.trim();
      $("key").value = "";
      if (key) start(key);
    });
    $("forget").addEventListener("click", () => lockOut("Key forgotten."));
    $("conv-more").addEventListener("click", () => loadConversations().catch(failed));
    $("earlier").addEventListener("click", () => earlierMessages().catch(failed));
    $("turn-prev").addEventListener("click", () => selectTurn((state.turn || 0) - 1).catch(failed));
    $("turn-next").addEventListener("click", () => selectTurn((state.turn || 0) + 1).catch(failed));
    $("chat-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const text = $("chat-input").value;
      if (!text.trim() || !state.cid) return;
      $("chat-input").value = "";
      send(text);
    });
    $("search-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const query = $("search-input").value;
      if (query.trim() && state.cid) search(query);
    });
    window.addEventListener("hashchange", () => {
      const cid = new URLSearchParams(location.hash.slice(1)).get("c");
      if (state.key && cid && cid !== state.cid) openConversation(cid).catch(failed);
    });
    const saved = sessionStorage.getItem(KEY_NAME);
    if (saved) start(saved);
    else {
      document.body.dataset.state = "locked";
      status("Enter the server's API key (any text when it runs without keys).");
    }
  }
  boot();
})();
