/* mucosa viewer: the case list, a case (header, decode warnings, verdict, player) and the start.
 *
 * A case's frames arrive as server-sent events (/v1/cases/{id}/events); the player shows the stored
 * display frames (/frames/{n}.jpg, or /frames/{n}.png?gradcam=1 with the heat map) in sync with the cursor
 * of the probability timeline drawn under it (timeline.js). Only the verdict is a live region: screen
 * readers hear it change, not every frame. A server with a token or users asks for one (signin.js).
 */
"use strict";

/* ------------------------------------------------------------------------------------------- model and cases */

async function loadModel() {
  const card = await (await api("/v1/model")).json();
  S.card = card;
  const kind = card.model && card.model.kind ? card.model.kind.toUpperCase() : "model";
  const runtime = card.runtime ? `${card.runtime.name.toUpperCase()} on ${card.runtime.device.toUpperCase()}` : "";
  $("model").textContent = `${card.name} · ${kind} ${card.input_size}×${card.input_size} · ` +
    `${card.classes.map((c) => card.verdicts[c]).join(" / ")} · threshold ${card.threshold} · ${runtime}`;
  document.body.classList.toggle("clinical", clinical());
  renderAtlasNote(card);
  const legend = card.classes.map((c) => `<span class="lg-class"><i class="swatch" style="background:` +
    `${esc(colourOf(c))}"></i>${esc(c)}</span>`);
  legend.push(`<span class="lg-network"><i class="swatch" style="background:${GREYS[0]}"></i>the network's ` +
    "probability (no class called: <span id=\"legend-why\">unfamiliar</span>)</span>");
  legend.push("<span><i class=\"lg-line\"></i>smoothed</span>");
  if (card.positive) legend.push("<span><i class=\"lg-dash\"></i>threshold</span>");
  legend.push("<span><i class=\"lg-drop\"></i>dropped</span>", "<span><i class=\"lg-missing\"></i>not decoded</span>");
  if (card.atlas && card.atlas.calibrated) {  // an atlas that is not calibrated marks no frame
    legend.push("<span><i class=\"lg-unfamiliar\"></i>unfamiliar (unlike the atlas)</span>");
  }
  $("legend").innerHTML = legend.join("");
  fillVerdictFilter(card);
  fillHistology(card);
  $("timeline-head").textContent = "Probability timeline · " +
    (card.positive ? `P(${card.positive})` : "probability of the class each frame is called");
}

/* ------------------------------------------------------------------------------------------- a case */

function closeCase() {
  if (S.es) S.es.close();
  Object.assign(S, { es: null, caseId: null, summary: null, detail: null, rows: [], pos: 0, playing: false,
    follow: true, shown: null, camPending: null });
  S.frames.clear();
  S.cams.clear();
  $("case").hidden = true;
  $("empty").hidden = false;
  $("play").textContent = "▶";
  markCurrentCase();
}

/* Open a case from its stable address (#/cases/ID): its detail first (an unknown id says so), then its events. */
async function openCase(id) {
  closeCase();
  S.caseId = id;
  markCurrentCase();
  let detail;
  try {
    detail = await (await api(`/v1/cases/${encodeURIComponent(id)}`)).json();
  } catch (error) {
    if (S.caseId === id) notice(`Case ${id}: ${error.message}`, true);
    return;
  }
  if (S.caseId !== id) return;
  notice("");
  S.rows = detail.timeline || [];  // what is done so far; the events go on from there
  delete detail.timeline;
  S.detail = S.summary = detail;
  if (S.rows.length) S.pos = S.rows.length - 1;
  loadReviews(id, detail.reviews);
  $("empty").hidden = true;
  $("case").hidden = false;
  const base = `/v1/cases/${id}`;
  $("dl-csv").href = `${base}/timeline.csv`;  // with a token: fetched with it in a header (setupControls)
  $("dl-report").href = `${base}/report.pdf`;
  $("dl-html").href = `${base}/report.html`;
  $("dl-json").href = `${base}/report.json`;
  const es = new EventSource(withToken(`${base}/events`));
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
  es.addEventListener("end", () => { es.close(); refreshCases(); if (S.caseId === id) renderReview(); });
  es.onerror = () => {
    if (es.readyState === EventSource.CLOSED && S.caseId === id) notice("Lost the connection to this case.", true);
  };
  render();
  if (S.focusCase === id) { S.focusCase = null; $("case-name").focus(); }  // opened from the list: go to it
}

