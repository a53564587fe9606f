// t8k-engine's status page: reads /api/* and follows /api/events. Every value from the server is put in
// the page as text (never as HTML): log lines and reasons are untrusted output.
"use strict";

const S = {
  info: { actions: false, fleet: false },
  status: null,
  skew: 0, // browser clock minus server clock, in ms
  running: null, // { job_id, started: ms, steps: [...] }
  log: { job: null, bytes: 0, pending: [] },
  view: { job: null, bytes: 0, live: false },
};
const enc = new TextEncoder();
const $ = (id) => document.getElementById(id);

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat()) {
    if (kid === undefined || kid === null || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

const secs = (ms) => (ms == null ? "–" : ms < 10000 ? (ms / 1000).toFixed(1) + "s" : Math.round(ms / 1000) + "s");
const short = (c) => (typeof c === "string" ? c.slice(0, 10) : "?");
const when = (t) => (t ? new Date(t).toLocaleString() : "–");
const serverNow = () => Date.now() - S.skew;
const mib = (kib) => Math.round((kib || 0) / 1024) + " MiB";
const badge = (result) => h("span", { class: "badge r-" + result }, String(result).replace("_", " "));

function toast(text) {
  const t = $("toast");
  t.textContent = text;
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (t.hidden = true), 6000);
}

async function getJSON(url) {
  const r = await fetch(url, { headers: { accept: "application/json" } });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

// ---- actions (only when the server has tokens) ----
function askToken() {
  return new Promise((resolve) => {
    const d = $("token-dialog");
    $("token-input").value = "";
    d.returnValue = "";
    d.onclose = () => resolve(d.returnValue === "ok" ? $("token-input").value : null);
    d.showModal();
  });
}

async function act(path, body) {
  let token = sessionStorage.getItem("t8k-token");
  if (!token) token = await askToken();
  if (!token) return;
  const r = await fetch(path, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: "Bearer " + token },
    body: JSON.stringify(body || {}),
  });
  const answer = await r.json().catch(() => ({}));
  if (r.status === 401) sessionStorage.removeItem("t8k-token");
  else sessionStorage.setItem("t8k-token", token);
  toast(r.ok ? describe(path, answer) : "refused: " + (answer.error || r.statusText));
}

function describe(path, a) {
  if (a.cancelling) return "cancelling job " + a.cancelling;
  return (path.endsWith("rollback") ? "rollback queued: " : "queued: ") + (a.line || (a.lines || []).join("; "));
}

function actionButton(label, onclick, danger) {
  return S.info.actions ? h("button", { class: "action" + (danger ? " danger" : ""), onclick }, label) : null;
}

// ---- timeline ----
function lanes(steps) {
  const order = [];
  const by = new Map();
  for (const s of steps) {
    const lane = s.branch || "main";
    if (!by.has(lane)) { by.set(lane, []); order.push(lane); }
    by.get(lane).push(s);
  }
  return order.map((name) => [name, by.get(name)]);
}

function renderTimeline(el, steps, totalMs) {
  const total = Math.max(totalMs || 0, ...steps.map((s) => (s.start_ms || 0) + (s.wall_ms || 0)), 1);
  el.replaceChildren(...lanes(steps).map(([name, list]) =>
    h("div", { class: "lane", dataset: { lane: name } },
      h("div", { class: "lane-name", title: name }, name),
      h("div", { class: "track" }, list.map((s) => bar(s, total))))));
}

function bar(s, total) {
  const state = s.ok === null || s.ok === undefined ? "running" : String(s.ok);
  const cpu = (s.user_cpu_ms || 0) + (s.sys_cpu_ms || 0);
  const figures = state === "running" ? "running" : "cpu " + secs(cpu) + " · " + mib(s.max_rss_kib);
  const el = h("div", {
    class: "bar",
    dataset: { step: s.name, ok: s.cancelled ? "false" : state },
    title: s.name + (s.branch ? " [" + s.branch + "]" : "") + ": " + secs(s.wall_ms) + ", " + figures,
  }, h("div", { class: "step-name" }, s.name + " " + secs(s.wall_ms)), h("div", { class: "figures" }, figures));
  el.style.left = (100 * (s.start_ms || 0) / total).toFixed(3) + "%";
  el.style.width = (100 * Math.max(s.wall_ms || 0, total / 200) / total).toFixed(3) + "%";
  return el;
}

