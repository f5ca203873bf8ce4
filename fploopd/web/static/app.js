// fploopd's page: polls the JSON API and redraws. Plain JS, no build step; user text only ever
// goes into textContent, never into HTML.
"use strict";

const TOKEN = document.querySelector('meta[name="fploopd-token"]').content || "local";
const POLL_MS = 1000;
const $ = (id) => document.getElementById(id);
const videos = new Map(); // job id -> its <video> card, kept across redraws so playback never restarts

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function api(path) {
  return "api/" + path;
}

async function post(path, body) {
  const r = await fetch(api(path), { method: "POST", headers: { "X-Fploopd-Token": TOKEN }, body });
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  return { ok: r.ok, status: r.status, data };
}

// Overall share of a job's work done, from its progress report (status --json's `progress`).
function fraction(job) {
  if (job.state === "done") return 1;
  const p = job.progress || {};
  const gens = p.generations || 1, gen = p.generation || 1;
  let within = 0;
  const part = (p.total ? (p.done || 0) / p.total : 0);
  if (p.phase === "encode") within = 0.05 * part;
  else if (p.phase === "sample") within = 0.05 + 0.8 * (((p.section || 1) - 1) + (p.steps ? (p.step || 0) / p.steps : 0)) / (p.sections || 1);
  else if (p.phase === "decode") within = 0.85 + 0.1 * part;
  else if (p.phase === "write") within = 0.95 + 0.05 * part;
  else if (p.phase === "done") within = 1;
  return Math.max(0, Math.min(1, ((gen - 1) + within) / gens));
}

function progressText(p) {
  if (!p || !p.phase) return "starting";
  if (p.phase === "done") return "done";
  let t = p.phase;
  if (p.phase === "sample" && p.sections) t += ` section ${p.section || 0}/${p.sections}` + (p.steps ? ` step ${p.step || 0}/${p.steps}` : "");
  else if (p.total) t += ` ${p.done || 0}/${p.total} ${p.unit || ""}`;
  if ((p.generations || 1) > 1) t += ` (generation ${p.generation}/${p.generations})`;
  return t;
}

function duration(s) {
  if (s === null || s === undefined) return "–";
  s = Math.round(s);
  const m = Math.floor(s / 60), r = s % 60;
  return m ? `${m}m ${String(r).padStart(2, "0")}s` : `${r}s`;
}

function bar(job) {
  const pct = Math.round(fraction(job) * 100);
  return el("div", { class: "bar", role: "progressbar", "aria-valuenow": pct, "aria-valuemin": 0, "aria-valuemax": 100,
    "data-state": job.state, "data-job": job.name }, el("span", { style: `width:${pct}%` }));
}

const live = new Map(); // job id -> last progress file (elapsed, eta)

async function refreshLive(job) {
  try {
    const r = await fetch(api(`jobs/${encodeURIComponent(job.id)}/progress`), { cache: "no-store" });
    if (r.ok) live.set(job.id, await r.json());
  } catch (e) { /* the next poll tries again */ }
}

function runningCard(job) {
  const info = live.get(job.id) || {};
  const img = el("img", { class: "preview", alt: "latent preview", src: api(`jobs/${encodeURIComponent(job.id)}/preview?t=${Date.now() >> 12}`) });
  img.addEventListener("error", () => img.replaceWith(el("div", { class: "preview none", text: "preview after the first section" })));
  return el("div", { class: "card live", "data-job": job.name },
    img,
    el("div", {},
      el("p", { class: "title", text: job.name }),
      el("div", { class: "sub", text: `${job.pipeline || ""} · try ${job.attempts + 1} · ${job.worker || ""}` }),
      bar(job),
      el("div", { class: "stats" },
        el("span", {}, el("b", { text: progressText(job.progress) })),
        el("span", {}, "elapsed ", el("b", { text: duration(info.elapsed_s) })),
        el("span", {}, "sampling left ", el("b", { text: duration(info.eta_s) })),
        el("button", { class: "small", onclick: () => act(job, "cancel") , text: "Cancel" }))));
}

function queueRow(job) {
  const retryAt = job.next_attempt_at ? ` · retry at ${new Date(job.next_attempt_at).toLocaleTimeString()}` : "";
  return el("div", { class: "row", "data-job": job.name },
    el("div", { class: "grow" }, el("div", { class: "name", text: job.name }),
      el("div", { class: "sub", text: `${job.pipeline || ""} · priority ${job.priority}${retryAt}` })),
    el("button", { class: "small", title: "run it sooner", onclick: () => act(job, "priority", job.priority + 1), text: "▲" }),
    el("button", { class: "small", onclick: () => act(job, "cancel"), text: "Cancel" }));
}

function waitingRow(drop) {
  return el("div", { class: "row" },
    el("div", { class: "grow" }, el("div", { class: "name", text: drop.name }),
      el("div", { class: "sub", text: drop.waiting_for })));
}

function failedRow(job) {
  const e = job.error || {};
  return el("div", { class: "row failed", "data-job": job.name },
    el("div", { class: "grow" },
      el("div", { class: "name", text: `${job.name}` }),
      el("div", { class: "err" }, e.field ? el("span", { class: "field", text: e.field + ": " }) : null, e.error || job.state),
      el("div", { class: "sub", text: job.location && job.location.inputs ? job.location.inputs : "" })),
    el("button", { class: "small", title: "queue it again (fix its files in failed/ first)", onclick: () => act(job, "retry"), text: "Retry" }));
}

