/* mucosa viewer: plain JavaScript over the /v1 API (no build step).
 *
 * A case's frames arrive as server-sent events (/v1/cases/{id}/events); the player shows the stored
 * display frames (/frames/{n}.jpg, or /frames/{n}.png?gradcam=1 with the heat map) in sync with the cursor
 * of the probability timeline drawn under it. With a server token, open the page as /?token=TOKEN.
 */
"use strict";

const $ = (id) => document.getElementById(id);
const S = {
  token: null, card: null, cases: [], caseId: null, summary: null, rows: [], pos: 0, follow: true,
  playing: false, lastStep: 0, es: null, frames: new Map(), cams: new Map(), camPending: null, shown: null,
};

/* ------------------------------------------------------------------------------------------- API */

function authHeaders() { return S.token ? { Authorization: "Bearer " + S.token } : {}; }

function withToken(url) {
  if (!S.token) return url;
  return url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(S.token);
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (response.status === 401) {
    askToken();
    throw new Error("this server needs a token");
  }
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(body.detail || response.status + " " + response.statusText);
  }
  return response;
}

function askToken() {
  const given = window.prompt("This server needs an access token:");
  if (given) {
    S.token = given.trim();
    sessionStorage.setItem("mucosa-token", S.token);
    init();
  }
}

/* ------------------------------------------------------------------------------------------- words */

const esc = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const fmt = (value, digits = 3) => (value === null || value === undefined ? "–" : Number(value).toFixed(digits));

function positiveWords() {
  const card = S.card;
  return card && card.positive ? card.verdicts[card.positive] : null;
}

function tone(verdict) {
  if (!verdict || verdict.state === "error") return verdict && verdict.state === "error" ? "error" : "pending";
  if (!verdict.label) return "pending";
  if (S.card && S.card.positive) return verdict.class === S.card.positive ? "active" : "healed";
  return "healed";
}

function timeText(row) {
  if (!row) return "–";
  return row.time === null || row.time === undefined ? `frame ${row.frame}` : `frame ${row.frame} · ${row.time.toFixed(2)} s`;
}

function notice(text, error = false) {
  const box = $("notice");
  box.hidden = !text;
  box.textContent = text || "";
  box.classList.toggle("error", error);
}

/* ------------------------------------------------------------------------------------------- model and cases */

async function loadModel() {
  const card = await (await api("/v1/model")).json();
  S.card = card;
  const kind = card.model && card.model.kind ? card.model.kind.toUpperCase() : "model";
  const runtime = card.runtime ? `${card.runtime.name.toUpperCase()} on ${card.runtime.device.toUpperCase()}` : "";
  $("model").textContent = `${card.name} · ${kind} ${card.input_size}×${card.input_size} · ` +
    `${card.classes.map((c) => card.verdicts[c]).join(" / ")} · threshold ${card.threshold} · ${runtime}`;
}

async function refreshCases() {
  try {
    S.cases = await (await api("/v1/cases")).json();
  } catch (error) {
    return;
  }
  const list = $("cases");
  list.textContent = "";
  if (!S.cases.length) {
    const li = document.createElement("li");
    li.className = "empty-list";
    li.textContent = "No cases yet.";
    list.append(li);
  }
  for (const c of S.cases) {
    const li = document.createElement("li");
    li.dataset.id = c.id;
    li.classList.toggle("current", c.id === S.caseId);
    const name = document.createElement("div");
    name.className = "name";
    name.textContent = c.name;
    const line = document.createElement("div");
    line.className = "line";
    const status = document.createElement("span");
    status.textContent = c.status === "running" ? `running ${Math.round(100 * c.progress)}%` : c.status;
    const verdict = document.createElement("span");
    const t = tone(c.verdict);
    verdict.className = t === "active" ? "v-active" : t === "healed" ? "v-healed" : "";
    verdict.textContent = c.verdict && c.verdict.label ? c.verdict.label : "";
    line.append(status, verdict);
    li.append(name, line);
    li.addEventListener("click", () => openCase(c.id));
    list.append(li);
  }
}

function scheduleRefresh() {
  const busy = S.cases.some((c) => c.status === "queued" || c.status === "running");
  setTimeout(async () => { await refreshCases(); scheduleRefresh(); }, busy ? 1500 : 8000);
}

