// The page of `metalab serve`: classes of drawn or dropped examples, sent to the server as one
// episode (POST /episodes) whenever they changed, and queries labelled against it
// (POST /episodes/{id}/predict). Drawings are black ink on white, as a person draws; the server
// prepares them as `metalab predict` prepares files (inverting them for Omniglot-like checkpoints).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { classes: [], selected: -1, episode: null, dirty: true, busy: false, model: null };

// ---- the drawing pad ------------------------------------------------------------------------
const pad = $("pad");
const ctx = pad.getContext("2d");
let drawing = false;
let empty = true;

function clearPad() {
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, pad.width, pad.height);
  empty = true;
}

function padPoint(e) {
  const r = pad.getBoundingClientRect();
  return [(e.clientX - r.left) * (pad.width / r.width), (e.clientY - r.top) * (pad.height / r.height)];
}

pad.addEventListener("pointerdown", (e) => {
  drawing = true;
  empty = false;
  pad.setPointerCapture(e.pointerId);
  const [x, y] = padPoint(e);
  ctx.strokeStyle = "#000";
  ctx.lineWidth = Number($("pen").value);
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.moveTo(x, y);
  ctx.lineTo(x, y); // a click leaves a dot
  ctx.stroke();
});
pad.addEventListener("pointermove", (e) => {
  if (!drawing) return;
  const [x, y] = padPoint(e);
  ctx.lineTo(x, y);
  ctx.stroke();
});
for (const type of ["pointerup", "pointercancel"]) {
  pad.addEventListener(type, () => { drawing = false; });
}
$("clear").addEventListener("click", clearPad);

// ---- status and feedback --------------------------------------------------------------------
function setStatus(text, kind) {
  const s = $("status");
  s.textContent = text;
  s.className = kind || "";
}

function setBusy(busy) {
  state.busy = busy;
  for (const id of ["predict", "add-example", "add-class"]) $(id).disabled = busy;
}

