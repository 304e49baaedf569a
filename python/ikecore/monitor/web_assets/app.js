// The IP Security Monitor page of ikecore: the tree on the left, the results pane on the
// right. Plain JavaScript, no library. The table renders only the rows in view and asks
// the gateway for those (offset/limit); every view refreshes itself every 1.5 s.
"use strict";

(function () {
  const ROW = 22;            // px per row (app.css: #grid td height)
  const REFRESH_MS = 1500;
  const EXTRA = 100;         // rows fetched beyond the visible ones, each side
  const state = {
    description: null, mode: "main-mode", view: "security-associations",
    perView: {},              // "mode/view" -> {columns, sort, filter}
    total: 0, page: null,     // {offset, rows, key}
    seq: 0, shownKey: "", refreshes: 0, first: 0,
  };
  window.__ikecoreLoadedAt = window.__ikecoreLoadedAt || Date.now();

  // --- the token: from ?token= once, then kept for this tab and sent as a header ---
  const params = new URLSearchParams(location.search);
  if (params.get("token")) {
    sessionStorage.setItem("ikecore-token", params.get("token"));
    params.delete("token");
    history.replaceState(null, "", location.pathname + (params.toString() ? "?" + params : ""));
  }
  const token = sessionStorage.getItem("ikecore-token");

  async function api(path) {
    const headers = token ? { Authorization: "Bearer " + token } : {};
    const response = await fetch(path, { headers, cache: "no-store" });
    const body = await response.json().catch(() => ({ ok: false, error: response.statusText }));
    if (!response.ok || body.ok === false) throw new Error(body.error || ("HTTP " + response.status));
    return body;
  }

  const $ = (id) => document.getElementById(id);
  const viewKey = () => state.mode + "/" + state.view;
  function settings() {
    const key = viewKey();
    if (!state.perView[key]) {
      const d = state.description.views[state.mode][state.view];
      state.perView[key] = { columns: d.default.slice(), sort: "", filter: "" };
    }
    return state.perView[key];
  }
  const titles = () => {
    const out = {};
    for (const c of state.description.views[state.mode][state.view].columns) out[c.key] = c.title;
    return out;
  };
  function statisticTitle(key) {
    const known = state.description.statistic_titles[key];
    if (known) return known;
    return key.split("_").map((w) => w.charAt(0).toUpperCase() + w.slice(1)).join(" ")
      .replace("Sas", "SAs").replace("Spi", "SPI");
  }

  // --- the tree ---
  function drawTree() {
    const tree = $("tree");
    tree.textContent = "";
    for (const [mode, views] of state.description.tree) {
      const head = document.createElement("div");
      head.className = "mode";
      head.textContent = state.description.mode_titles[mode];
      tree.appendChild(head);
      for (const view of views) {
        const a = document.createElement("a");
        a.href = "#" + mode + "/" + view;
        a.dataset.mode = mode;
        a.dataset.view = view;
        a.textContent = state.description.views[mode][view].title;
        tree.appendChild(a);
      }
    }
  }

  function choose(mode, view) {
    state.mode = mode;
    state.view = view;
    state.page = null;
    state.total = 0;
    $("scroller").scrollTop = 0;
    for (const a of document.querySelectorAll("#tree a")) {
      a.classList.toggle("selected", a.dataset.mode === mode && a.dataset.view === view);
    }
    const d = state.description.views[mode][view];
    $("title").textContent = state.description.mode_titles[mode] + " \u203a " + d.title;
    document.body.classList.toggle("statistics", view === "statistics");
    document.body.dataset.view = viewKey();
    $("filter").value = settings().filter;
    drawChooser();
    refresh(true);
  }

  // --- columns: added and removed from the view's list ---
  function drawChooser() {
    const box = $("columns");
    box.textContent = "";
    const chosen = settings().columns;
    for (const c of state.description.views[state.mode][state.view].columns) {
      const label = document.createElement("label");
      const input = document.createElement("input");
      input.type = "checkbox";
      input.dataset.col = c.key;
      input.checked = chosen.includes(c.key);
      input.addEventListener("change", () => {
        const s = settings();
        if (input.checked) { if (!s.columns.includes(c.key)) s.columns.push(c.key); }
        else s.columns = s.columns.filter((k) => k !== c.key);
        if (s.sort && !s.columns.includes(s.sort.split(":")[0])) s.sort = "";
        state.page = null;
        refresh(true);
      });
      label.append(input, " " + c.title);
      box.appendChild(label);
    }
  }

  // --- fetching ---
  function visibleCount() {
    return Math.max(1, Math.floor(($("scroller").clientHeight - ROW) / ROW));
  }

  function query(offset, limit) {
    const s = settings();
    const q = new URLSearchParams({ mode: state.mode, view: state.view, offset, limit });
    if (s.columns.length) q.set("columns", s.columns.join(","));
    if (s.sort) q.set("sort", s.sort);
    for (const w of s.filter.split(/[\s,]+/)) if (w) q.append("where", w);
    return q;
  }

  async function refresh(force) {
    if (!state.description) return;
    const s = settings();
    if (!s.columns.length) { state.page = { offset: 0, rows: [], key: "" }; state.total = 0; draw(); return; }
    const first = Math.floor($("scroller").scrollTop / ROW);
    const want = visibleCount();
    const stats = state.view === "statistics";
    const offset = stats ? 0 : Math.max(0, first - EXTRA);
    const limit = stats ? 1000 : want + 2 * EXTRA;
    const q = query(offset, limit);
    const key = viewKey() + "?" + query(0, 0).toString();
    const seq = ++state.seq;
    try {
      const answer = await api("/api/view?" + q.toString());
      if (seq !== state.seq) return;        // a newer request was made meanwhile
      state.page = { offset: answer.offset, rows: answer.rows, key, columns: answer.columns };
      state.total = answer.total;
      $("error").textContent = "";
      const down = (answer.workers || []).filter((w) => !w.answered);
      $("status").textContent = "updated " + new Date().toLocaleTimeString() +
        (answer.workers && answer.workers.length ? " \u00b7 " + answer.workers.length + " workers" : "") +
        (down.length ? " \u00b7 workers not answering: " + down.map((w) => w.worker).join(", ") : "");
      state.refreshes += 1;
      document.body.dataset.refreshes = String(state.refreshes);
    } catch (err) {
      if (seq !== state.seq) return;
      $("error").textContent = String(err.message || err);
      if (force) { state.page = { offset: 0, rows: [], key, columns: s.columns }; state.total = 0; }
    }
    draw();
    if (stats) drawCharts();
  }

  // --- the table: only the rows in view ---
  function draw() {
    const page = state.page;
    if (!page) return;
    const s = settings();
    const columns = page.columns || s.columns;
    const names = titles();
    const scroller = $("scroller");
    $("spacer").style.height = (state.total * ROW + 2 * ROW) + "px";  // a row of slack: the last row shows whole
    const grid = $("grid");
    grid.style.top = scroller.scrollTop + "px";
    const [sortColumn, order] = s.sort ? s.sort.split(":") : ["", ""];
    const headKey = viewKey() + "|" + columns.join(",") + "|" + s.sort;
    if (headKey !== state.headKey) drawHead(grid, columns, names, sortColumn, order, headKey);
    const first = Math.min(Math.floor(scroller.scrollTop / ROW), Math.max(0, state.total - 1));
    const count = visibleCount();
    const body = document.createDocumentFragment();
    let shown = 0;
    for (let i = first; i < Math.min(first + count, state.total); i++) {
      const row = page.rows[i - page.offset];
      if (!row) break;
      const tr = document.createElement("tr");
      tr.dataset.index = String(i);
      for (const c of columns) {
        const td = document.createElement("td");
        td.dataset.col = c;
        let value = row[c];
        if (c === "statistic" && state.view === "statistics") value = statisticTitle(value);
        td.textContent = value === null || value === undefined ? "" : Array.isArray(value) ? value.join(";") : String(value);
        tr.appendChild(td);
      }
      body.appendChild(tr);
      shown += 1;
    }
    grid.tBodies[0].replaceChildren(body);
    state.first = first;
    $("count").textContent = state.total.toLocaleString() + (state.total === 1 ? " row" : " rows");
    document.body.dataset.painted = String(shown);
    document.body.dataset.total = String(state.total);
    document.body.dataset.key = page.key;
    if (!window.__ikecoreFirstPaint && shown > 0) window.__ikecoreFirstPaint = performance.now();
    // rows scrolled into view that this page does not hold: ask for them
    if (shown < Math.min(count, state.total - first) && state.view !== "statistics") scheduleFetch();
  }

  // the header row, rebuilt only when the columns or the sort change
  function drawHead(grid, columns, names, sortColumn, order, headKey) {
    const head = document.createElement("tr");
    for (const c of columns) {
      const th = document.createElement("th");
      th.dataset.col = c;
      th.textContent = names[c] || c;
      if (c === sortColumn) th.className = "sorted" + (order === "desc" ? " desc" : "");
      th.addEventListener("click", () => sortBy(c));
      head.appendChild(th);
    }
    grid.tHead.replaceChildren(head);
    state.headKey = headKey;
  }

  let fetchTimer = 0;
  function scheduleFetch() {
    clearTimeout(fetchTimer);
    fetchTimer = setTimeout(() => refresh(false), 60);
  }

  function sortBy(column) {
    const s = settings();
    const [current, order] = s.sort ? s.sort.split(":") : ["", ""];
    s.sort = current === column && order !== "desc" ? column + ":desc" : column;
    $("scroller").scrollTop = 0;
    refresh(true);
  }

  // --- the charts (statistics view) ---
  async function drawCharts() {
    let series;
    try { series = await api("/api/series?seconds=300"); } catch (err) { return; }
    lineChart($("rate"), series.sas_per_second, "SAs/s");
    const labels = series.buckets.map((b) => b === "+Inf" ? ">60s" : (parseFloat(b) * 1000 >= 1000 ?
      parseFloat(b) + "s" : Math.round(parseFloat(b) * 1000) + "ms"));
    barChart($("latency"), series.phase1_histogram, labels);
    document.body.dataset.series = String(series.times.length);
  }

  function frame(canvas) {
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.font = "10px system-ui, sans-serif";
    ctx.fillStyle = "#5a6372";
    ctx.strokeStyle = "#c8cfd9";
    return ctx;
  }

  function lineChart(canvas, values, unit) {
    const ctx = frame(canvas);
    const w = canvas.width, h = canvas.height, left = 40, bottom = 18;
    const max = Math.max(1, ...values);
    ctx.beginPath(); ctx.moveTo(left, 4); ctx.lineTo(left, h - bottom); ctx.lineTo(w - 4, h - bottom); ctx.stroke();
    ctx.fillText(String(Math.round(max)), 4, 12);
    ctx.fillText("0", 4, h - bottom);
    ctx.fillText(unit + ", last " + values.length + " s", left + 4, h - 4);
    if (!values.length) return;
    ctx.strokeStyle = "#2f6fd1";
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    const step = (w - left - 8) / Math.max(1, values.length - 1);
    values.forEach((v, i) => {
      const x = left + i * step, y = h - bottom - (v / max) * (h - bottom - 8);
      if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y);
    });
    ctx.stroke();
    ctx.lineWidth = 1;
  }

  function barChart(canvas, counts, labels) {
    const ctx = frame(canvas);
    const w = canvas.width, h = canvas.height, left = 40, bottom = 30;
    const max = Math.max(1, ...counts);
    ctx.beginPath(); ctx.moveTo(left, 4); ctx.lineTo(left, h - bottom); ctx.lineTo(w - 4, h - bottom); ctx.stroke();
    ctx.fillText(String(max), 4, 12);
    ctx.fillText("0", 4, h - bottom);
    const width = (w - left - 8) / Math.max(1, counts.length);
    counts.forEach((c, i) => {
      const x = left + i * width, barH = (c / max) * (h - bottom - 8);
      ctx.fillStyle = "#2f6fd1";
      ctx.fillRect(x + 1, h - bottom - barH, width - 2, barH);
      ctx.fillStyle = "#5a6372";
      ctx.save(); ctx.translate(x + width / 2, h - bottom + 4); ctx.rotate(Math.PI / 5);
      ctx.fillText(labels[i] || "", 0, 6); ctx.restore();
    });
  }

  // --- start ---
  async function start() {
    try {
      state.description = await api("/api/views");
    } catch (err) {
      $("error").textContent = String(err.message || err);
      return;
    }
    drawTree();
    $("tree").addEventListener("click", (event) => {
      const a = event.target.closest("a");
      if (!a) return;
      event.preventDefault();
      history.replaceState(null, "", "#" + a.dataset.mode + "/" + a.dataset.view);
      choose(a.dataset.mode, a.dataset.view);
    });
    let filterTimer = 0;
    $("filter").addEventListener("input", () => {
      clearTimeout(filterTimer);
      filterTimer = setTimeout(() => {
        settings().filter = $("filter").value.trim();
        $("scroller").scrollTop = 0;
        refresh(true);
      }, 250);
    });
    $("scroller").addEventListener("scroll", () => draw(), { passive: true });
    window.addEventListener("resize", () => draw());
    const fromHash = () => {
      const [mode, view] = location.hash.slice(1).split("/");
      if (state.description.views[mode] && state.description.views[mode][view]) return [mode, view];
      return null;
    };
    window.addEventListener("hashchange", () => {
      const chosen = fromHash();
      if (chosen && (chosen[0] !== state.mode || chosen[1] !== state.view)) choose(chosen[0], chosen[1]);
    });
    const chosen = fromHash() || ["main-mode", "security-associations"];
    choose(chosen[0], chosen[1]);
    setInterval(() => refresh(false), REFRESH_MS);
  }
  start();
})();
