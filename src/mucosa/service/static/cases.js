/* mucosa viewer: the case list. Search and filters (GET /v1/cases with patient, since, until, verdict,
 * reviewed, q: combined with AND; the total matching in the X-Total-Count header), each case a link to its
 * stable address /#/cases/ID, with its exam fields (patient, exam date, region), status, verdict and latest review
 * (the summary's `review`). Opening a case from the list moves the focus to it.
 */
"use strict";

const LIST_LIMIT = 100;
const FILTERS = ["q", "patient", "since", "until", "verdict", "reviewed"];

/* The list's query from the filter form: only the fields given. */
function listQuery() {
  const params = new URLSearchParams();
  for (const name of FILTERS) {
    const value = $("filters").elements[name].value.trim();
    if (value) params.set(name, value);
  }
  params.set("limit", String(LIST_LIMIT));
  return params;
}

/* "patient P-17 · exam 2024-05-02 · terminal ileum"; the upload day when the exam has no date. */
function examWords(c, withUpload = true) {
  const parts = [];
  if (c.patient) parts.push(`patient ${c.patient}`);
  if (c.exam_date) parts.push(`exam ${c.exam_date}`);
  else if (withUpload && c.created) parts.push(`uploaded ${new Date(c.created * 1000).toISOString().slice(0, 10)}`);
  if (c.region) parts.push(c.region);
  return parts.join(" · ");
}

async function refreshCases() {
  const query = listQuery();
  let response;
  try {
    response = await api("/v1/cases?" + query);
    S.cases = await response.json();
  } catch (error) {
    errorLine("filters-error", error.message);
    return;
  }
  errorLine("filters-error", "");
  const total = response.headers.get("X-Total-Count");
  const count = total === null ? S.cases.length : Number(total);
  const filtered = FILTERS.some((name) => query.has(name));
  $("cases-total").textContent = `· ${count}${filtered ? " found" : ""}` +
    (count > S.cases.length ? `, newest ${S.cases.length} shown` : "");
  $("filters-on").textContent = activeFilters();
  renderCaseList(filtered);
}

function activeFilters() {
  const n = FILTERS.filter((name) => name !== "q" && $("filters").elements[name].value).length;
  return n ? `(${n} on)` : "";
}

/* Rebuild the list; the case item that had the focus keeps it (the list refreshes while one works in it). */
function renderCaseList(filtered) {
  const list = $("cases");
  const focused = document.activeElement && document.activeElement.closest("#cases .case-item");
  const focusedId = focused ? focused.dataset.id : null;
  list.textContent = "";
  if (!S.cases.length) {
    const li = document.createElement("li");
    li.className = "empty-list";
    li.textContent = filtered ? "No case matches these filters." : "No cases yet.";
    list.append(li);
  }
  for (const c of S.cases) list.append(caseItem(c));
  if (focusedId) {
    const again = list.querySelector(`.case-item[data-id="${CSS.escape(focusedId)}"]`);
    if (again) again.focus();
  }
}

function caseItem(c) {
  const li = document.createElement("li");
  const link = document.createElement("a");
  link.className = "case-item";
  link.href = `#/cases/${encodeURIComponent(c.id)}`;
  link.dataset.id = c.id;
  if (c.id === S.caseId) link.setAttribute("aria-current", "true");
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = c.name;
  const exam = document.createElement("span");
  exam.className = "exam-line";
  exam.textContent = examWords(c);
  const line = document.createElement("span");
  line.className = "line";
  const status = document.createElement("span");
  status.textContent = (c.status === "running" ? `running ${Math.round(100 * c.progress)}%` : c.status) +
    (c.warnings && c.warnings.length ? " · damaged" : "");
  const verdict = document.createElement("span");
  verdict.className = "called";
  if (c.verdict && c.verdict.class) verdict.style.setProperty("--tone", colourOf(c.verdict.class));
  verdict.textContent = c.verdict && c.verdict.label ? capital(c.verdict.label) : "";
  line.append(status, verdict);
  link.append(name, exam, line);
  if (c.reviewed) link.append(reviewLine(c.review));
  link.addEventListener("click", () => {  // Enter or a click: the focus goes to the case once it is open
    S.focusCase = c.id;
    if (c.id === S.caseId && !$("case").hidden) { S.focusCase = null; $("case-name").focus(); }
  });
  li.append(link);
  return li;
}

/* "reviewed: histology glioblastoma, disagrees": the latest review of a case, as the list shows it. */
function reviewLine(review) {
  const line = document.createElement("span");
  line.className = "review-line";
  line.textContent = review ? `reviewed: histology ${review.histology}, ${review.agrees ? "agrees" : "disagrees"}` :
    "reviewed";
  return line;
}

function markCurrentCase() {
  for (const item of $("cases").querySelectorAll(".case-item")) {
    if (item.dataset.id === S.caseId) item.setAttribute("aria-current", "true"); else item.removeAttribute("aria-current");
  }
}

function scheduleRefresh() {
  const busy = S.cases.some((c) => c.status === "queued" || c.status === "running");
  setTimeout(async () => { await refreshCases(); scheduleRefresh(); }, busy ? 1500 : 8000);
}

/* The verdict filter's choices: the model's classes, unfamiliar, none. */
function fillVerdictFilter(card) {
  const select = $("f-verdict");
  select.length = 1;
  for (const [value, words] of [...card.classes.map((c) => [c, c]), ["unfamiliar", "unfamiliar"],
    ["none", "no verdict"]]) select.add(new Option(words, value));
}

function setupFilters() {
  const form = $("filters");
  let timer = null;
  const soon = () => { clearTimeout(timer); timer = setTimeout(refreshCases, 250); };
  const now = () => { clearTimeout(timer); refreshCases(); };
  form.addEventListener("submit", (e) => { e.preventDefault(); now(); });
  form.addEventListener("keydown", (e) => {  // Enter in a field: at once (several fields: no implicit submission)
    if (e.key === "Enter" && e.target.tagName === "INPUT") { e.preventDefault(); now(); }
  });
  form.addEventListener("input", soon);
  form.addEventListener("change", soon);
  form.addEventListener("reset", () => setTimeout(refreshCases, 0));
}
