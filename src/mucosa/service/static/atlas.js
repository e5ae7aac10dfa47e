/* mucosa viewer: the atlas of confirmed cases beside a case. The verdict `unfamiliar` (neutral, with the server's
 * words for why: its ratio and share of unfamiliar frames), the atlas's vote as a second opinion beside the
 * network's probability (and a notice when it names another class than the verdict), unfamiliar frames marked on
 * the timeline, the "similar confirmed cases" panel (GET /v1/cases/{id}/similar) and the side-by-side compare view
 * its entries open (the atlas's frame is its small thumbnail, said so); and, for a model without an atlas or with
 * one that is not calibrated, the one note that it cannot tell. An unfamiliar case has no second opinion and no
 * similar cases: its panel lists the nearest atlas cases under a heading that says they are not similar, and the
 * vote is worded as what it is.
 */
"use strict";

const UNFAMILIAR = "#7c3aed";  // the timeline's mark of an unfamiliar frame
const ATLAS = { caseId: null, similar: null, loading: false };

function renderAtlasNote(card) {
  const note = $("atlas-note");  // no atlas, or one that is not calibrated: the server's words for it
  const text = card.atlas_note ||
    (card.atlas ? "" : "no atlas: mucosa cannot tell whether this recording is unlike its training data");
  note.hidden = !text;
  note.textContent = note.title = text;
}

/* The verdict's atlas lines: the unfamiliar share (and the verdict `unfamiliar` in a neutral tone) and the vote. */
function renderAtlasVerdict(c, v) {
  const box = $("verdict");
  const unfamiliar = Boolean(v && v.label === "unfamiliar");
  box.classList.toggle("unfamiliar", unfamiliar);
  if (unfamiliar) {
    box.style.setProperty("--tone", GREYS[0]);
    $("verdict-score").textContent = v.reason || "As a whole, this recording is unlike the confirmed cases of the " +
      "atlas: no class is given.";  // a case kept before the server gave its reason
  }
  const share = v && v.unfamiliar !== null && v.unfamiliar !== undefined && !gatheringVerdict(v) ?
    `unfamiliar frames ${pct(v.unfamiliar)}` : "";  // of the first few frames, a share says nothing yet
  const vote = !(v && v.atlas_vote) ? "" : (unfamiliar ? "no second opinion (the nearest atlas frames are not " +
    "similar): " : "atlas vote (second opinion): ") + `${v.atlas_vote.label} ${pct(v.atlas_vote.share)} of the ` +
    "nearest confirmed frames";
  const uncalibrated = Boolean(S.card && S.card.atlas && !S.card.atlas.calibrated);  // an atlas that cannot tell
  const unchecked = uncalibrated && v && v.class ?
    "not checked for recordings unlike the training data (atlas not calibrated)" : "";  // its class stands unchecked
  $("verdict-atlas").textContent = [vote, share, unchecked].filter(Boolean).join(" · ");
  renderDisagreement(v);
  renderSimilar(c);
}

/* The atlas's vote names another class than the verdict: said in words, with a sign, not by a colour alone. Of an
   unfamiliar case (a still image's often is), against the network's unsupported guess: neither is a verdict. */
function renderDisagreement(v) {
  const note = $("verdict-disagrees");
  const unfamiliar = Boolean(v && v.label === "unfamiliar");
  const called = unfamiliar ? networkGuess(v) : v && v.class;
  const differs = Boolean(called && v.atlas_vote && v.atlas_vote.label !== called);
  note.hidden = !differs;
  if (!differs) note.textContent = "";
  else if (unfamiliar) {
    note.textContent = `⚠ The network's unsupported guess (${called}) and most of the nearest atlas frames ` +
      `(${v.atlas_vote.label}, ${pct(v.atlas_vote.share)}) disagree. Neither is a verdict: this recording is unlike ` +
      "the confirmed cases.";
  } else {
    note.textContent = `⚠ The atlas's vote disagrees with the verdict: most of the nearest confirmed ` +
      `frames are ${v.atlas_vote.label} (${pct(v.atlas_vote.share)}), the network calls ${v.class}. Look at the ` +
      "similar cases and the frames before relying on the verdict.";
  }
}

/* ------------------------------------------------------------------------------------------- similar cases */

async function loadSimilar(id) {
  ATLAS.loading = true;
  try {
    const answer = await (await api(`/v1/cases/${id}/similar?k=5`)).json();
    if (S.caseId === id) ATLAS.similar = answer.similar;
  } catch (error) {
    if (S.caseId === id) { ATLAS.similar = []; $("similar-status").textContent = String(error.message || error); }
  }
  ATLAS.loading = false;
  if (S.caseId === id) renderSimilar(S.summary);
}

/* The panel's heading and words: similar confirmed cases, or of an unfamiliar case the nearest, said not to be. */
function renderSimilarHead(c) {
  const unfamiliar = Boolean(c.verdict && c.verdict.label === "unfamiliar");
  $("similar").classList.toggle("unfamiliar", unfamiliar);
  $("similar-title").textContent = unfamiliar ? "Nearest atlas cases — this recording is unlike all of them" :
    "Similar confirmed cases";
  $("similar-about").textContent = (unfamiliar ? "Not similar: the confirmed cases least unlike this recording, " +
    "for reference only. " : "") + "Listed by how many of this case's frames found each case among their nearest, " +
    "then by distance: 0 is identical, smaller is closer.";
  $("compare-head").textContent = unfamiliar ? "Compare with a nearest atlas case (not similar)" :
    "Compare with a confirmed case";
}

