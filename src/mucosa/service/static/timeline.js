/* mucosa viewer: the probability timeline under the player (a canvas), seeking on it with the pointer or the
 * keyboard (it is a slider: arrows, Page Up/Down, Home, End; space plays and pauses), and its text alternative. Dots are the frames'
 * probabilities in the colour of the class each is called; what a damaged recording lost is drawn as such:
 * frames announced but never decoded (hatched, "not decoded") and gaps between decoded frames (markers).
 * Uses the viewer's state and helpers (S, $, seekTo, plotted, colourOf from common.js and viewer.js).
 */
"use strict";

const PLOT = { left: 40, right: 22, top: 10, bottom: 34 };
const MISSING = "#9aa3ad";
const DROPPED = "#4f5b6a";  // neutral: red may mean a class

function timelineGeometry(canvas) {
  const total = Math.max(S.rows.length, S.summary ? S.summary.frames_expected : 0, 1);
  const width = canvas.clientWidth - PLOT.left - PLOT.right;
  const height = canvas.clientHeight - PLOT.top - PLOT.bottom;
  return {
    total, width, height,
    x: (k) => PLOT.left + (width * (k + 0.5)) / total,
    y: (p) => PLOT.top + height * (1 - p),
  };
}

/* Rows after which frames are missing: a decoded frame whose number jumps past the next one expected. */
function gapsIn(rows) {
  const gaps = [];
  for (let k = 1; k < rows.length; k++) if (rows[k].frame - rows[k - 1].frame > 1) gaps.push(k);
  return gaps;
}

function drawGrid(g, geo) {
  const { y, width, height } = geo;
  g.fillStyle = "#f7f9fb";
  g.fillRect(PLOT.left, PLOT.top, width, height);
  g.strokeStyle = "#e3e8ee";
  g.fillStyle = "#4f5b6a";
  g.textAlign = "right";
  for (const p of [0, 0.25, 0.5, 0.75, 1]) {
    g.beginPath(); g.moveTo(PLOT.left, y(p)); g.lineTo(PLOT.left + width, y(p)); g.stroke();
    if (p % 0.5 === 0) g.fillText(String(p), PLOT.left - 6, y(p) + 4);
  }
}

/* Frames not processed yet, or (the case finished) announced but never decoded. */
function drawUnseen(g, geo) {
  const { width, height, total } = geo;
  if (S.rows.length >= total) return 0;
  const from = PLOT.left + (width * S.rows.length) / total;
  const done = S.summary && S.summary.status !== "running" && S.summary.status !== "queued";
  g.fillStyle = done ? "rgba(154, 163, 173, 0.35)" : "#eceff3";
  g.fillRect(from, PLOT.top, PLOT.left + width - from, height);
  if (done) {
    g.strokeStyle = MISSING;
    for (let x = from - height; x < PLOT.left + width; x += 8) {  // hatching
      g.beginPath(); g.moveTo(Math.max(x, from), PLOT.top + height - Math.max(0, from - x));
      g.lineTo(Math.min(x + height, PLOT.left + width), PLOT.top + Math.max(0, x + height - PLOT.left - width)); g.stroke();
    }
  }
  g.fillStyle = "#4f5b6a";
  g.textAlign = "center";
  if (PLOT.left + width - from > 90) {
    g.fillText(done ? `not decoded (${total - S.rows.length})` : "processing…", (from + PLOT.left + width) / 2,
      PLOT.top + height / 2);
  }
  return done ? total - S.rows.length : 0;
}

function drawProbabilities(g, geo) {
  const { x, y, total } = geo;
  const rows = S.rows;
  const radius = total > 600 ? 1.4 : 2;
  const unfamiliar = noClassCalled();  // no class called: no class's colour
  g.globalAlpha = 0.6;
  for (let k = 0; k < rows.length; k++) {
    const p = plotted(rows[k]);
    if (p === null) continue;
    g.fillStyle = unfamiliar ? GREYS[0] : colourOf(rows[k].called);
    g.beginPath(); g.arc(x(k), y(p), radius, 0, 2 * Math.PI); g.fill();
  }
  g.globalAlpha = 1;
  g.strokeStyle = "#1b2430";
  g.lineWidth = 2;
  g.beginPath();
  let drawing = false;
  for (let k = 0; k < rows.length; k++) {
    const p = plotted(rows[k], "smoothed");
    if (p === null) { drawing = false; continue; }
    if (drawing) g.lineTo(x(k), y(p)); else g.moveTo(x(k), y(p));
    drawing = true;
  }
  g.stroke();
  g.lineWidth = 1;
}

function drawBand(g, geo, gaps) {
  const { x, width, height, total } = geo;
  const band = PLOT.top + height + 4;
  const step = Math.max(width / total, 1.5);
  g.fillStyle = DROPPED;
  let dropped = 0;
  for (let k = 0; k < S.rows.length; k++) {
    if (!S.rows[k].dropped) continue;
    dropped++;
    g.fillRect(x(k) - step / 2, band, step, 8);
  }
  g.strokeStyle = "#dde3ea";
  g.strokeRect(PLOT.left, band, width, 8);
  g.strokeStyle = MISSING;  // gaps: frames lost between two decoded ones
  g.setLineDash([3, 2]);
  g.lineWidth = 2;
  for (const k of gaps) { g.beginPath(); g.moveTo(x(k - 0.5), PLOT.top); g.lineTo(x(k - 0.5), band + 8); g.stroke(); }
  g.setLineDash([]);
  g.lineWidth = 1;
  return { band, dropped };
}

