/* mucosa viewer: the review of a case against histology. A reviewer or an admin records the histology (one of
 * the model's classes), whether they agree with the verdict, and a note (POST /v1/cases/{id}/review); every
 * earlier review stays listed, oldest first (a later one never replaces it). A viewer (GET /v1/me) sees the
 * reviews and why the form is not there; a case that is not done cannot be reviewed yet.
 */
"use strict";

const REVIEW = { caseId: null, reviews: [] };
const MAY_REVIEW = ["reviewer", "admin"];

/* Why the form is not offered now, or "" when it is. */
function reviewBlocked(c) {
  if (S.me && !MAY_REVIEW.includes(S.me.role)) {
    return `Signed in as ${S.me.name}, role ${S.me.role}: only a reviewer or an admin records reviews.`;
  }
  if (c && c.status === "failed") return "This case failed: it has no verdict to review.";
  if (!c || c.status !== "done") return "The review opens when the case is done.";
  return "";
}

function loadReviews(id, reviews) {
  REVIEW.caseId = id;
  REVIEW.reviews = reviews || [];
  renderReviews();
}

function renderReview() {
  const c = S.summary;
  const why = reviewBlocked(c);
  $("review-why").hidden = !why;
  $("review-why").textContent = why;
  $("review-form").hidden = Boolean(why);
  const v = c && c.verdict;
  $("review-verdict").textContent = v && v.label ? `(${v.label})` : "(no verdict)";
  syncAgrees();
}

/* When the verdict is a class, agreement follows from the histology (the server's rule: agrees is histology ==
   verdict), so it is set, not asked; for no verdict (unfamiliar, none) it is the reviewer's judgement. */
function syncAgrees() {
  const form = $("review-form");
  const v = S.summary && S.summary.verdict;
  const cls = v && v["class"];
  const histology = form.elements.histology.value;
  for (const input of form.querySelectorAll("input[name=agrees]")) {
    input.disabled = Boolean(cls);
    if (cls) input.checked = Boolean(histology) && (input.value === "true") === (histology === cls);
  }
  $("review-agrees-why").hidden = !cls;
  $("review-agrees-why").textContent = cls ? `Set from the histology you choose: the verdict is ${cls}.` : "";
}

function reviewWords(r) {
  const when = r.at ? r.at.replace("T", " ").slice(0, 16) + " UTC" : "";
  // an unfamiliar case calls no class (verdict null), but its verdict, unfamiliar, is what was judged
  const judged = r.verdict ? `the verdict ${r.verdict}` :
    r.verdict_text === "unfamiliar" ? "the verdict unfamiliar" : "no verdict";
  return `${when} · ${r.reviewer}: histology ${r.histology}, ${r.agrees ? "agrees with" : "disagrees with"} ` +
    `${judged} (model ${r.model_version || "unknown"})`;
}

function renderReviews() {
  const list = $("reviews");
  list.textContent = "";
  for (const r of REVIEW.reviews) {
    const li = document.createElement("li");
    li.tabIndex = -1;
    li.dataset.id = r.id;
    li.textContent = reviewWords(r);
    if (r.note) {
      const note = document.createElement("q");
      note.textContent = r.note;
      li.append(" — ", note);
    }
    list.append(li);
  }
  if (!REVIEW.reviews.length) {
    const li = document.createElement("li");
    li.className = "muted";
    li.textContent = "None yet.";
    list.append(li);
  }
  const latest = REVIEW.reviews[REVIEW.reviews.length - 1];
  $("review-summary").textContent = latest ? `(${counted(REVIEW.reviews.length, "review")}, latest: ` +
    `${latest.histology}, ${latest.agrees ? "agrees" : "disagrees"})` : "(none yet)";
}

function fillHistology(card) {
  const select = $("review-histology");
  select.length = 1;
  for (const cls of card.classes) select.add(new Option(cls, cls));
  // tissue the model does not know (a colon video for a brain model): never a training label (store export)
  select.add(new Option("none of the model's classes (other tissue)", OUTSIDE_CLASSES));
}

async function submitReview(e) {
  e.preventDefault();
  const form = $("review-form");
  const id = S.caseId;
  const histology = form.elements.histology.value;
  const agrees = form.elements.agrees.value;
  const missing = !histology ? ["Choose the histology.", form.elements.histology] :
    !agrees ? ["Say whether you agree with the verdict.", form.querySelector("input[name=agrees]")] : null;
  if (missing) { errorLine("review-error", missing[0]); missing[1].focus(); return; }
  $("review-submit").disabled = true;
  try {
    const body = { histology, agrees: agrees === "true", note: form.elements.note.value.trim() };
    const review = await (await api(`/v1/cases/${id}/review`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    })).json();
    if (S.caseId !== id) return;
    errorLine("review-error", "");
    form.reset();
    syncAgrees();
    REVIEW.reviews.push(review);
    renderReviews();
    $("reviews").lastElementChild.focus();
    refreshCases();
  } catch (error) {
    errorLine("review-error", `The review was not recorded: ${error.message}`);
  } finally {
    $("review-submit").disabled = false;
  }
}

function setupReview() {
  $("review-form").addEventListener("submit", submitReview);
  $("review-histology").addEventListener("change", syncAgrees);
  // the line that asked for a field goes once a field changes (it stayed after the histology was chosen)
  $("review-form").addEventListener("change", () => errorLine("review-error", ""));
}