// ---- the running job ----
function setRunning(r) {
  if (!r) {
    S.running = null;
    $("running").hidden = true;
    return;
  }
  const started = Date.parse(r.started_at);
  if (!S.running || S.running.job_id !== r.job_id) {
    S.running = { job_id: r.job_id, started, steps: r.steps.slice(), meta: r };
    startLog(r.job_id);
  } else {
    S.running.meta = r;
    // Keep what events said; take the document's figures for ended steps.
    S.running.steps = r.steps.slice();
  }
  $("running").hidden = false;
  $("running-title").textContent = r.target + " " + r.command;
  $("cancel").hidden = !S.info.actions;
  drawRunning();
}

function drawRunning() {
  const run = S.running;
  if (!run) return;
  const now = serverNow();
  const steps = run.steps.map((s) => (s.ok === null || s.ok === undefined)
    ? { ...s, wall_ms: Math.max(0, now - run.started - (s.start_ms || 0)) } : s);
  const r = run.meta;
  const current = steps.filter((s) => s.ok === null || s.ok === undefined).map((s) => s.name).join(", ");
  $("running-meta").textContent = "job " + run.job_id + " · " + r.trigger + ":" + r.line + " · " +
    secs(now - run.started) + (current ? " · step " + current : "") + (r.requested_by ? " · asked by " + r.requested_by : "");
  renderTimeline($("running-timeline"), steps, now - run.started);
}

function onStep(e, finished) {
  const run = S.running;
  if (!run || e.job_id !== run.job_id) return;
  if (finished) {
    const open = run.steps.find((s) => s.ok == null && s.name === e.step.name && s.branch === e.step.branch);
    if (open) Object.assign(open, e.step); else run.steps.push(e.step);
  } else if (!run.steps.some((s) => s.ok == null && s.name === e.name && s.branch === e.branch)) {
    run.steps.push({ name: e.name, branch: e.branch, start_ms: Date.parse(e.at) - run.started, wall_ms: 0, ok: null });
  }
  drawRunning();
}

// The log: the text so far from the API, then `log` events from that byte offset on.
async function startLog(job) {
  S.log = { job, bytes: -1, pending: [] };
  $("log").textContent = "";
  const r = await fetch("/api/jobs/" + job + "/log");
  if (S.log.job !== job) return;
  const text = r.ok ? await r.text() : "";
  S.log.bytes = r.ok ? Number(r.headers.get("x-log-bytes") || enc.encode(text).length) : 0;
  appendLines($("log"), text);
  const pending = S.log.pending;
  S.log.pending = [];
  pending.forEach(onLog);
}

function onLog(chunk) {
  if (!S.log || chunk.job_id !== S.log.job) return;
  if (S.log.bytes < 0) { S.log.pending.push(chunk); return; }
  const end = chunk.offset + enc.encode(chunk.text).length;
  if (end <= S.log.bytes) return; // already shown
  if (chunk.offset > S.log.bytes) { startLog(S.log.job); return; } // a gap: read it again
  appendLines($("log"), chunk.text);
  S.log.bytes = end;
  if (S.view.live && S.view.job === chunk.job_id) appendLines($("job-log"), chunk.text);
}

function appendLines(pre, text) {
  if (!text) return;
  const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  const frag = document.createDocumentFragment();
  for (const line of text.replace(/\n$/, "").split("\n")) frag.append(h("div", { class: "line" }, line));
  pre.append(frag);
  if (atEnd) pre.scrollTop = pre.scrollHeight;
}

// ---- status ----
function onStatus(doc) {
  S.status = doc;
  S.skew = Date.now() - Date.parse(doc.generated_at);
  const st = $("engine-state");
  st.dataset.state = doc.engine.state;
  st.textContent = doc.engine.state === "running" ? "building" : doc.engine.state;
  const warnings = doc.warnings.length
    ? h("details", {}, h("summary", {}, doc.warnings.length + " warning(s)"), doc.warnings.map((w) => h("div", {}, w)))
    : null;
  $("banner").hidden = !doc.idle_because && !warnings;
  $("banner").replaceChildren(...[doc.idle_because && h("div", {}, doc.idle_because), warnings].filter(Boolean));
  setRunning(doc.running);
  renderTargets(doc);
  renderQueue(doc);
}

