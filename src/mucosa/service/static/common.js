/* mucosa viewer: what its scripts share (plain JavaScript, no build step): the state, the /v1 API with its
 * token, and the words and colours of the model's classes (the card's `colours`: neutral Okabe–Ito colours,
 * or green and red for the inflammation pair, whose meaning is meant).
 */
"use strict";

const $ = (id) => document.getElementById(id);
const S = {
  token: null, card: null, cases: [], caseId: null, summary: null, rows: [], pos: 0, follow: true,
  playing: false, lastStep: 0, es: null, frames: new Map(), cams: new Map(), camPending: null, shown: null,
  me: null, detail: null, focusCase: null,
};

/* ------------------------------------------------------------------------------------------- API */

function authHeaders() { return S.token ? { Authorization: "Bearer " + S.token } : {}; }

/* For what cannot send a header (a frame as an <img>, the live events as an EventSource): the token in the URL. */
function withToken(url) {
  if (!S.token) return url;
  return url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(S.token);
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (response.status === 401) {
    needSignIn();
    throw new Error("this server needs a token: sign in");
  }
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(body.detail || response.status + " " + response.statusText);
  }
  return response;
}

/* A file from the API saved under the name the server gives it: fetched with the token in a header (not in the
 * link), then saved from memory; or opened in a new tab (a report page). */
async function fetchFile(path, open = false) {
  const tab = open ? window.open("", "_blank") : null;  // opened now: after the wait, a pop-up would be blocked
  try {
    const response = await api(path);
    const url = URL.createObjectURL(await response.blob());
    if (tab) { tab.location = url; return; }
    const name = (response.headers.get("Content-Disposition") || "").match(/filename="([^"]+)"/);
    const link = Object.assign(document.createElement("a"), { href: url,
      download: name ? name[1] : path.split("/").pop() });  // as the link itself would save it
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  } catch (error) {
    if (tab) tab.close();
    notice(`${path.split("/").pop()}: ${error.message}`, true);
  }
}

/* ------------------------------------------------------------------------------------------- words */

const esc = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const fmt = (value, digits = 3) => (value === null || value === undefined ? "–" : Number(value).toFixed(digits));
/* A share (0 to 1) as a whole percentage: above 0 but under 1% reads "<1%", not 0% (4 unfamiliar frames of 820
   are not none), under 1 but above 99% reads ">99%" (as mucosa.inference.verdict.percent); every share of
   frames the viewer prints is written so. */
function pct(share) {
  if (share > 0 && share < 0.01) return "<1%";
  if (share > 0.99 && share < 1) return ">99%";
  return `${Math.round(100 * share)}%`;
}
const capital = (text) => text.charAt(0).toUpperCase() + text.slice(1);
const counted = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

function classes() { return S.card ? S.card.classes : []; }

function colourOf(cls) { return (S.card && S.card.colours && S.card.colours[cls]) || "#8a94a3"; }

/* Whether the classes are the inflammation pair: their colours then carry their clinical meaning. */
function clinical() {
  const words = S.card ? Object.values(S.card.verdicts) : [];
  return words.includes("active inflammation") && words.includes("mucosal healing");
}

/* P(cls) from a probability as the API gives it: the positive (last) class's for two classes, else a list. */
function probabilityOf(value, cls) {
  if (value === null || value === undefined) return null;
  const k = classes().indexOf(cls);
  if (Array.isArray(value)) return value[k];
  return k === classes().length - 1 ? value : 1 - value;
}

/* The confidence of the class a verdict calls: its mean probability. */
function confidence(verdict) {
  if (!verdict || !verdict.class || verdict.score === null || verdict.score === undefined) return null;
  return probabilityOf(verdict.score, verdict.class);
}

/* Whether the open case's verdict is `unfamiliar`: then no class is given, named as a call or drawn in its colour. */
function unfamiliarCase() {
  const v = S.summary && S.summary.verdict;
  return Boolean(v && v.label === "unfamiliar");
}

/* Whether a verdict is a running case's "gathering frames": too few frames read for the atlas to judge the case,
   so no label (the server says so with `needed`, the frames it must reach, and its words in `text`). */
function gatheringVerdict(v) {
  return Boolean(v && v.state === "running" && v.needed);
}

/* Whether the open case calls no class: unfamiliar, or still gathering frames. Then no class is named as the call
   or drawn in its colour, neither on the verdict nor on a frame or the timeline. */
function noClassCalled() {
  return unfamiliarCase() || gatheringVerdict(S.summary && S.summary.verdict);
}

/* The words for the network's call of a frame when the case calls no class: why none is called (the case is
   unfamiliar, or not judged yet), what the frame's call then is, and the guess it names. */
function withheld() {
  return unfamiliarCase() ?
    { why: "unfamiliar", call: "an unsupported guess (no class is called)", guess: "unsupported guess" } :
    { why: "not judged yet", call: "not judged yet (no class is called yet)", guess: "guess, not judged yet" };
}

/* The class the network alone calls from a verdict's mean probability: of an unfamiliar case, an unsupported guess. */
function networkGuess(v) {
  if (!v || v.score === null || v.score === undefined) return null;
  if (Array.isArray(v.score)) return classes()[v.score.indexOf(Math.max(...v.score))];
  return classes()[v.score >= v.threshold ? classes().length - 1 : 0];
}

// a review's histology for tissue none of the model's classes (the same words as mucosa.choices.OUTSIDE_CLASSES)
const OUTSIDE_CLASSES = "outside the model's classes";
const GREYS = ["#6b7684", "#aab4c1"];  // an unfamiliar case's share of frames per class: no class's colour

/* The probability the timeline plots: P(positive class) for two classes, else the called class's. */
function plotted(row, key = "probability") {
  const value = row[key];
  if (value === null || value === undefined) return null;
  return Array.isArray(value) ? Math.max(...value) : value;
}

function axisClass() { return S.card && S.card.positive ? S.card.positive : null; }

/* Where a frame is, counted from 1 among the decoded frames: "frame 1202 of 1202 · 50.04 s". */
function frameText(pos) {
  const row = S.rows[pos];
  if (!row) return "–";
  const time = row.time === null || row.time === undefined ? "" : ` · ${row.time.toFixed(2)}\u00a0s`;
  return `frame ${pos + 1} of ${S.rows.length}${time}`;
}

/* Several files named by their kinds: "men-09.mpg", "2 videos", "1 video and 3 images", "2 files". */
const VIDEO = /\.(mpg|mpeg|avi|mkv|mp4|mov|m4v|wmv|webm)$/i;
const IMAGE = /\.(png|jpe?g|tiff?|bmp|gif)$/i;

function kindOf(file) {
  if ((file.type || "").startsWith("video/") || VIDEO.test(file.name)) return "video";
  if ((file.type || "").startsWith("image/") || IMAGE.test(file.name)) return "image";
  return "file";
}

function describeFiles(files) {
  if (files.length === 1) return files[0].name;
  const count = { video: 0, image: 0, file: 0 };
  for (const file of files) count[kindOf(file)]++;
  return ["video", "image", "file"].filter((k) => count[k]).map((k) => counted(count[k], k)).join(" and ");
}

function notice(text, error = false) {
  const box = $("notice");
  box.hidden = !text;
  box.textContent = text || "";
  box.classList.toggle("error", error);
  if (error && text) box.setAttribute("role", "alert"); else box.removeAttribute("role");
}

/* An error in one line under the form it concerns (announced when shown), or none. */
function errorLine(id, text) {
  const line = $(id);
  line.hidden = !text;
  line.textContent = text || "";
  if (text) line.setAttribute("role", "alert"); else line.removeAttribute("role");
}
