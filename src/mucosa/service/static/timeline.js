/* mucosa viewer: the probability timeline under the player (a canvas), and seeking on it.
 * Uses the viewer's state (S, $, seekTo, probabilityOf from viewer.js) when called. */
"use strict";

const PLOT = { left: 40, right: 22, top: 10, bottom: 34 };

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
  const { x, y, width, height, total } = geo;
  const rows = S.rows;
  g.font = "11px system-ui, sans-serif";
  // plot area, grid and labels
  g.fillStyle = "#f7f9fb";
  g.fillRect(PLOT.left, PLOT.top, width, height);
  g.strokeStyle = "#e3e8ee";
  g.fillStyle = "#5d6979";
  g.textAlign = "right";
  for (const p of [0, 0.25, 0.5, 0.75, 1]) {
    g.beginPath(); g.moveTo(PLOT.left, y(p)); g.lineTo(PLOT.left + width, y(p)); g.stroke();
    if (p % 0.5 === 0) g.fillText(String(p), PLOT.left - 6, y(p) + 4);
  }
  // frames not processed yet
  if (rows.length < total) {
    const from = PLOT.left + (width * rows.length) / total;
    g.fillStyle = "#eceff3";
    g.fillRect(from, PLOT.top, PLOT.left + width - from, height);
    g.fillStyle = "#8893a2";
    g.textAlign = "center";
    if (PLOT.left + width - from > 90) g.fillText("processing…", (from + PLOT.left + width) / 2, PLOT.top + height / 2);
  }
  // threshold
  if (S.card && S.card.positive) {
    g.setLineDash([5, 4]);
    g.strokeStyle = "#8a94a3";
    g.beginPath(); g.moveTo(PLOT.left, y(S.card.threshold)); g.lineTo(PLOT.left + width, y(S.card.threshold)); g.stroke();
    g.setLineDash([]);
  }
  // per-frame probabilities and the smoothed line
  g.fillStyle = "rgba(74, 120, 181, 0.45)";
  const radius = total > 600 ? 1.4 : 2;
  for (let k = 0; k < rows.length; k++) {
    const p = probabilityOf(rows[k]);
    if (p === null) continue;
    g.beginPath(); g.arc(x(k), y(p), radius, 0, 2 * Math.PI); g.fill();
  }
  g.strokeStyle = "#1d3f72";
  g.lineWidth = 2;
  g.beginPath();
  let drawing = false;
  for (let k = 0; k < rows.length; k++) {
    const p = probabilityOf(rows[k], "smoothed");
    if (p === null) { drawing = false; continue; }
    if (drawing) g.lineTo(x(k), y(p)); else g.moveTo(x(k), y(p));
    drawing = true;
  }
  g.stroke();
  g.lineWidth = 1;
  // dropped frames: a band under the plot
  const band = PLOT.top + height + 4;
  const step = Math.max(width / total, 1.5);
  g.fillStyle = "#d0483b";
  let dropped = 0;
  for (let k = 0; k < rows.length; k++) {
    if (!rows[k].dropped) continue;
    dropped++;
    g.fillRect(x(k) - step / 2, band, step, 8);
  }
  g.strokeStyle = "#dde3ea";
  g.strokeRect(PLOT.left, band, width, 8);
  // axis: seconds for videos, frame numbers for images
  g.fillStyle = "#5d6979";
  g.textAlign = "center";
  const ticks = Math.max(2, Math.floor(width / 90));
  for (let t = 0; t <= ticks; t++) {
    const k = Math.round(((total - 1) * t) / ticks);
    const row = rows[k];
    const fps = S.summary && S.summary.fps;
    const text = fps ? `${(k / fps).toFixed(k / fps >= 10 ? 0 : 1)} s` : `${row ? row.frame : k}`;
    g.fillText(text, x(k), band + 22);
  }
  // cursor
  if (rows.length) {
    const cx = x(S.pos);
    g.strokeStyle = "#d9480f";
    g.lineWidth = 2;
    g.beginPath(); g.moveTo(cx, PLOT.top); g.lineTo(cx, band + 8); g.stroke();
    g.fillStyle = "#d9480f";
    g.beginPath(); g.moveTo(cx - 5, PLOT.top - 1); g.lineTo(cx + 5, PLOT.top - 1); g.lineTo(cx, PLOT.top + 6); g.fill();
    g.lineWidth = 1;
  }
  canvas.dataset.points = rows.length;
  canvas.dataset.dropped = dropped;
  canvas.dataset.total = total;
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
  window.addEventListener("resize", drawTimeline);
}