function render() {
  renderHead();
  renderVerdict();
  renderReview();
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
  const exam = examWords({ ...S.detail, ...c }, false);
  $("case-exam").textContent = exam ? capital(exam) : "No exam fields given";
  const files = c.kind === "video" ? (c.files[0] === c.name ? "" : ` · ${c.files[0]}`) : ` · ${c.files.length} images`;
  const rate = c.fps ? ` · ${c.fps.toFixed(0)} fps` : "";
  const frames = c.kind === "video" ? `${c.frames_done} decoded of ${c.frames_expected} announced` :
    `${c.frames_done} frames`;
  $("case-meta").textContent = `${c.kind === "video" ? "Video" : "Images"}${files}${rate} · ${frames} · ` +
    `${c.frames_dropped} dropped by the quality gate`;
  const warnings = c.warnings || [];
  $("case-warnings").hidden = !warnings.length;
  const list = $("case-warnings-list");
  if (list.childElementCount !== warnings.length) {
    list.textContent = "";
    for (const text of warnings) {
      const li = document.createElement("li");
      li.textContent = text;
      list.append(li);
    }
  }
}

/* A running case with informative frames but no label is not judged yet (an atlas is gathering the frames its case
   score needs): the server's words say so, and no class is shown. */
function verdictLabel(c, v) {
  if (c && c.status === "failed") return "No verdict";
  if (v && v.label) return capital(v.label);
  if (gatheringVerdict(v)) return capital(v.text);
  if (!c) return "–";
  if (c.status === "queued") return "Waiting in the queue";
  return c.status === "done" ? "No informative frames" : "Waiting for informative frames";
}

function renderVerdict() {
  const c = S.summary;
  const v = c && c.verdict;
  const box = $("verdict");
  box.className = "verdict" + (v && v.state === "error" ? " error" : v && v.class ? " called" : " pending");
  box.style.setProperty("--tone", v && v.class ? colourOf(v.class) : "#aab4c1");
  box.dataset.state = v ? v.state : "none";
  box.dataset.label = v && v.label ? v.label : "";
  box.dataset.class = v && v.class ? v.class : "";
  const state = $("verdict-state");
  state.className = v && v.state === "running" ? "live" : "";
  state.textContent = !c ? "" : { queued: "queued", running: "live", final: "final", error: "failed" }[v ? v.state : ""] || c.status;
  const label = verdictLabel(c, v);
  if ($("verdict-label").textContent !== label) $("verdict-label").textContent = label;  // announced: only on change
  const score = $("verdict-score");
  const p = confidence(v);
  if (c && c.status === "failed") score.textContent = c.error || "";
  else if (gatheringVerdict(v)) {  // it has `needed`
    score.textContent = `${v.frames} of the ${v.needed} informative frames read that the atlas needs to judge this ` +
      "recording";
  } else if (p !== null) score.innerHTML = `mean probability of ${esc(v.class)} <b>${fmt(p)}</b>`;
  else score.textContent = "";
  renderShares(v);
  renderAtlasVerdict(c, v);
  $("verdict-frames").innerHTML = c && v ? `rests on <b>${v.frames}</b> of ${c.frames_done} frames · ` +
    `<b>${c.frames_dropped}</b> dropped` : "";
  const running = c && (c.status === "running" || c.status === "queued");
  $("progress").hidden = !running;
  $("progress-bar").style.width = c ? `${Math.round(100 * c.progress)}%` : "0";
}

/* The share of the informative frames called each class: a bar in the classes' colours, and in words. Of an
   unfamiliar case, no class is called: the bar is grey, and the words say what the network alone would have said;
   while frames are gathered, grey too, and the words say why no class is called yet. */
