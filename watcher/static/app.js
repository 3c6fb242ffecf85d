"use strict";
// The status page: every few seconds, the counts per state (/summary) and ONE page of jobs
// (/jobs?limit=&after=), so it costs the same at 100,000 jobs as at ten.
// Everything that comes from the server goes into the page through textContent,
// never innerHTML: job ids are checked, but labels and errors are user input.
(function () {
  const REFRESH_MS = 5000;
  const PAGE_SIZE = 50;
  const byId = (id) => document.getElementById(id);
  const tbody = document.querySelector("#jobs tbody");
  const select = byId("state");
  let timer = null;
  let loads = 0;
  let cursors = [null]; // the `after` of each page up to the one shown: Previous pops, Next pushes
  let nextCursor = null;

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

  function nextPollCell(iso) {
    // A poll a moment overdue is simply waiting for its turn in the budget.
    const due = iso && Date.parse(iso) <= Date.now();
    const td = el("td", due ? "due now" : relative(iso));
    if (iso) td.title = absolute(iso);
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
    tr.appendChild(job.state === "watching" ? nextPollCell(job.next_poll_at) : el("td", "–"));
    tr.appendChild(outcomeCell(job));
    tr.appendChild(deliveriesCell(job));
    tr.appendChild(labelsCell(job));
    return tr;
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
      const [summary, page] = await Promise.all([getJson("/summary"), getJson(jobsPath())]);
      if (generation !== loads) return; // a newer load (page or filter change) has started
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

  function init() {
    const params = new URLSearchParams(window.location.search);
    if (params.has("token")) {
      // The server has set the cookie; keep the token out of the address bar and history.
      params.delete("token");
      const rest = params.toString();
      window.history.replaceState(null, "", window.location.pathname + (rest ? "?" + rest : ""));
    }
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
    load();
  }

  init();
})();