async function api(method, path, body) {
  const options = { method, headers: {} };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const data = response.status === 204 ? null : await response.json();
  if (!response.ok) {
    const error = new Error(data && data.detail ? data.detail : `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

// ---- classes --------------------------------------------------------------------------------
function changed() {
  state.dirty = true;
  renderClasses();
}

function addClass(name) {
  name = name.trim() || `class ${state.classes.length + 1}`;
  if (state.classes.some((c) => c.name === name)) {
    setStatus(`There is already a class named "${name}".`, "error");
    return;
  }
  state.classes.push({ name, examples: [] });
  state.selected = state.classes.length - 1;
  changed();
}

function addExample(index, dataUrl) {
  state.classes[index].examples.push(dataUrl);
  changed();
}

function readFiles(files, callback) {
  for (const file of files) {
    if (!file.type.startsWith("image/")) continue;
    const reader = new FileReader();
    reader.onload = () => callback(reader.result, file.name);
    reader.readAsDataURL(file);
  }
}

function dropTarget(element, onFiles) {
  element.addEventListener("dragover", (e) => { e.preventDefault(); element.classList.add("drop"); });
  element.addEventListener("dragleave", () => element.classList.remove("drop"));
  element.addEventListener("drop", (e) => {
    e.preventDefault();
    element.classList.remove("drop");
    onFiles(e.dataTransfer.files);
  });
}

function renderClasses() {
  const list = $("classes");
  list.replaceChildren();
  const target = $("target");
  target.replaceChildren();
  state.classes.forEach((c, i) => {
    const li = document.createElement("li");
    li.className = "class" + (i === state.selected ? " selected" : "");
    li.dataset.name = c.name;
    const head = document.createElement("div");
    head.className = "class-head";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = `${c.name} (${c.examples.length})`;
    name.addEventListener("click", () => { state.selected = i; renderClasses(); });
    const remove = document.createElement("button");
    remove.textContent = "×";
    remove.title = "remove this class";
    remove.addEventListener("click", () => {
      state.classes.splice(i, 1);
      state.selected = Math.min(state.selected, state.classes.length - 1);
      changed();
    });
    head.append(name, remove);
    const thumbs = document.createElement("div");
    thumbs.className = "thumbs";
    c.examples.forEach((url, k) => {
      const img = document.createElement("img");
      img.src = url;
      img.title = "click to remove this example";
      img.addEventListener("click", () => { c.examples.splice(k, 1); changed(); });
      thumbs.append(img);
    });
    li.append(head, thumbs);
    dropTarget(li, (files) => readFiles(files, (url) => addExample(i, url)));
    list.append(li);
    const option = document.createElement("option");
    option.value = String(i);
    option.textContent = c.name;
    option.selected = i === state.selected;
    target.append(option);
  });
}

$("add-class").addEventListener("click", () => { addClass($("class-name").value); $("class-name").value = ""; });
$("class-name").addEventListener("keydown", (e) => { if (e.key === "Enter") $("add-class").click(); });
$("target").addEventListener("change", (e) => { state.selected = Number(e.target.value); renderClasses(); });
$("add-example").addEventListener("click", () => {
  if (state.selected < 0) { setStatus("Make a class first.", "error"); return; }
  if (empty) { setStatus("Draw something first.", "error"); return; }
  addExample(state.selected, pad.toDataURL("image/png"));
  clearPad();
  setStatus(`Added a drawing to "${state.classes[state.selected].name}".`);
});

// ---- labelling a query ----------------------------------------------------------------------
async function ensureEpisode() {
  if (!state.dirty && state.episode) return state.episode;
  if (state.episode) api("DELETE", `/episodes/${state.episode}`).catch(() => {});
  const classes = state.classes.map((c) => ({ name: c.name, images: c.examples }));
  const shots = classes.reduce((n, c) => n + c.images.length, 0);
  setStatus(`Sending ${classes.length} classes (${shots} examples)…`, "busy");
  const episode = await api("POST", "/episodes", { classes });
  state.episode = episode.id;
  state.dirty = false;
  return state.episode;
}

function showResults(queryUrl, prediction) {
  $("query").replaceChildren();
  const img = document.createElement("img");
  img.src = queryUrl;
  img.alt = "query";
  $("query").append(img);
  const list = $("results");
  list.replaceChildren();
  for (const { class: name, probability } of prediction.ranked) {
    const li = document.createElement("li");
    li.className = "result";
    li.dataset.name = name;
    const title = document.createElement("div");
    title.innerHTML = `<span class="name"></span> <span class="prob"></span>`;
    title.querySelector(".name").textContent = name;
    title.querySelector(".prob").textContent = `${(100 * probability).toFixed(1)}%`;
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.innerHTML = `<span style="width:${(100 * probability).toFixed(1)}%"></span>`;
    const thumbs = document.createElement("div");
    thumbs.className = "thumbs";
    const owner = state.classes.find((c) => c.name === name);
    for (const url of owner ? owner.examples.slice(0, 5) : []) {
      const t = document.createElement("img");
      t.src = url;
      thumbs.append(t);
    }
    li.append(title, bar, thumbs);
    list.append(li);
  }
}

async function label(queryUrl) {
  if (state.busy) return;
  const ready = state.classes.filter((c) => c.examples.length > 0);
  if (ready.length < 2 || ready.length < state.classes.length) {
    setStatus("Every class needs at least one example, and at least two classes are needed.", "error");
    return;
  }
  setBusy(true);
  $("results").replaceChildren();
  try {
    for (let attempt = 0; attempt < 2; attempt++) {
      const id = await ensureEpisode();
      setStatus(`Adapting to ${state.classes.length} classes and labelling the query…`, "busy");
      try {
        const started = performance.now();
        const answer = await api("POST", `/episodes/${id}/predict`, { images: [queryUrl], names: ["query"] });
        const p = answer.predictions[0];
        showResults(queryUrl, p);
        const ms = Math.round(performance.now() - started);
        setStatus(`Most likely "${p.label}" (${(100 * p.ranked[0].probability).toFixed(1)}%), in ${ms} ms.`);
        return;
      } catch (error) {
        if (error.status !== 404 || attempt > 0) throw error;
        state.dirty = true; // the episode expired on the server: send it again
      }
    }
  } catch (error) {
    setStatus(error.message, "error");
  } finally {
    setBusy(false);
  }
}

$("predict").addEventListener("click", () => {
  if (empty) { setStatus("Draw a query first.", "error"); return; }
  label(pad.toDataURL("image/png"));
});
dropTarget($("answer-panel"), (files) => readFiles([files[0]], (url) => label(url)));
$("query-file").addEventListener("change", (e) => readFiles([e.target.files[0]], (url) => label(url)));

// ---- the model ------------------------------------------------------------------------------
async function loadModel() {
  try {
    const m = await api("GET", "/model");
    state.model = m;
    const [c, s] = [m.image.channels, m.image.image_size];
    const colour = c === 1 ? "greyscale" : "RGB";
    const inverted = m.image.invert ? ", inverted (ink bright)" : "";
    const steps = m.inner_steps === null ? "" : `, ${m.inner_steps} inner steps`;
    $("model").textContent =
      `${m.algorithm} (${m.family}), ${m.backbone}, ${s}×${s} ${colour}${inverted}${steps} — ${m.checkpoint}`;
    $("constraint").textContent = m.classes.fixed_ways
      ? `This model needs exactly ${m.classes.fixed_ways} classes.`
      : "Any number of classes (at least two)" + (m.classes.equal_shots ? ", the same number of examples in each." : ".");
  } catch (error) {
    $("model").textContent = `cannot describe the model: ${error.message}`;
  }
}

clearPad();
renderClasses();
loadModel();