function renderShares(v) {
  const calls = (v && v.calls) || {};
  const total = classes().reduce((sum, cls) => sum + (calls[cls] || 0), 0);
  const bar = $("verdict-shares");
  const unfamiliar = Boolean(v && v.label === "unfamiliar");
  const gathering = gatheringVerdict(v);
  const noClass = unfamiliar || gathering;
  bar.hidden = !total;
  bar.classList.toggle("neutral", noClass);
  const text = !total ? "" : unfamiliar ? v.network_alone || "" : gathering ?
    "No class is called until there are frames enough to compare this recording with the atlas." :
    "called " + classes().map((cls) => `${cls} ${pct((calls[cls] || 0) / total)} (${calls[cls] || 0})`).join(" · ");
  const words = $("verdict-shares-text");
  words.textContent = text;
  words.classList.toggle("subordinate", noClass);
  const colour = (cls) => (noClass ? GREYS[classes().indexOf(cls) % GREYS.length] : colourOf(cls));
  bar.innerHTML = classes().filter((cls) => calls[cls]).map((cls) =>
    `<span style="width:${(100 * calls[cls]) / total}%;background:${esc(colour(cls))}"></span>`).join("");
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

/* The frame's probabilities in words, each naming its class; of a case that calls no class, no class called. */
function frameWords(row) {
  if (row.dropped) return `dropped by the quality gate (quality ${fmt(row.quality, 2)})`;
  const named = classes().map((cls) => `P(${cls}) ${fmt(probabilityOf(row.probability, cls))}`).join(", ");
  if (noClassCalled()) return `the network alone, no class called: ${named}${row.unfamiliar ? "; frame unfamiliar" : ""}`;
  return `called ${row.called}: ${named}`;
}

/* The badge on the frame: its call and probability; of a case that calls no class, the probability alone. */
function badgeWords(row, wantCam, showingCam) {
  if (row.dropped) return `Dropped by the quality gate (quality ${fmt(row.quality, 2)})`;
  const unfamiliar = noClassCalled();
  if (wantCam && !showingCam) return "Grad-CAM: computing…";
  if (wantCam) return unfamiliar ? `Grad-CAM: the network's attention for its ${withheld().guess}` : `Grad-CAM of ${row.called}`;
  const p = `P(${row.called}) ${fmt(probabilityOf(row.probability, row.called))}`;
  return unfamiliar ? `network: ${p}${row.unfamiliar ? " · frame unfamiliar" : ""}` : `${row.called} · ${p}`;
}

function showFrame() {
  const row = currentRow();
  const canvas = $("frame");
  const badge = $("frame-badge");
  $("pos").textContent = frameText(S.pos);
  renderCurrent(row);
  if (!row) { badge.hidden = true; canvas.setAttribute("aria-label", "no frame yet"); return; }
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
  const cam = noClassCalled() ? `the network's ${withheld().guess}` : row.called;
  canvas.setAttribute("aria-label", `${frameText(S.pos)}: ${frameWords(row)}` +
    (showingCam ? `; Grad-CAM of ${cam} shown` : ""));
  badge.hidden = false;
  badge.classList.toggle("dropped", row.dropped);
  badge.classList.toggle("unfamiliar", Boolean(row.unfamiliar) && unfamiliarCase());
  badge.textContent = badgeWords(row, wantCam, showingCam);
}

function renderCurrent(row) {
  const list = $("current");
  list.textContent = "";
  if (!row) return;
  const unfamiliar = noClassCalled();  // no class called: what the network alone says, and whether the frame is
  const items = [["Frame", frameText(S.pos).replace(/^frame /, "")], unfamiliar ?
    ["Network alone", row.dropped ? "—" : `${row.called}, ${withheld().call}`] :
    ["Called", row.dropped ? "—" : row.called]];
  if (unfamiliar && typeof row.unfamiliar === "boolean") {
    items.push(["Unfamiliar frame", row.unfamiliar ? "yes, unlike the atlas" : "no"]);
  }
  for (const cls of classes()) {
    items.push([`P(${cls})`, row.dropped ? "—" : fmt(probabilityOf(row.probability, cls))]);
  }
  const smoothed = axisClass() || (row.called || classes()[0]);
  items.push([`Smoothed P(${smoothed})`, fmt(probabilityOf(row.smoothed, smoothed))],
    ["Quality", `${fmt(row.quality, 2)}, ${row.dropped ? "below" : "passes"} the gate ` +
      `${S.card ? S.card.preprocessing.quality_threshold : "?"}${row.dropped ? ": dropped" : ""}`]);
  if (S.summary && S.summary.kind === "images" && row.source !== undefined) items.splice(1, 0, ["Image", S.summary.files[row.source]]);
  for (const [key, value] of items) {
    const dt = document.createElement("dt");
    dt.textContent = key;
    const dd = document.createElement("dd");
    dd.textContent = value;
    if (key === "Quality" && row.dropped) dd.className = "dropped";
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
    window.location.hash = "#/";
    refreshCases();
  });
  for (const id of ["dl-csv", "dl-report", "dl-json", "dl-html"]) {  // with a token: sent as a header
    $(id).addEventListener("click", (e) => {
      if (!S.token) return;
      e.preventDefault();
      fetchFile($(id).getAttribute("href"), id === "dl-html");
    });
  }
  $("skip").addEventListener("click", (e) => { e.preventDefault(); $("main").focus(); });  // keeps the address
  document.addEventListener("keydown", (e) => {  // shortcuts where no control of its own takes the keys
    const free = e.target === document.body || e.target === $("main") || e.target === $("frame");
    if (!free || !S.rows.length) return;
    if (e.key === " ") { e.preventDefault(); togglePlay(); }
    else if (e.key === "ArrowRight") { e.preventDefault(); seekTo(S.pos + 1); }
    else if (e.key === "ArrowLeft") { e.preventDefault(); seekTo(S.pos - 1); }
  });
}