/* ------------------------------------------------------------------------------------------- upload */

function upload(files) {
  if (!files.length) return;
  const form = new FormData();
  for (const file of files) form.append("file", file, file.name);
  const label = files.length === 1 ? files[0].name : `${files.length} images`;
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/v1/cases");
  for (const [key, value] of Object.entries(authHeaders())) xhr.setRequestHeader(key, value);
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) notice(`Uploading ${label}: ${Math.round((100 * e.loaded) / e.total)}%`);
  };
  xhr.onload = () => {
    let body = {};
    try { body = JSON.parse(xhr.responseText); } catch (error) { /* not JSON */ }
    if (xhr.status === 202) {
      notice("");
      refreshCases();
      openCase(body.id);
    } else if (xhr.status === 401) {
      notice("");
      askToken();
    } else {
      const retry = xhr.getResponseHeader("Retry-After");
      notice(`${label}: ${body.detail || xhr.statusText} (${xhr.status})` + (retry ? ` — retry in ${retry} s` : ""), true);
    }
  };
  xhr.onerror = () => notice(`${label}: the upload failed (connection lost)`, true);
  notice(`Uploading ${label}…`);
  xhr.send(form);
}

function setupDrop() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => { upload([...e.target.files]); e.target.value = ""; });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) drop.addEventListener(name, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); upload([...e.dataTransfer.files]); });
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
}

/* ------------------------------------------------------------------------------------------- a case */

function closeCase() {
  if (S.es) S.es.close();
  Object.assign(S, { es: null, caseId: null, summary: null, rows: [], pos: 0, playing: false, follow: true,
    shown: null, camPending: null });
  S.frames.clear();
  S.cams.clear();
  $("case").hidden = true;
  $("empty").hidden = false;
  $("play").textContent = "▶";
}

function openCase(id) {
  closeCase();
  S.caseId = id;
  $("empty").hidden = true;
  $("case").hidden = false;
  $("dl-csv").href = withToken(`/v1/cases/${id}/timeline.csv`);
  $("dl-report").href = withToken(`/v1/cases/${id}/report.html?download=1`);
  for (const li of $("cases").children) li.classList.toggle("current", li.dataset.id === id);
  const es = new EventSource(withToken(`/v1/cases/${id}/events`));
  S.es = es;
  es.addEventListener("update", (e) => {
    if (S.caseId !== id) return;
    const data = JSON.parse(e.data);
    if (data.since === S.rows.length) S.rows.push(...data.timeline);
    else if (data.since < S.rows.length) S.rows.push(...data.timeline.slice(S.rows.length - data.since));
    delete data.timeline;
    S.summary = data;
    if (S.follow && !S.playing && S.rows.length) S.pos = S.rows.length - 1;
    render();
  });
  es.addEventListener("end", () => { es.close(); refreshCases(); });
  es.onerror = () => {
    if (es.readyState === EventSource.CLOSED && S.caseId === id) notice("Lost the connection to this case.", true);
  };
  render();
}

function render() {
  renderHead();
  renderVerdict();
  const seek = $("seek");
  seek.max = Math.max(0, S.rows.length - 1);
  seek.value = S.pos;
  showFrame();
  drawTimeline();
}

function renderHead() {
  const c = S.summary;
  if (!c) return;
  $("case-name").textContent = c.name;
  const files = c.kind === "video" ? c.files[0] : `${c.files.length} images`;
  const rate = c.fps ? ` · ${c.fps.toFixed(0)} fps` : "";
  $("case-meta").textContent = `${c.kind === "video" ? "Video" : "Images"} · ${files}${rate} · ${c.frames_done} of ` +
    `${c.frames_expected} frames · ${c.frames_dropped} dropped by the quality gate`;
}

