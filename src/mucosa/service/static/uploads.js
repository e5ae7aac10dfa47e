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

function upload(files) {
  if (!files.length) return;
  const form = new FormData();
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
      notice("");
      refreshCases();
      openCase(created[0].id);
    } else if (xhr.status === 401) {
      finishRows(rows, "needs a token", true);
      notice("");
      askToken();
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