/* Who is asking (GET /v1/me): their name and role; a server without users answers as one admin. */
async function loadMe() {
  try {
    S.me = await (await api("/v1/me")).json();
  } catch (error) {
    S.me = null;
  }
  $("me").textContent = S.me ? `${S.me.name} · ${S.me.role}` : "";
  $("signout").hidden = !(S.me && S.token);
  $("delete").hidden = Boolean(S.me && S.me.role !== "admin");  // only an admin deletes
}

/* ------------------------------------------------------------------------------------------- addresses */

/* The page's address says what it shows: #/cases/ID a case, #/audit the audit, #/ (or none) no case. */
function route() {
  const hash = window.location.hash;
  const audit = hash.startsWith("#/audit");
  const match = hash.match(/^#\/cases\/([^/?]+)/);
  const wasAudit = !$("audit").hidden;
  $("audit").hidden = !audit;
  if (audit) $("nav-audit").setAttribute("aria-current", "page"); else $("nav-audit").removeAttribute("aria-current");
  if (audit) {
    if (S.caseId) closeCase();
    $("empty").hidden = true;
    renderAudit();
    if (!wasAudit) $("audit-title").focus();
  } else if (match) {
    const id = decodeURIComponent(match[1]);
    if (id !== S.caseId || $("case").hidden) openCase(id);
  } else if (!hash || hash === "#" || hash === "#/") {
    closeCase();
  }
}

/* Show a case: through its address, so that the address bar, a reload and the back button agree. */
function showCase(id) {
  const hash = `#/cases/${encodeURIComponent(id)}`;
  if (window.location.hash !== hash) window.location.hash = hash;
  else if (S.caseId !== id) openCase(id);
}

async function init() {
  try {
    await loadModel();
    await loadMe();
    await refreshCases();
    route();
  } catch (error) {
    $("model").textContent = document.body.classList.contains("signed-out") ? "Signed out" : error.message;
  }
}

(function start() {
  readToken();
  setupSignIn();
  setupDrop();
  setupControls();
  setupTimeline();
  setupAtlas();
  setupFilters();
  setupReview();
  setupAudit();
  setupExam();
  window.addEventListener("hashchange", route);
  init().then(scheduleRefresh);
})();