function renderVerdict() {
  const c = S.summary;
  const v = c && c.verdict;
  const box = $("verdict");
  box.className = "verdict " + tone(v);
  box.dataset.state = v ? v.state : "none";
  box.dataset.label = v && v.label ? v.label : "";
  const state = $("verdict-state");
  state.className = v && v.state === "running" ? "live" : "";
  state.textContent = !c ? "" : { queued: "queued", running: "live", final: "final", error: "failed" }[v ? v.state : ""] || c.status;
  let label = "–";
  if (c && c.status === "failed") label = "No verdict";
  else if (v && v.label) label = v.label.charAt(0).toUpperCase() + v.label.slice(1);
  else if (c) label = c.status === "queued" ? "Waiting in the queue" : c.status === "done" ? "No informative frames" : "Waiting for informative frames";
  $("verdict-label").textContent = label;
  const score = $("verdict-score");
  if (c && c.status === "failed") {
    score.textContent = c.error || "";
  } else if (v && v.score !== null && typeof v.score === "number") {
    const words = positiveWords();
    score.innerHTML = `${words ? "mean probability of " + esc(words) : "mean probability"} <b>${fmt(v.score)}</b> · threshold ${fmt(v.threshold, 2)}`;
  } else if (v && Array.isArray(v.score)) {
    score.innerHTML = S.card.classes.map((name, k) => `${esc(name)} <b>${fmt(v.score[k])}</b>`).join(" · ");
  } else {
    score.textContent = "";
  }
  const frames = $("verdict-frames");
  if (c && v) {
    frames.innerHTML = `rests on <b>${v.frames}</b> of ${c.frames_done} frames · <b>${c.frames_dropped}</b> dropped by the quality gate`;
  } else {
    frames.textContent = "";
  }
  const running = c && (c.status === "running" || c.status === "queued");
  $("progress").hidden = !running;
  $("progress-bar").style.width = c ? `${Math.round(100 * c.progress)}%` : "0";
}

/* ------------------------------------------------------------------------------------------- player */

function frameImage(number, gradcam) {
  const cache = gradcam ? S.cams : S.frames;
  let entry = cache.get(number);
  if (!entry) {
    const img = new Image();
    entry = { img, ready: false, failed: false };
    img.onload = () => { entry.ready = true; if (currentRow() && currentRow().frame === number) showFrame(); };
    img.onerror = () => { entry.failed = true; };
    img.src = withToken(`/v1/cases/${S.caseId}/frames/${number}.${gradcam ? "png?gradcam=1" : "jpg"}`);
    cache.set(number, entry);
    if (cache.size > (gradcam ? 64 : 400)) cache.delete(cache.keys().next().value);
  }
  return entry;
}

function currentRow() { return S.rows[S.pos]; }

function preload(from, count = 24) {
  for (let k = from; k < Math.min(S.rows.length, from + count); k++) frameImage(S.rows[k].frame, false);
}

function showFrame() {
  const row = currentRow();
  const canvas = $("frame");
  const badge = $("frame-badge");
  $("pos").textContent = row ? `${timeText(row)} / ${S.rows.length}` : "–";
  renderCurrent(row);
  if (!row) { badge.hidden = true; return; }
  preload(S.pos);
  const wantCam = $("gradcam").checked && !row.dropped;
  let entry = null;
  if (wantCam) {  // one Grad-CAM request at a time: while playing, frames without one show plain
    entry = S.cams.get(row.frame) || null;
    const busy = S.camPending && !S.camPending.ready && !S.camPending.failed;
    if (!entry && !busy) S.camPending = entry = frameImage(row.frame, true);
  }
  const showingCam = Boolean(entry && entry.ready);
  if (!showingCam) entry = frameImage(row.frame, false);
  if (entry.ready) {
    const img = entry.img;
    if (canvas.width !== img.naturalWidth || canvas.height !== img.naturalHeight) {
      canvas.width = img.naturalWidth;
      canvas.height = img.naturalHeight;
    }
    canvas.getContext("2d").drawImage(img, 0, 0);
    canvas.dataset.frame = row.frame;
    canvas.dataset.gradcam = showingCam ? "shown" : "off";
  }
  badge.hidden = false;
  badge.classList.toggle("dropped", row.dropped);
  if (row.dropped) badge.textContent = `Dropped by the quality gate (quality ${fmt(row.quality, 2)})`;
  else if (wantCam) badge.textContent = showingCam ? "Grad-CAM of the predicted class" : "Grad-CAM: computing…";
  else badge.textContent = `p ${fmt(probabilityOf(row))} · smoothed ${fmt(probabilityOf(row, "smoothed"))}`;
}