function renderSimilar(c) {
  const panel = $("similar");
  panel.hidden = !(S.card && S.card.atlas) || !c;
  if (panel.hidden) return;
  renderSimilarHead(c);
  if (ATLAS.caseId !== c.id) {
    Object.assign(ATLAS, { caseId: c.id, similar: null, loading: false });
    $("similar-list").textContent = "";
    closeCompare();
  }
  const status = $("similar-status");
  if (c.status !== "done") { status.textContent = "once the case is done"; return; }
  if (ATLAS.similar === null) {
    status.textContent = "searching…";
    if (!ATLAS.loading) loadSimilar(c.id);
    return;
  }
  const list = $("similar-list");
  if (list.childElementCount || !ATLAS.similar.length) {
    if (!ATLAS.similar.length && !status.textContent.trim()) status.textContent = "none found";
    return;
  }
  status.textContent = "";
  ATLAS.similar.forEach((found, index) => list.append(similarItem(found, index)));
}

function similarItem(found, index) {
  const li = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.className = "similar-item";
  button.dataset.index = index;
  const frame = found.closest[0];
  const img = document.createElement("img");
  img.src = frame.thumbnail;
  img.alt = `closest frame ${frame.frame + 1} of ${frame.file}`;
  const words = document.createElement("span");
  words.innerHTML = `<b>${esc(found.label)}</b> · ${esc(foundBy(found))} · distance ${fmt(found.distance, 3)}<br>` +
    `<span class="muted">patient ${esc(found.patient)} · ${esc(frame.file)}</span>`;
  button.append(img, words);
  const action = document.createElement("span");
  action.className = "sr-only";
  action.textContent = ": compare its closest frame with this case's frame";
  words.append(action);
  button.addEventListener("click", () => openCompare(found));
  li.append(button);
  return li;
}

/* "found by 12 of 40 frames": how many of the case's frames have this case among their nearest (the order). */
function foundBy(found) {
  return `found by ${found.matched_frames} of ${counted(found.query_frames, "frame")}`;
}

/* ------------------------------------------------------------------------------------------- compare view */

function openCompare(found) {
  const frame = found.closest[0];
  const position = S.rows.findIndex((row) => row.frame === frame.query_frame);
  if (position >= 0) seekTo(position);
  const ours = $("compare-ours");
  ours.src = withToken(`/v1/cases/${S.caseId}/frames/${frame.query_frame}.jpg`);
  const where = position >= 0 ? frameText(position) : `frame ${frame.query_frame + 1}`;
  ours.alt = `this case, ${where}`;
  const theirs = $("compare-theirs");
  theirs.onload = () => {  // the atlas keeps a small thumbnail of each frame: shown at twice its size, and said so
    theirs.style.width = `${2 * theirs.naturalWidth}px`;
    $("compare-theirs-size").textContent = `atlas thumbnail, ${theirs.naturalWidth} px (shown at twice its size; ` +
      "the atlas keeps no larger frame)";
  };
  theirs.src = frame.thumbnail;
  theirs.alt = `confirmed case ${frame.file} (${found.label}, patient ${found.patient}), frame ${frame.frame + 1}`;
  $("compare-ours-caption").textContent = `This case · ${where}`;
  $("compare-theirs-caption").textContent = `${found.label} · ${frame.file} · frame ${frame.frame + 1} · ` +
    `distance ${fmt(found.distance, 3)} as listed (this pair of frames ${fmt(frame.distance, 3)})`;
  $("compare").hidden = false;
  $("compare-close").focus();
}

function closeCompare() {
  const view = $("compare");
  if (view.hidden) return;
  view.hidden = true;
  const first = document.querySelector("#similar-list button");
  if (first && view.contains(document.activeElement)) first.focus();
}

/* ------------------------------------------------------------------------------------------- timeline marks */

/* A mark inside the plot, just under P = 1, at each unfamiliar frame; their count joins the timeline's text
   alternative. */
function drawUnfamiliar(g, geo) {
  const step = Math.max(geo.width / geo.total, 1.5);
  g.fillStyle = UNFAMILIAR;
  let marked = 0;
  for (let k = 0; k < S.rows.length; k++) {
    if (!S.rows[k].unfamiliar) continue;
    marked++;
    g.fillRect(geo.x(k) - step / 2, PLOT.top, step, 5);
  }
  const canvas = $("timeline");
  canvas.dataset.unfamiliar = marked;
  if (marked) $("timeline-summary").textContent += ` ${counted(marked, "frame")} marked unfamiliar (unlike the atlas).`;
}

function setupAtlas() {
  $("compare-close").addEventListener("click", closeCompare);
  $("compare").addEventListener("keydown", (e) => { if (e.key === "Escape") { e.preventDefault(); closeCompare(); } });
}
