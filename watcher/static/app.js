"use strict";
// The status page: every few seconds, the counts per state (/summary), ONE page of batches
// (/batches?limit=&after=) and ONE page of jobs (/jobs?limit=&after=), so it costs the same at
// 100,000 jobs as at ten; an opened batch adds its totals and one page of its jobs (/jobs?batch=).
// Everything that comes from the server goes into the page through textContent,
// never innerHTML: job ids are checked, but labels and errors are user input.
(function () {
  const REFRESH_MS = 5000;
  const PAGE_SIZE = 50;
  const BATCH_PAGE_SIZE = 20;
  const byId = (id) => document.getElementById(id);
  const tbody = document.querySelector("#jobs tbody");
  const select = byId("state");
  const batchSelect = byId("batch-state");
  let timer = null;
  let loads = 0;
  let cursors = [null]; // the `after` of each page up to the one shown: Previous pops, Next pushes
  let nextCursor = null;
  let batchCursors = [null];
  let nextBatchCursor = null;
  // Opened batches: name -> the cursors of its job pages, as `cursors` is for the main table.
  const opened = new Map();

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function absolute(iso) {
    return iso ? String(iso).replace("T", " ").replace("Z", " UTC") : "";
  }

  function relative(iso) {
    if (!iso) return "–";
    const then = Date.parse(iso);
    if (Number.isNaN(then)) return String(iso);
    const seconds = Math.round((then - Date.now()) / 1000);
    const size = Math.abs(seconds);
    const text = size < 90 ? size + " s" : size < 5400 ? Math.round(size / 60) + " min" : Math.round(size / 3600) + " h";
    return seconds >= 0 ? "in " + text : text + " ago";
  }

  function nextPollCell(iso, expected) {
    // A poll a moment overdue is simply waiting for its turn in the budget.
    const due = iso && Date.parse(iso) <= Date.now();
    const td = el("td", due ? "due now" : relative(iso));
    if (iso) td.title = absolute(iso);
    if (expected) {
      // From the run times of finished jobs like it (the learned poll policy); absent until enough are known.
      const late = Date.parse(expected) <= Date.now();
      const line = el("div", late ? "expected to end by now" : "expected to end " + relative(expected), "muted expected");
      line.title = "half the jobs like it that ran this long had ended by " + absolute(expected);
      td.appendChild(line);
    }
    return td;
  }

  function outcomeCell(job) {
    const td = el("td");
    if (job.status) td.appendChild(el("div", "SendGrid: " + job.status));
    const results = job.results || {};
    const counts = ["requested_count", "created_count", "updated_count", "deleted_count", "errored_count"]
      .filter((key) => typeof results[key] === "number")
      .map((key) => key.replace("_count", "") + " " + results[key]);
    if (counts.length) td.appendChild(el("div", counts.join(", "), "muted"));
    if (job.detected_at) td.appendChild(el("div", "detected " + absolute(job.detected_at), "muted"));
    if (!td.childNodes.length) td.textContent = "–";
    return td;
  }

  function deliveriesCell(job) {
    const td = el("td");
    const list = el("ul", null, "plain");
    for (const d of job.deliveries || []) {
      const tries = d.attempts === 1 ? "1 attempt" : d.attempts + " attempts";
      const item = el("li", d.notifier + ": " + d.state + " (" + tries + ")", "delivery delivery-" + d.state);
      if (d.last_error) item.title = d.last_error;
      list.appendChild(item);
    }
    if (list.childNodes.length) td.appendChild(list); else td.textContent = "–";
    return td;
  }

  function labelsCell(job) {
    const td = el("td");
    for (const [key, value] of Object.entries(job.labels || {})) {
      td.appendChild(el("span", key + "=" + value, "label"));
    }
    return td;
  }

  function row(job) {
    const tr = el("tr");
    tr.dataset.jobId = job.id;
    tr.appendChild(el("td", job.id, "job"));
    const state = el("td");
    state.appendChild(el("span", job.state, "badge state-" + String(job.state).replace(/[^a-z_]/g, "")));
    tr.appendChild(state);
    tr.appendChild(el("td", job.polls, "num"));
    tr.appendChild(job.state === "watching" ? nextPollCell(job.next_poll_at, job.expected_finish_at) : el("td", "–"));
    tr.appendChild(outcomeCell(job));
    tr.appendChild(deliveriesCell(job));
    tr.appendChild(labelsCell(job));
    tr.appendChild(batchCell(job.batch));
    return tr;
  }

  function batchCell(name) {
    // A link that opens the batch on this page (a full load: the link can be shared as it is).
    const td = el("td", name ? null : "–", "job");
    if (name) {
      const link = el("a", name);
      link.href = "/?" + new URLSearchParams({ batch: name }).toString();
      td.appendChild(link);
    }
    return td;
  }

  function pathOf(base, params, after) {
    const query = new URLSearchParams(params);
    if (after) query.set("after", after);
    return base + "?" + query.toString();
  }

  function batchRow(batch) {
    const tr = el("tr", null, "batch");
    tr.dataset.batch = batch.name;
    const name = el("td");
    const toggle = el("button", batch.name, "toggle");
    toggle.type = "button";
    toggle.setAttribute("aria-expanded", String(opened.has(batch.name)));
    toggle.addEventListener("click", () => toggleBatch(batch.name));
    name.appendChild(toggle);
    tr.appendChild(name);
    const state = el("td");
    state.appendChild(el("span", batch.state, "badge state-" + String(batch.state).replace(/[^a-z_]/g, "")));
    tr.appendChild(state);
    const progress = el("td", null, "progress");
    progress.appendChild(el("div", batch.final + "/" + batch.jobs + " final"));
    const outcomes = Object.entries(batch.outcomes || {}).map(([outcome, count]) => count + " " + outcome);
    if (outcomes.length) progress.appendChild(el("div", outcomes.join(", "), "muted"));
    tr.appendChild(progress);
    const worst = el("td");
    if (batch.status) worst.appendChild(el("span", batch.status, "badge state-" + String(batch.status).replace(/[^a-z_]/g, "")));
    else worst.textContent = "–";
    tr.appendChild(worst);
    const started = el("td", relative(batch.started_at));
    started.title = absolute(batch.started_at);
    tr.appendChild(started);
    const finished = el("td", batch.finished_at ? relative(batch.finished_at) : "–");
    if (batch.finished_at) finished.title = absolute(batch.finished_at);
    tr.appendChild(finished);
    return tr;
  }

  function jobsTable(jobs) {
    // The same columns as the main table, so a batch's jobs read the same way.
    const table = el("table", null, "batch-jobs");
    const head = el("tr");
    for (const title of ["Job", "State", "Polls", "Next poll", "Outcome", "Deliveries", "Labels", "Batch"]) {
      const th = el("th", title);
      th.scope = "col";
      head.appendChild(th);
    }
    table.appendChild(el("thead")).appendChild(head);
    table.appendChild(el("tbody")).replaceChildren(...jobs.map(row));
    return table;
  }

  function batchDetail(name, detail) {
    const tr = el("tr", null, "batch-detail");
    tr.dataset.batchDetail = name;
    const td = el("td");
    td.colSpan = 6;
    tr.appendChild(td);
    if (detail.problem) {
      td.appendChild(el("p", detail.problem, "problem"));
      return tr;
    }
    const totals = Object.entries(detail.batch.totals || {}).map(([key, n]) => key.replace("_count", "") + " " + n);
    td.appendChild(el("p", "Totals: " + (totals.join(", ") || "–"), "muted totals"));
    td.appendChild(jobsTable(detail.jobs));
    const pages = opened.get(name);
    const pager = el("nav", null, "pager");
    pager.setAttribute("aria-label", "Pages of the jobs of " + name);
    const previous = el("button", "‹ Previous");
    previous.type = "button";
    previous.disabled = pages.length <= 1;
    previous.addEventListener("click", () => { pages.pop(); load(); });
    const next = el("button", "Next ›");
    next.type = "button";
    next.disabled = !detail.next;
    next.addEventListener("click", () => { pages.push(detail.next); load(); });
    pager.append(previous, el("span", "page " + pages.length + " of its jobs", "muted"), next);
    td.appendChild(pager);
    return tr;
  }

  async function loadDetail(name) {
    // One batch's view and one page of its jobs; a batch that went away is said so, not fatal.
    const pages = opened.get(name);
    const encoded = encodeURIComponent(name);
    try {
      const [batch, jobs] = await Promise.all([
        getJson("/batches/" + encoded),
        getJson(pathOf("/jobs", { batch: name, limit: String(PAGE_SIZE) }, pages[pages.length - 1])),
      ]);
      return { batch: batch.body, jobs: jobs.body, next: jobs.next };
    } catch (error) {
      return { problem: error instanceof Problem ? error.message : String(error) };
    }
  }

  function batchesPath() {
    // Open batches by default: the ones that matter now, and few, whatever the history holds.
    const params = { limit: String(BATCH_PAGE_SIZE) };
    if (batchSelect.value) params.state = batchSelect.value;
    return pathOf("/batches", params, batchCursors[batchCursors.length - 1]);
  }

  async function anyBatch(listed) {
    // An empty page of open batches may hide finished ones: then one more look decides whether to show the section.
    if (listed.length > 0 || batchCursors.length > 1) return true;
    if (!batchSelect.value) return false;
    return (await getJson("/batches?limit=1")).body.length > 0;
  }

  function showBatches(batches, next, details, any) {
    // An opened batch that is not on this page (a link to an older one) is shown first.
    const listed = new Set(batches.map((batch) => batch.name));
    const extra = [...details.keys()].filter((name) => !listed.has(name) && details.get(name).batch);
    const rows = [];
    for (const batch of [...extra.map((name) => details.get(name).batch), ...batches]) {
      rows.push(batchRow(batch));
      if (details.has(batch.name)) rows.push(batchDetail(batch.name, details.get(batch.name)));
    }
    for (const name of details.keys()) {
      if (!listed.has(name) && !details.get(name).batch) rows.push(batchDetail(name, details.get(name)));
    }
    document.querySelector("#batches tbody").replaceChildren(...rows);
    nextBatchCursor = next;
    byId("batches-section").hidden = !any && rows.length === 0;
    byId("no-batches").hidden = rows.length > 0;
    byId("batch-previous").disabled = batchCursors.length <= 1;
    byId("batch-next").disabled = !next;
    byId("batch-page").textContent = "page " + batchCursors.length;
  }

  function toggleBatch(name) {
    if (opened.has(name)) opened.delete(name); else opened.set(name, [null]);
    load();
  }

  function countsText(counts, one, many) {
    const states = Object.keys(counts || {}).filter((state) => counts[state] > 0).sort();
    const total = states.reduce((sum, state) => sum + counts[state], 0);
    const head = total + " " + (total === 1 ? one : many);
    return states.length ? head + ": " + states.map((state) => counts[state] + " " + state).join(", ") : head;
  }

  function showProblem(text) {
    const problem = byId("problem");
    problem.textContent = text || "";
    problem.hidden = !text;
  }

  async function getJson(path) {
    const response = await fetch(path, {
      credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" },
    });
    if (response.status === 401) throw new Problem("Not signed in: open this page once as /?token=YOUR_TOKEN.");
    if (!response.ok) {
      let detail = "HTTP " + response.status;
      try { detail += ": " + (await response.json()).message; } catch (ignored) { /* not JSON */ }
      throw new Problem("Cannot load jobs (" + detail + "); retrying.");
    }
    return { body: await response.json(), next: response.headers.get("X-Next-Cursor") };
  }

  function Problem(message) { this.message = message; }

  function jobsPath() {
    // One page only, whatever the number of jobs: the cursor of this page, if not the first.
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (select.value) query.set("state", select.value);
    const after = cursors[cursors.length - 1];
    if (after) query.set("after", after);
    return "/jobs?" + query.toString();
  }

  function showPage(jobs, next) {
    tbody.replaceChildren(...jobs.map(row));
    nextCursor = next;
    byId("empty").hidden = jobs.length > 0;
    byId("previous").disabled = cursors.length <= 1;
    byId("next").disabled = !next;
    byId("page").textContent = "page " + cursors.length;
  }

  async function load() {
    clearTimeout(timer);
    const generation = ++loads;
    try {
      const names = [...opened.keys()];
      const [summary, page, batches, ...details] = await Promise.all([
        getJson("/summary"), getJson(jobsPath()), getJson(batchesPath()), ...names.map(loadDetail),
      ]);
      const any = await anyBatch(batches.body);
      if (generation !== loads) return; // a newer load (page or filter change) has started
      showBatches(batches.body, batches.next, new Map(names.map((name, i) => [name, details[i]])), any);
      byId("summary").textContent = countsText(summary.body.jobs, "job", "jobs");
      byId("deliveries").textContent = countsText(summary.body.deliveries, "delivery", "deliveries");
      showPage(page.body, page.next);
      byId("updated").textContent = "updated " + new Date().toLocaleTimeString();
      showProblem("");
    } catch (error) {
      if (generation !== loads) return;
      showProblem(error instanceof Problem ? error.message : "Cannot reach the watcher (" + error + "); retrying.");
    } finally {
      if (generation === loads) timer = setTimeout(load, REFRESH_MS);
    }
  }

  function turn(forward) {
    if (forward && nextCursor) cursors.push(nextCursor);
    else if (!forward && cursors.length > 1) cursors.pop();
    else return;
    load();
  }

  function turnBatches(forward) {
    if (forward && nextBatchCursor) batchCursors.push(nextBatchCursor);
    else if (!forward && batchCursors.length > 1) batchCursors.pop();
    else return;
    load();
  }

  function linkedBatch(params) {
    // `/?batch=NAME`, or `/batches/NAME` (the link in a batch summary, opened in a browser).
    const match = /^\/batches\/([^/]+)$/.exec(window.location.pathname);
    const name = params.get("batch") || (match ? decodeURIComponent(match[1]) : null);
    return name && /^[A-Za-z0-9_.:-]{1,128}$/.test(name) ? name : null;
  }

  function init() {
    const params = new URLSearchParams(window.location.search);
    if (params.has("token")) {
      // The server has set the cookie; keep the token out of the address bar and history.
      params.delete("token");
      const rest = params.toString();
      window.history.replaceState(null, "", window.location.pathname + (rest ? "?" + rest : ""));
    }
    const linked = linkedBatch(params);
    if (linked) opened.set(linked, [null]);
    const wanted = params.get("state");
    if (wanted && [...select.options].some((option) => option.value === wanted)) select.value = wanted;
    select.addEventListener("change", () => {
      const url = new URL(window.location.href);
      if (select.value) url.searchParams.set("state", select.value); else url.searchParams.delete("state");
      window.history.replaceState(null, "", url);
      cursors = [null];
      load();
    });
    byId("filters").addEventListener("submit", (event) => event.preventDefault());
    byId("previous").addEventListener("click", () => turn(false));
    byId("next").addEventListener("click", () => turn(true));
    const batchState = params.get("batches");
    if (batchState !== null && [...batchSelect.options].some((option) => option.value === batchState)) {
      batchSelect.value = batchState;
    }
    batchSelect.addEventListener("change", () => {
      const url = new URL(window.location.href);
      url.searchParams.set("batches", batchSelect.value);
      window.history.replaceState(null, "", url);
      batchCursors = [null];
      load();
    });
    byId("batch-filters").addEventListener("submit", (event) => event.preventDefault());
    byId("batch-previous").addEventListener("click", () => turnBatches(false));
    byId("batch-next").addEventListener("click", () => turnBatches(true));
    load();
  }

  init();
})();