function renderTargets(doc) {
  $("targets").replaceChildren(...doc.targets.map((t) => {
    const live = t.live;
    const last = t.last_job;
    return h("div", { class: "target", dataset: { target: t.target } },
      h("div", {},
        h("div", {}, h("span", { class: "name" }, t.target), " ", last ? badge(last.result) : null),
        h("div", { class: "live-release muted" }, live
          ? ["live ", h("code", {}, short(live.backend)), " / ", h("code", {}, short(live.frontend)),
            " · released " + when(live.released_at) + " in " + secs(live.duration_ms) + " · ",
            h("a", { href: "#/job/" + live.job_id }, "release " + live.id)]
          : "no release recorded")),
      h("div", { class: "buttons" },
        actionButton("Build", () => act("/api/trigger", { target: t.target })),
        live ? actionButton("Roll back", () => {
          if (confirm("Roll " + t.target + " back to the previous release?")) act("/api/rollback", { target: t.target });
        }, true) : null),
      t.last_failure ? h("div", { class: "failure" }, "last failure " + when(t.last_failure.started_at) + ": " +
        (t.last_failure.reason || t.last_failure.result) + " ", h("a", { href: "#/job/" + t.last_failure.job_id }, "job")) : null);
  }));
}

function renderQueue(doc) {
  const items = [
    ...doc.queue.map((q) => h("li", {}, h("code", {}, q.name), " ", h("span", { class: "muted" }, q.state),
      q.jobs.length ? h("div", { class: "muted mono" }, q.jobs.join("; ")) : null)),
    ...doc.claimed.map((c) => h("li", {}, h("code", {}, c), " ", h("span", { class: "muted" }, "claimed, runs first at the next start"))),
    ...doc.set_aside.map((a) => h("li", {}, h("code", {}, a.name), " ", h("span", { class: "failure" }, "set aside: " + a.reason))),
  ];
  $("queue").replaceChildren(items.length ? h("ul", { class: "plain" }, items) : h("p", { class: "muted" }, "empty"));
}

async function loadHistory() {
  try {
    const hist = await getJSON("/api/history?limit=30");
    $("history").replaceChildren(h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, "job"), h("th", {}, "target"), h("th", { class: "hide-narrow" }, "command"),
        h("th", {}, "result"), h("th", {}, "took"), h("th", { class: "hide-narrow" }, "started"))),
      h("tbody", {}, hist.jobs.map((j) => h("tr", { dataset: { job: j.job_id } },
        h("td", {}, h("a", { href: "#/job/" + j.job_id, class: "mono" }, j.job_id.slice(-8))),
        h("td", {}, j.target), h("td", { class: "hide-narrow" }, j.command),
        h("td", {}, badge(j.result), j.requested_by ? h("div", { class: "muted" }, "by " + j.requested_by) : null),
        h("td", {}, secs(j.duration_ms)), h("td", { class: "hide-narrow" }, when(j.started_at)))))));
    $("requests").replaceChildren(hist.requests.length ? h("ul", { class: "plain" }, hist.requests.slice(0, 10).map((r) =>
      h("li", {}, h("span", { class: "muted" }, when(r.at) + " "), h("b", {}, r.by), " " + r.action + ": " + r.detail)))
      : h("p", { class: "muted" }, "none through this server"));
  } catch (e) {
    $("history").textContent = "cannot read the history: " + e.message;
  }
}

// The kept releases of each install (what `t8k-engine releases --json` prints), with a roll back to each
// one that can be put back.
async function loadReleases() {
  try {
    const installs = await getJSON("/api/releases");
    $("releases").replaceChildren(...installs.filter((i) => i.releases.length).map((i) =>
      h("div", { class: "install", dataset: { install: i.install } },
        h("h3", {}, i.install + (i.install === "main" ? " (main and multi/*)" : "")),
        h("ul", { class: "plain" }, i.releases.map((r) => h("li", { dataset: { release: r.id, state: r.state } },
          h("b", {}, "#" + r.id), " ", badge(r.state), " ", h("code", {}, short(r.backend)), " / ",
          h("code", {}, short(r.frontend)), h("span", { class: "muted" }, " · " + when(r.released_at) + " · "),
          h("a", { href: "#/job/" + r.job_id }, "job"),
          r.state !== "live" && r.state !== "failed" && r.files_kept !== false
            ? actionButton("Roll back to #" + r.id, () => {
              if (confirm("Put release #" + r.id + " of " + i.install + " back live?")) act("/api/rollback", { target: i.install, to: r.id });
            }, true)
            : null))))));
    if (!$("releases").childElementCount) $("releases").replaceChildren(h("p", { class: "muted" }, "no release recorded"));
  } catch (e) {
    $("releases").textContent = "cannot read the releases: " + e.message;
  }
}

