/* mucosa viewer: uploads. One drop is one request: one video or several images open one case, several
 * videos a case each (the API answers with their list). Each file has its own progress bar, from the bytes
 * of the request sent so far; a refusal names the files by their kinds ("2 videos", not "2 images").
 */
"use strict";

function uploadRows(files) {
  const list = $("uploads");
  list.hidden = false;
  return files.map((file) => {
    const li = document.createElement("li");
    const name = document.createElement("span");
    name.className = "upload-name";
    name.textContent = `${file.name} (${kindOf(file)})`;
    const bar = document.createElement("progress");
    bar.max = 100;
    bar.value = 0;
    bar.setAttribute("aria-label", `upload of ${file.name}`);
    const state = document.createElement("span");
    state.className = "upload-state";
    state.textContent = "waiting";
    li.append(name, bar, state);
    list.prepend(li);
    return { file, bar, state };
  });
}

/* Each file's share of the bytes sent: the form sends the files in order, one after the other. */
function showProgress(rows, loaded) {
  let offset = 0;
  for (const row of rows) {
    const done = Math.max(0, Math.min(1, (loaded - offset) / Math.max(row.file.size, 1)));
    row.bar.value = Math.round(100 * done);
    row.state.textContent = done >= 1 ? "sent" : done > 0 ? `${Math.round(100 * done)}%` : "waiting";
    offset += row.file.size;
  }
}

function finishRows(rows, text, failed = false) {
  for (const row of rows) {
    if (!failed) row.bar.value = 100;
    row.state.textContent = text;
    row.bar.closest("li").classList.toggle("failed", failed);
  }
}

/* The exam fields given for the next upload ({patient, exam_date, region}, only those filled), or an error line. */
function examFields() {
  const fields = {};
  for (const [id, name] of [["exam-patient", "patient"], ["exam-date", "exam_date"], ["exam-region", "region"]]) {
    const value = $(id).value.trim();
    if (value) fields[name] = value;
  }
  for (const name of ["patient", "region"]) {
    if (/[\u0000-\u001f\u007f]/.test(fields[name] || "")) return { error: `${name}: control characters are not allowed` };
  }
  if ($("exam-date").validity.badInput) return { error: "exam_date: not a date (YYYY-MM-DD)" };
  if (fields.exam_date && fields.exam_date > today()) return { error: `exam_date: ${fields.exam_date} is in the future` };
  return { fields };
}

function today() {
  const now = new Date();
  return new Date(now.getTime() - now.getTimezoneOffset() * 60000).toISOString().slice(0, 10);
}

function showExam(cleared = false) {
  const { fields } = examFields();
  const words = fields ? examWords(fields, false) : "";
  $("exam-now").textContent = words ? `(${words})` : cleared ? "(cleared after the last upload)" : "(optional)";
}

/* After an upload the server took: its exam fields are cleared, so that the next patient's video is not filed
 * under this one; the upload's row says under what it was filed. */
function clearExam(rows, fields) {
  const words = examWords(fields, false);
  if (!words) return;
  for (const id of ["exam-patient", "exam-date", "exam-region"]) $(id).value = "";
  showExam(true);
  const line = document.createElement("span");
  line.className = "upload-exam";
  line.textContent = `Filed under ${words}. Exam fields cleared for the next patient.`;
  rows[rows.length - 1].state.closest("li").append(line);  // the row on top
}

function setupExam() {
  $("exam-date").max = today();
  $("exam").addEventListener("input", showExam);
}

function upload(files) {
  if (!files.length) return;
  const exam = examFields();
  if (exam.error) {
    $("exam").open = true;
    notice(`${describeFiles(files)} not sent: ${exam.error}`, true);
    return;
  }
  const form = new FormData();
  for (const [name, value] of Object.entries(exam.fields)) form.append(name, value);
  for (const file of files) form.append("file", file, file.name);
  const label = describeFiles(files);
  const rows = uploadRows(files);
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/v1/cases");
  for (const [key, value] of Object.entries(authHeaders())) xhr.setRequestHeader(key, value);
  xhr.upload.onprogress = (e) => { if (e.lengthComputable) showProgress(rows, e.loaded * sizeOf(files) / e.total); };
  xhr.onload = () => {
    let body = {};
    try { body = JSON.parse(xhr.responseText); } catch (error) { /* not JSON */ }
    if (xhr.status === 202) {
      const created = body.cases || [body];
      finishRows(rows, created.length > 1 ? "a case each" : "case opened");
      clearExam(rows, exam.fields);
      notice("");
      refreshCases();
      showCase(created[0].id);
    } else if (xhr.status === 401) {
      finishRows(rows, "needs a token", true);
      notice("");
      needSignIn();
    } else {
      const retry = xhr.getResponseHeader("Retry-After");
      finishRows(rows, "refused", true);
      notice(`${label}: ${body.detail || xhr.statusText} (${xhr.status})` + (retry ? ` — retry in ${retry} s` : ""), true);
    }
  };
  xhr.onerror = () => { finishRows(rows, "failed", true); notice(`${label}: the upload failed (connection lost)`, true); };
  notice("");
  xhr.send(form);
}

function sizeOf(files) { return files.reduce((total, file) => total + file.size, 0); }

function setupDrop() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => { upload([...e.target.files]); e.target.value = ""; });
  for (const target of [drop, $("main")]) {
    for (const name of ["dragenter", "dragover"]) {
      target.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
    }
    for (const name of ["dragleave", "drop"]) target.addEventListener(name, () => drop.classList.remove("over"));
    target.addEventListener("drop", (e) => { e.preventDefault(); upload([...e.dataTransfer.files]); });
  }
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
}