function drawAxis(g, geo, band) {
  const { x, width, total } = geo;
  g.fillStyle = "#4f5b6a";
  g.textAlign = "center";
  const ticks = Math.max(2, Math.floor(width / 90));
  for (let t = 0; t <= ticks; t++) {
    const k = Math.round(((total - 1) * t) / ticks);
    const fps = S.summary && S.summary.fps;
    const text = fps ? `${(k / fps).toFixed(k / fps >= 10 ? 0 : 1)} s` : `${k + 1}`;  // frames counted from 1
    g.fillText(text, x(k), band + 22);
  }
}

function drawCursor(g, geo, band) {
  if (!S.rows.length) return;
  const cx = geo.x(S.pos);
  g.strokeStyle = "#c2410c";
  g.lineWidth = 2;
  g.beginPath(); g.moveTo(cx, PLOT.top); g.lineTo(cx, band + 8); g.stroke();
  g.fillStyle = "#c2410c";
  g.beginPath(); g.moveTo(cx - 5, PLOT.top - 1); g.lineTo(cx + 5, PLOT.top - 1); g.lineTo(cx, PLOT.top + 6); g.fill();
  g.lineWidth = 1;
}

function drawTimeline() {
  const canvas = $("timeline");
  const ratio = window.devicePixelRatio || 1;
  const cssWidth = canvas.clientWidth;
  const cssHeight = canvas.clientHeight;
  if (!cssWidth) return;
  canvas.width = Math.round(cssWidth * ratio);
  canvas.height = Math.round(cssHeight * ratio);
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, cssWidth, cssHeight);
  const geo = timelineGeometry(canvas);
  g.font = "11px system-ui, sans-serif";
  drawGrid(g, geo);
  const missing = drawUnseen(g, geo);
  if (S.card && S.card.positive) {
    g.setLineDash([5, 4]);
    g.strokeStyle = "#6b7684";
    g.beginPath(); g.moveTo(PLOT.left, geo.y(S.card.threshold)); g.lineTo(PLOT.left + geo.width, geo.y(S.card.threshold)); g.stroke();
    g.setLineDash([]);
  }
  drawProbabilities(g, geo);
  $("legend").classList.toggle("unfamiliar", noClassCalled());
  $("legend-why").textContent = withheld().why;
  const gaps = gapsIn(S.rows);
  const { band, dropped } = drawBand(g, geo, gaps);
  drawAxis(g, geo, band);
  drawCursor(g, geo, band);
  Object.assign(canvas.dataset, { points: S.rows.length, dropped, total: geo.total, missing, gaps: gaps.length });
  describeTimeline(dropped, missing, gaps.length);
  drawUnfamiliar(g, geo);
}

/* The text alternative: the slider's value in words, and a summary of the plot. */
function describeTimeline(dropped, missing, gaps) {
  const canvas = $("timeline");
  const row = S.rows[S.pos];
  canvas.setAttribute("aria-valuemin", String(Math.min(1, S.rows.length)));  // frames counted from 1, as shown
  canvas.setAttribute("aria-valuemax", String(S.rows.length));
  canvas.setAttribute("aria-valuenow", String(row ? S.pos + 1 : 0));
  canvas.setAttribute("aria-valuetext", row ? `${frameText(S.pos)}: ${frameWords(row)}` : "no frame yet");
  const axis = axisClass() ? `P(${axisClass()})` : noClassCalled() ? "the network's highest class probability" :
    "the probability of the class each frame is called";
  const parts = [`The timeline plots ${axis} for ${counted(S.rows.length, "decoded frame")}`,
    `${dropped} dropped by the quality gate`];
  if (missing) parts.push(`${counted(missing, "frame")} announced by the video but not decoded`);
  if (gaps) parts.push(`${counted(gaps, "gap")} between decoded frames`);
  $("timeline-summary").textContent = parts.join("; ") + ". Use the arrow keys to move between frames, space to " +
    "play or pause.";
}

function setupTimeline() {
  const canvas = $("timeline");
  const seekAt = (e) => {
    if (!S.rows.length) return;
    const rect = canvas.getBoundingClientRect();
    const geo = timelineGeometry(canvas);
    const k = Math.round(((e.clientX - rect.left - PLOT.left) * geo.total) / geo.width - 0.5);
    seekTo(k);
  };
  let dragging = false;
  canvas.addEventListener("pointerdown", (e) => { dragging = true; canvas.setPointerCapture(e.pointerId); seekAt(e); });
  canvas.addEventListener("pointermove", (e) => { if (dragging) seekAt(e); });
  canvas.addEventListener("pointerup", () => { dragging = false; });
  canvas.addEventListener("keydown", (e) => {
    if (!S.rows.length) return;
    const page = Math.max(1, Math.round(S.rows.length / 10));
    const moves = { ArrowRight: 1, ArrowUp: 1, ArrowLeft: -1, ArrowDown: -1, PageUp: page, PageDown: -page };
    if (e.key in moves) seekTo(S.pos + moves[e.key]);
    else if (e.key === "Home") seekTo(0);
    else if (e.key === "End") seekTo(S.rows.length - 1, true);
    else if (e.key === " ") togglePlay();  // as on the page itself: space plays and pauses
    else return;
    e.preventDefault();
  });
  window.addEventListener("resize", drawTimeline);
}