function doneCard(job) {
  const key = job.id + ":" + job.finished_at;
  if (videos.has(key)) return videos.get(key);
  const outs = job.outputs || [];
  const i = Math.max(0, outs.findIndex((o) => o.kind === "1loop"));
  const media = outs.length && /\.(mp4|webm|mov)$/i.test(outs[i].file)
    ? el("video", { src: api(`jobs/${encodeURIComponent(job.id)}/outputs/${i}`), autoplay: true, loop: true, muted: true,
        playsinline: true, preload: "auto", "data-job": job.name })
    : el("img", { class: "preview", alt: "preview", src: api(`jobs/${encodeURIComponent(job.id)}/preview`) });
  if (media.tagName === "VIDEO") media.muted = true;
  const links = el("div", { class: "links" },
    ...outs.map((o, n) => el("a", { href: api(`jobs/${encodeURIComponent(job.id)}/outputs/${n}`), target: "_blank", text: o.kind })),
    el("a", { href: api(`jobs/${encodeURIComponent(job.id)}/manifest`), target: "_blank", text: "manifest" }));
  const when = job.finished_at ? new Date(job.finished_at).toLocaleTimeString() : "";
  const card = el("div", { class: "card done-card", "data-job": job.name }, media,
    el("p", { class: "title", text: job.name }),
    el("div", { class: "sub", text: `${job.pipeline || ""} · seed ${(job.seeds || []).join(", ")} · ${when}` }),
    bar(job), links);
  videos.set(key, card);
  return card;
}

function fill(id, nodes, empty) {
  const box = $(id);
  const keep = nodes.length ? nodes : [el("p", { class: "empty", text: empty })];
  // Replace only what changed, so playing videos and loaded images stay put.
  if (box.children.length === keep.length && [...box.children].every((c, n) => c === keep[n])) return;
  box.replaceChildren(...keep);
}

function render(jobs, daemon) {
  const by = (s) => jobs.filter((j) => j.state === s);
  const running = by("running"), queued = by("queued"), waiting = by("waiting");
  const done = by("done").sort((a, b) => (b.finished_at || "").localeCompare(a.finished_at || ""));
  const failed = jobs.filter((j) => j.state === "failed" || j.state === "cancelled")
    .sort((a, b) => (b.finished_at || "").localeCompare(a.finished_at || ""));
  running.forEach(refreshLive);
  fill("running", running.map(runningCard), "Nothing running.");
  fill("queue", queued.sort((a, b) => b.priority - a.priority).map(queueRow), "The queue is empty.");
  fill("done", done.slice(0, 24).map(doneCard), "No finished loops yet.");
  fill("waiting", waiting.map(waitingRow), "No drops waiting.");
  fill("failed", failed.slice(0, 20).map(failedRow), "Nothing failed.");
  const counts = [["running", running.length], ["queued", queued.length], ["done", done.length], ["failed", failed.length]];
  $("counts").replaceChildren(...counts.map(([k, v]) => el("span", {}, el("b", { text: String(v) }), k)));
  const d = $("daemon");
  if (!daemon) { d.replaceChildren(el("span", { class: "chip bad", text: "daemon not running" })); return; }
  const chips = [el("span", { class: "chip ok", text: `daemon pid ${daemon.pid}` })];
  if (daemon.paused) chips.push(el("span", { class: "chip warn", text: `paused: ${daemon.paused}` }));
  for (const [dev, w] of Object.entries(daemon.workers || {})) {
    const cls = w.state === "ready" || w.state === "busy" ? "ok" : w.state === "loading the models" ? "warn" : "bad";
    chips.push(el("span", { class: `chip ${cls}`, text: `${dev}: ${w.state}` }));
  }
  d.replaceChildren(...chips);
}

async function act(job, what, value) {
  const path = `jobs/${encodeURIComponent(job.id)}/${what}` + (value !== undefined ? `?priority=${value}` : "");
  const r = await post(path);
  if (!r.ok) alert((r.data && (r.data.detail || r.data.error)) || `${what} failed (${r.status})`);
  poll();
}

async function poll() {
  try {
    const [jobs, d] = await Promise.all([
      fetch(api("jobs"), { cache: "no-store" }).then((r) => r.json()),
      fetch(api("daemon"), { cache: "no-store" }).then((r) => r.json()),
    ]);
    render(jobs, d.daemon);
  } catch (e) {
    $("daemon").replaceChildren(el("span", { class: "chip bad", text: "cannot reach the daemon" }));
  }
}

$("media").addEventListener("change", (ev) => {
  const names = [...ev.target.files].map((f) => f.name).join(", ");
  $("media-label").textContent = names || "Choose an image (loop), a video (video2loop), or two videos (connect)";
});

$("submit").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = ev.target, out = $("submit-result");
  $("submit-button").disabled = true;
  out.className = "result"; out.textContent = "uploading…";
  const r = await post("jobs", new FormData(form));
  $("submit-button").disabled = false;
  if (r.ok) {
    out.className = "result ok"; out.textContent = `queued as ${r.data.name}`;
    form.reset(); $("media-label").textContent = "Choose another file";
  } else {
    const e = (r.data && r.data.error) || {};
    out.className = "result bad";
    out.textContent = (e.field ? `${e.field}: ` : "") + (e.error || e || `failed (${r.status})`) + (r.data && r.data.failed ? ` — the files are kept in ${r.data.failed}` : "");
  }
  poll();
});

render(JSON.parse($("initial-jobs").textContent), null);
poll();
setInterval(poll, POLL_MS);
