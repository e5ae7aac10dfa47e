/* mucosa viewer: the audit page (/#/audit, filters in its address: /#/audit?since=YYYY-MM-DD&model=VERSION).
 * GET /v1/audit: accuracy, sensitivity and specificity of the verdicts against the reviews' histology with
 * their exact intervals, the confusion table, the calibration plot (GET /v1/audit/calibration.png, with its
 * figures as a table: the plot's text alternative), and the same figures by model version and by month.
 */
"use strict";

const AUDIT = { versions: new Set(), plot: null };
const FIGURES = { accuracy: "Accuracy", sensitivity: "Sensitivity", specificity: "Specificity",
  ppv: "Positive predictive value", npv: "Negative predictive value" };

function auditParams() {
  const query = (window.location.hash.split("?")[1]) || "";
  const params = new URLSearchParams(query);
  return { since: params.get("since") || "", model: params.get("model") || "" };
}

/* "Sensitivity", or for three classes and more "Sensitivity for meningioma" (keys like sensitivity[1]). */
function figureName(key, classes) {
  const indexed = key.match(/^(\w+)\[(\d+)\]$/);
  if (indexed) return `${FIGURES[indexed[1]] || indexed[1]} for ${classes[Number(indexed[2])]}`;
  return FIGURES[key] || key;
}

function figureKeys(block) {
  return Object.keys(block).filter((key) => block[key] && typeof block[key] === "object" && "ci_method" in block[key]);
}

function intervalWords(entry) {
  if (!entry) return "–";
  if (entry.ci) return `${fmt(entry.ci[0])} to ${fmt(entry.ci[1])}`;
  return entry.ci_note || "no interval";
}

function countWords(entry) { return entry && entry.count ? `${entry.count[0]} of ${entry.count[1]}` : "–"; }

function cell(tag, text, attributes = {}) {
  const el = document.createElement(tag);
  el.textContent = text;
  for (const [key, value] of Object.entries(attributes)) el.setAttribute(key, value);
  return el;
}

/* A table in a box that scrolls sideways on a phone (a keyboard stop, named after the table's caption). */
function table(caption, head, rows) {
  const box = cell("div", "", { class: "table-scroll", tabindex: "0", role: "region", "aria-label": caption });
  const t = document.createElement("table");
  t.className = "audit-table";
  t.append(cell("caption", caption));
  const thead = t.createTHead().insertRow();
  for (const text of head) thead.append(cell("th", text, { scope: "col" }));
  const body = t.createTBody();
  for (const row of rows) {
    const tr = body.insertRow();
    row.forEach((text, k) => tr.append(k === 0 ? cell("th", text, { scope: "row" }) : cell("td", text)));
  }
  box.append(t);
  return box;
}

function figuresTable(block, classes, positive) {
  const rows = figureKeys(block).map((key) => [figureName(key, classes), fmt(block[key].value),
    intervalWords(block[key]), countWords(block[key])]);
  const about = positive ? ` (positive class: ${positive})` : "";
  return table(`Figures on ${counted(block.cases, "counted case")}${about}`,
    ["Figure", "Value", "95% exact interval", "Cases (k of n)"], rows);
}

function notCountedWords(block) {
  const reasons = Object.entries(block.not_counted || {});
  return reasons.length ? "Not counted: " + reasons.map(([why, n]) => `${n} ${why}`).join(", ") + "." :
    "Every reviewed case counted.";
}

function confusionTable(confusion) {
  const rows = confusion.classes.map((cls, i) => [cls, ...confusion.counts[i].map(String)]);
  return table("Confusion table: histology in rows, verdict in columns",
    ["Histology \\ verdict", ...confusion.classes], rows);
}

function calibrationTable(curve, positive) {
  const rows = curve.map((b) => [`${fmt(b.bin[0], 1)}–${fmt(b.bin[1], 1)}`, String(b.cases), fmt(b.predicted),
    fmt(b.observed), intervalWords(b)]);
  return table(`Calibration: share of cases histology found ${positive}, by the model's probability of ${positive}`,
    ["Probability bin", "Cases", "Mean predicted", "Observed", "95% exact interval"], rows);
}

