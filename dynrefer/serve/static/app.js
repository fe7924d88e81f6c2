// The dynrefer web page: pick an image, draw boxes, describe them through /v1/describe. No build step, no CDN.
"use strict";
const canvas = document.getElementById("canvas");
const ctx = canvas.getContext("2d");
const state = { image: null, blob: null, name: null, boxes: [], drag: null, record: null };
window.dynreferState = state;  // for scripts and tests: the boxes drawn and the last record
const COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324"];

function showError(message) { document.getElementById("error").textContent = message || ""; }
function setStatus(message) { document.getElementById("status").textContent = message || ""; }

function draw() {
  if (!state.image) { ctx.clearRect(0, 0, canvas.width, canvas.height); return; }
  ctx.drawImage(state.image, 0, 0);
  const boxes = state.drag ? state.boxes.concat([state.drag]) : state.boxes;
  ctx.lineWidth = Math.max(2, canvas.width / 300);
  ctx.font = `${Math.max(12, Math.round(canvas.width / 45))}px sans-serif`;
  boxes.forEach((b, i) => {
    ctx.strokeStyle = COLOURS[i % COLOURS.length];
    ctx.strokeRect(b[0], b[1], b[2] - b[0], b[3] - b[1]);
    const region = state.record && state.record.regions[i];
    if (region && region.caption) {
      const text = `${i + 1}: ${region.caption}`;
      const y = Math.max(14, b[1] - 4);
      ctx.fillStyle = "rgba(255,255,255,0.8)";
      ctx.fillRect(b[0], y - 14, ctx.measureText(text).width + 6, 18);
      ctx.fillStyle = COLOURS[i % COLOURS.length];
      ctx.fillText(text, b[0] + 3, y);
    }
  });
}

function useImage(blob, name) {
  const url = URL.createObjectURL(blob);
  const img = new Image();
  img.onload = () => {
    URL.revokeObjectURL(url);  // the decoded image stays; the blob's URL is not needed again
    state.image = img; state.blob = blob; state.name = name; state.boxes = []; state.record = null;
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    document.getElementById("results").innerHTML = "";
    showError(""); draw();
  };
  img.onerror = () => { URL.revokeObjectURL(url); showError(`'${name}' is not an image the browser can show`); };
  img.src = url;
}

function point(event) {
  const r = canvas.getBoundingClientRect();
  return [Math.round((event.clientX - r.left) * canvas.width / r.width),
          Math.round((event.clientY - r.top) * canvas.height / r.height)];
}

canvas.addEventListener("mousedown", (e) => { if (state.image) { const p = point(e); state.drag = [p[0], p[1], p[0], p[1]]; } });
canvas.addEventListener("mousemove", (e) => {
  if (!state.drag) return;
  const p = point(e); state.drag[2] = p[0]; state.drag[3] = p[1]; draw();
});
canvas.addEventListener("mouseup", (e) => {
  if (!state.drag) return;
  const p = point(e); const d = state.drag; state.drag = null;
  const box = [Math.min(d[0], p[0]), Math.min(d[1], p[1]), Math.max(d[0], p[0]), Math.max(d[1], p[1])];
  if (box[2] - box[0] >= 2 && box[3] - box[1] >= 2) { state.boxes.push(box); state.record = null; }
  draw();
});

document.getElementById("file").addEventListener("change", (e) => {
  const f = e.target.files[0]; if (f) useImage(f, f.name);
});
document.getElementById("example").addEventListener("change", async (e) => {
  if (!e.target.value) return;
  try {
    const res = await fetch(`/v1/examples/${encodeURIComponent(e.target.value)}`);
    if (!res.ok) { showError(`the example could not be loaded (${res.status})`); return; }
    useImage(await res.blob(), `${e.target.value}.png`);
  } catch (err) { showError(`the example could not be loaded: ${err.message}`); }
});
document.getElementById("clear").addEventListener("click", () => {
  state.boxes = []; state.record = null; document.getElementById("results").innerHTML = ""; draw();
});

function base64(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result.split(",", 2)[1]);
    reader.onerror = () => reject(new Error("cannot read the image file"));
    reader.readAsDataURL(blob);
  });
}

function viewCanvas(view) {
  const c = document.createElement("canvas"); c.width = 72; c.height = 72;
  const [x1, y1, x2, y2] = view.crop;
  c.getContext("2d").drawImage(state.image, x1, y1, x2 - x1, y2 - y1, 0, 0, 72, 72);
  c.title = `t = ${view.t}`;
  return c;
}

function showResults(record) {
  const out = document.getElementById("results"); out.innerHTML = "";
  record.regions.forEach((r, i) => {
    const div = document.createElement("div"); div.className = "region";
    const cap = document.createElement("div"); cap.className = "caption";
    cap.style.color = COLOURS[i % COLOURS.length];
    cap.textContent = `${i + 1}. ${r.caption ?? ""}`;
    const facts = document.createElement("div");
    const tags = (r.tags || []).map((t) => t[0]).join(", ");
    const attrs = (r.attributes || []).slice(0, 3).map((a) => `${a[0]} ${a[1].toFixed(2)}`).join(", ");
    const cat = r.category ? `${r.category[0]} (${r.category[1].toFixed(2)})` : "none";
    facts.textContent = `category: ${cat} · tags: ${tags || "—"} · attributes: ${attrs || "—"}`;
    const views = document.createElement("div"); views.className = "views";
    (r.views || []).forEach((v) => views.appendChild(viewCanvas(v)));
    div.append(cap, facts, views); out.appendChild(div);
  });
}

document.getElementById("describe").addEventListener("click", async () => {
  showError("");
  if (!state.image) { showError("choose an image first"); return; }
  if (!state.boxes.length) { showError("draw at least one box on the image"); return; }
  const image = state.image;
  setStatus("describing…");
  try {
    const body = { image: await base64(state.blob), filename: state.name, regions: state.boxes.slice() };
    for (const key of ["classes", "attributes"]) {
      const value = document.getElementById(key).value.trim(); if (value) body[key] = value;
    }
    const res = await fetch("/v1/describe", { method: "POST", headers: { "Content-Type": "application/json" },
                                             body: JSON.stringify(body) });
    let payload = null;
    try { payload = await res.json(); } catch (err) { payload = null; }
    if (!res.ok || payload === null) {
      showError((payload && payload.error) || `the server answered ${res.status}`); return;
    }
    if (state.image !== image) return;  // another image was chosen meanwhile: this answer is not for it
    state.record = payload; showResults(payload); draw();
    document.body.dataset.described = String(payload.regions.length);
  } catch (err) {
    showError(`the request failed: ${err.message}`);
  } finally { setStatus(""); }
});

fetch("/v1/examples").then((r) => r.json()).then((names) => {
  const select = document.getElementById("example");
  names.forEach((n) => { const o = document.createElement("option"); o.value = n; o.textContent = n; select.appendChild(o); });
}).catch(() => {});