function probabilityOf(row, key = "probability") {
  const value = row[key];
  if (value === null || value === undefined) return null;
  return Array.isArray(value) ? Math.max(...value) : value;
}

function renderCurrent(row) {
  const list = $("current");
  list.textContent = "";
  if (!row) return;
  const words = positiveWords();
  const items = [
    ["Frame", row.time === null ? `${row.frame}` : `${row.frame} (${row.time.toFixed(2)} s)`],
    [words ? `P(${words})` : "Probability", row.dropped ? "—" : fmt(probabilityOf(row))],
    ["Smoothed", fmt(probabilityOf(row, "smoothed"))],
    ["Quality", `${fmt(row.quality, 2)} · gate ${S.card ? S.card.preprocessing.quality_threshold : "?"}`],
    ["Status", row.dropped ? "dropped by the quality gate" : "used for the verdict"],
  ];
  if (S.summary && S.summary.kind === "images" && row.source !== undefined) items.splice(1, 0, ["Image", S.summary.files[row.source]]);
  for (const [key, value] of items) {
    const dt = document.createElement("dt");
    dt.textContent = key;
    const dd = document.createElement("dd");
    dd.textContent = value;
    if (key === "Status" && row.dropped) dd.className = "dropped";
    list.append(dt, dd);
  }
}

function seekTo(pos, follow = false) {
  S.pos = Math.max(0, Math.min(S.rows.length - 1, pos));
  S.follow = follow || S.pos === S.rows.length - 1;
  $("seek").value = S.pos;
  showFrame();
  drawTimeline();
}

function togglePlay() {
  if (!S.rows.length) return;
  S.playing = !S.playing;
  if (S.playing && S.pos >= S.rows.length - 1 && S.summary && S.summary.status !== "running") S.pos = 0;
  $("play").textContent = S.playing ? "❚❚" : "▶";
  $("play").setAttribute("aria-label", S.playing ? "pause" : "play");
  S.lastStep = performance.now();
  if (S.playing) requestAnimationFrame(tick);
}

function tick(now) {
  if (!S.playing) return;
  const fps = (S.summary && S.summary.fps) || 2;
  if (now - S.lastStep >= 1000 / fps) {
    const next = S.pos + 1;
    if (next >= S.rows.length) {
      if (!S.summary || S.summary.status !== "running") { togglePlay(); return; }
    } else if (frameImage(S.rows[next].frame, false).ready || frameImage(S.rows[next].frame, false).failed) {
      S.lastStep = now;
      seekTo(next);
    }
  }
  requestAnimationFrame(tick);
}

/* ------------------------------------------------------------------------------------------- start */

function setupControls() {
  $("play").addEventListener("click", togglePlay);
  $("seek").addEventListener("input", (e) => seekTo(Number(e.target.value)));
  $("gradcam").addEventListener("change", showFrame);
  $("delete").addEventListener("click", async () => {
    if (!S.caseId || !window.confirm("Delete this case and its files from the server?")) return;
    const id = S.caseId;
    try { await api(`/v1/cases/${id}`, { method: "DELETE" }); } catch (error) { notice(error.message, true); }
    closeCase();
    refreshCases();
  });
  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT" && e.target.type !== "range" && e.target.type !== "checkbox") return;
    if (!S.rows.length) return;
    if (e.key === " ") { e.preventDefault(); togglePlay(); }
    else if (e.key === "ArrowRight") { e.preventDefault(); seekTo(S.pos + 1); }
    else if (e.key === "ArrowLeft") { e.preventDefault(); seekTo(S.pos - 1); }
  });
}

async function init() {
  try {
    await loadModel();
    await refreshCases();
  } catch (error) {
    $("model").textContent = error.message;
  }
}

(function start() {
  const params = new URLSearchParams(window.location.search);
  S.token = params.get("token") || sessionStorage.getItem("mucosa-token");
  if (params.get("token")) sessionStorage.setItem("mucosa-token", S.token);
  setupDrop();
  setupControls();
  setupTimeline();
  init().then(scheduleRefresh);
})();