/* One row per group (model version or month): its cases and its main figures, each with its interval. */
function groupTable(caption, first, groups, classes) {
  const keys = ["accuracy", "sensitivity", "specificity"];
  const rows = Object.entries(groups).map(([name, block]) => [name, String(block.cases),
    ...keys.map((key) => block[key] ? `${fmt(block[key].value)} (${intervalWords(block[key])})` : "–")]);
  return table(caption, [first, "Cases", ...keys.map((key) => `${figureName(key, classes)} (95% interval)`)], rows);
}

async function calibrationFigure(query, curve, positive) {
  const figure = document.createElement("figure");
  figure.className = "audit-plot";
  if (!positive) {
    figure.append(cell("p", "No calibration curve: it needs a model of two classes.", { class: "muted" }));
    return figure;
  }
  try {
    const blob = await (await api("/v1/audit/calibration.png?" + query)).blob();
    if (AUDIT.plot) URL.revokeObjectURL(AUDIT.plot);
    AUDIT.plot = URL.createObjectURL(blob);
    const img = cell("img", "", { id: "audit-calibration", src: AUDIT.plot,
      alt: `Calibration plot: the observed share of ${positive} against the mean predicted probability of ` +
        `${positive}, in ${counted(curve.length, "bin")}; its figures are in the table below.` });
    figure.append(img, cell("figcaption", "Calibration: a calibrated model's points lie on the diagonal."));
  } catch (error) {
    figure.append(cell("p", `No calibration plot: ${error.message}`, { class: "muted" }));
  }
  if (curve.length) figure.append(calibrationTable(curve, positive));
  return figure;
}

async function renderAudit() {
  const { since, model } = auditParams();
  $("a-since").value = since;
  const query = new URLSearchParams();
  if (since) query.set("since", since);
  if (model) query.set("model", model);
  const body = $("audit-body");
  let audit;
  try {
    audit = await (await api("/v1/audit?" + query)).json();
  } catch (error) {
    errorLine("audit-error", `The audit could not be made: ${error.message}`);
    body.textContent = "";
    return;
  }
  errorLine("audit-error", "");
  positiveWords(audit.classes, audit.positive);
  for (const version of Object.keys(audit.by_model)) AUDIT.versions.add(version);
  fillVersions(model);
  const o = audit.overall;
  const parts = [cell("h2", "All reviewed cases" + (model ? ` · model ${model}` : "") + (since ? ` · since ${since}` : "")),
    cell("p", `${counted(o.cases, "case")} counted. ${notCountedWords(o)}`, { id: "audit-counted" }),
    figuresTable(o, audit.classes, audit.positive), confusionTable(o.confusion),
    await calibrationFigure(query, o.calibration, audit.positive),
    cell("h2", "By model version"),
    groupTable("Cases and figures of each model version", "Model version", audit.by_model, audit.classes),
    cell("h2", "By month"),
    groupTable("Cases and figures of each month (of the exam date, else the upload day)", "Month", audit.by_month,
      audit.classes)];
  if (!isAuditShown()) return;
  body.textContent = "";
  body.append(...parts);
}

/* Which class sensitivity is for, and why: the model's positive class (the class its probability is of). */
function positiveWords(names, positive) {
  const line = $("audit-positive");
  const other = names.filter((cls) => cls !== positive);
  line.hidden = names.length < 2;
  line.textContent = positive ? `Sensitivity is for ${positive}, the model's positive class (the class its ` +
    `probability is of, as its model card says); specificity is for ${other.join(", ")}.` :
    "Sensitivity and specificity are given for each class against all the others (the model has more than two).";
}

function fillVersions(chosen) {
  const select = $("a-model");
  select.length = 1;
  for (const version of [...AUDIT.versions].sort()) select.add(new Option(version, version));
  if (chosen && !AUDIT.versions.has(chosen)) select.add(new Option(chosen, chosen));
  select.value = chosen;
}

function isAuditShown() { return !$("audit").hidden; }

function setupAudit() {
  $("audit-filters").addEventListener("change", () => {
    const query = new URLSearchParams();
    if ($("a-since").value) query.set("since", $("a-since").value);
    if ($("a-model").value) query.set("model", $("a-model").value);
    window.location.hash = "#/audit" + (query.size ? "?" + query : "");
  });
  $("audit-filters").addEventListener("submit", (e) => e.preventDefault());
}