async function loadFleet() {
  if (!S.info.fleet) return;
  $("fleet").hidden = false;
  try {
    const doc = await getJSON("/api/fleet");
    $("fleet-hosts").replaceChildren(h("table", {}, h("tbody", {}, doc.hosts.map((host) => {
      const eng = (host.report && host.report.engine) || {};
      const run = eng.running;
      return h("tr", { dataset: { host: host.host } }, h("td", {}, host.host),
        h("td", {}, host.stale ? "STALE" : "reported " + host.report_age_s + "s ago"),
        h("td", {}, run ? "running " + run.target + " " + run.command : eng.engine ? "idle" : "engine down"),
        h("td", {}, (host.waiting_in_stream ?? "?") + " waiting"));
    }))));
  } catch (e) {
    $("fleet-hosts").textContent = "cannot reach the fleet: " + e.message;
  }
}

// ---- the job page ----
async function showJob(id) {
  S.view = { job: id, bytes: 0, live: false };
  $("home").hidden = true;
  $("job").hidden = false;
  $("job-title").textContent = id;
  $("job-log").textContent = "";
  try {
    const { job, steps } = await getJSON("/api/jobs/" + id);
    const total = job.duration_ms || Math.max(0, serverNow() - Date.parse(job.started_at));
    $("job-meta").replaceChildren(job.target + " " + job.command + " · ", badge(job.result),
      " · " + when(job.started_at) + " · " + secs(job.duration_ms) + " · " + job.trigger + ":" + job.line +
      (job.requested_by ? " · asked by " + job.requested_by : "") + (job.reason ? " · " + job.reason : ""));
    renderTimeline($("job-timeline"), steps, total);
    const r = await fetch("/api/jobs/" + id + "/log");
    appendLines($("job-log"), r.ok ? await r.text() : "(no log: " + r.status + ")");
    S.view.live = job.result === "running";
  } catch (e) {
    $("job-meta").textContent = e.message;
  }
}

function route() {
  const m = location.hash.match(/^#\/job\/([0-9A-Z]{26})$/);
  if (m) return showJob(m[1]);
  S.view = { job: null, bytes: 0, live: false };
  $("job").hidden = true;
  $("home").hidden = false;
}

// ---- live events ----
function connect() {
  const es = new EventSource("/api/events");
  const live = $("live");
  es.onopen = () => { live.textContent = "live"; live.classList.add("on"); loadHistory(); };
  es.onerror = () => { live.textContent = "reconnecting"; live.classList.remove("on"); };
  es.addEventListener("status", (m) => onStatus(JSON.parse(m.data)));
  es.addEventListener("log", (m) => onLog(JSON.parse(m.data)));
  es.addEventListener("step_started", (m) => onStep(JSON.parse(m.data), false));
  es.addEventListener("step_finished", (m) => onStep(JSON.parse(m.data), true));
  es.addEventListener("job_finished", () => { loadHistory(); loadReleases(); if (S.view.job) showJob(S.view.job); });
  es.addEventListener("job_started", loadHistory);
  es.addEventListener("requested", loadHistory);
  es.addEventListener("resync", async () => onStatus(await getJSON("/api/status")));
}

async function main() {
  try { S.info = await getJSON("/api/info"); } catch (e) { toast("cannot reach the server: " + e.message); }
  $("cancel").addEventListener("click", () => {
    if (S.running && confirm("Cancel job " + S.running.job_id + "?")) act("/api/cancel", { job_id: S.running.job_id });
  });
  window.addEventListener("hashchange", route);
  route();
  try { onStatus(await getJSON("/api/status")); } catch (e) { toast(e.message); }
  connect();
  loadReleases();
  loadFleet();
  setInterval(drawRunning, 1000);
  setInterval(loadFleet, 15000);
}

main();
