// surgsam2 web app: one session per tab; the server computes, this page shows and sends clicks.
"use strict";

const $ = (id) => document.getElementById(id);
const ui = {
  session: null, state: null, frame: 0, selected: null, playing: null,
  frameImage: null, maskIds: null, hidden: new Set(), version: -1, classes: {},
  drag: null, maskRequest: 0, live: null,
};

// The DAVIS / PASCAL VOC palette, as the mask PNGs use it: colour -> object id.
const PALETTE = (() => {
  const colours = [];
  for (let id = 0; id < 256; id++) {
    let r = 0, g = 0, b = 0, code = id;
    for (let bit = 0; bit < 8; bit++) {
      r |= ((code >> 0) & 1) << (7 - bit);
      g |= ((code >> 1) & 1) << (7 - bit);
      b |= ((code >> 2) & 1) << (7 - bit);
      code >>= 3;
    }
    colours.push([r, g, b]);
  }
  return colours;
})();
const COLOUR_TO_ID = new Map(PALETTE.map((c, id) => [(c[0] << 16) | (c[1] << 8) | c[2], id]));

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

async function api(method, path, body) {
  const options = { method, headers: {} };
  if (body instanceof FormData) options.body = body;
  else if (body !== undefined) { options.body = JSON.stringify(body); options.headers["Content-Type"] = "application/json"; }
  const answer = await fetch(path, options);
  if (!answer.ok) {
    let message = `${answer.status} ${answer.statusText}`;
    try { message = (await answer.json()).error || message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return answer.headers.get("content-type")?.includes("json") ? answer.json() : answer;
}

async function act(work) {
  try { showError(""); return await work(); } catch (error) { showError(error.message); return null; }
}

const base = () => `/api/sessions/${ui.session}`;

function setState(state) {
  if (!state || !state.session) return;
  ui.state = state;
  const video = state.video;
  $("video-name").textContent = video ? `${video.name} (${video.width}×${video.height}, ${video.num_frames} frames)` : "";
  $("frame-count").textContent = video ? video.num_frames - 1 : 0;
  $("scrubber").max = video ? video.num_frames - 1 : 0;
  if (ui.selected !== null && !state.objects.some((o) => o.id === ui.selected)) ui.selected = null;
  if (ui.selected === null && state.objects.length) ui.selected = state.objects[state.objects.length - 1].id;
  renderObjects();
  renderPropagation();
  if (state.version !== ui.version) { ui.version = state.version; loadMask(); }
}

function renderObjects() {
  const list = $("objects");
  list.replaceChildren();
  for (const obj of ui.state.objects) {
    const item = document.createElement("li");
    item.dataset.object = obj.id;
    item.className = obj.id === ui.selected ? "selected" : "";
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = obj.color;
    const label = document.createElement("span");
    label.textContent = obj.id;
    const name = document.createElement("input");
    name.type = "text"; name.value = obj.name; name.className = "name";
    name.onchange = () => act(async () => { await api("PATCH", `${base()}/objects/${obj.id}`, { name: name.value }); await refresh(); });
    const cls = document.createElement("select");
    cls.className = "class";
    cls.append(new Option("class…", "0"));
    for (const [id, title] of Object.entries(ui.classes)) cls.append(new Option(title, id));
    cls.value = String(obj.class_id || 0);
    cls.onchange = () => act(async () => { await api("PATCH", `${base()}/objects/${obj.id}`, { class_id: Number(cls.value) }); await refresh(); });
    const hide = document.createElement("input");
    hide.type = "checkbox"; hide.title = "hide"; hide.className = "hide"; hide.checked = ui.hidden.has(obj.id);
    hide.onchange = () => { hide.checked ? ui.hidden.add(obj.id) : ui.hidden.delete(obj.id); draw(); };
    const remove = document.createElement("button");
    remove.textContent = "✕"; remove.title = "remove"; remove.className = "remove";
    remove.onclick = (event) => { event.stopPropagation(); act(async () => setState(await api("DELETE", `${base()}/objects/${obj.id}`))); };
    item.onclick = (event) => { if (event.target === item || event.target === swatch || event.target === label) { ui.selected = obj.id; renderObjects(); } };
    item.append(swatch, label, name, cls, hide, remove);
    list.append(item);
  }
}

function renderPropagation() {
  const p = ui.state.propagation;
  $("progress").max = Math.max(p.total, 1);
  $("progress").value = p.done;
  let text = "";
  if (p.running) text = `${p.direction}: ${p.done} / ${p.total} frames`;
  else if (p.error) text = `failed: ${p.error}`;
  else if (p.cancelled) text = `cancelled after ${p.done} frames`;
  else if (p.direction) text = `done: ${p.done} frames (${p.direction})`;
  $("prop-text").textContent = text;
  if (p.error) showError(`propagation: ${p.error}`);
  if (p.frames_per_second) $("speed").textContent = `last propagation ${p.frames_per_second.toFixed(1)} frames/s`;
}

async function refresh() {
  setState(await api("GET", base()));
}

// --- frame and mask ---------------------------------------------------------------------------

function loadFrame() {
  if (!ui.state?.video) return;
  const index = ui.frame;
  const image = new Image();
  image.onload = () => { if (index === ui.frame) { ui.frameImage = image; draw(); } };
  image.src = `${base()}/frames/${index}.jpg`;
  loadMask();
  loadPrompts();
}

async function loadMask() {
  if (!ui.state?.video) return;
  const request = ++ui.maskRequest;
  const index = ui.frame;
  const answer = await fetch(`${base()}/masks/${index}.png?v=${ui.version}`);
  if (request !== ui.maskRequest) return;
  if (answer.status === 204) { ui.maskIds = null; draw(); return; }
  if (!answer.ok) return;
  const bitmap = await createImageBitmap(await answer.blob());
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const context = canvas.getContext("2d");
  context.drawImage(bitmap, 0, 0);
  const rgba = context.getImageData(0, 0, bitmap.width, bitmap.height).data;
  const ids = new Uint8Array(bitmap.width * bitmap.height);
  for (let i = 0; i < ids.length; i++) {
    ids[i] = COLOUR_TO_ID.get((rgba[4 * i] << 16) | (rgba[4 * i + 1] << 8) | rgba[4 * i + 2]) || 0;
  }
  if (request === ui.maskRequest) { ui.maskIds = ids; draw(); }
}

async function loadPrompts() {
  const index = ui.frame;
  const answer = await act(() => api("GET", `${base()}/frames/${index}/prompts`));
  if (answer && index === ui.frame) { ui.prompts = answer.prompts; draw(); }
}

function draw() {
  if (ui.live) { drawLive(); return; }
  const canvas = $("view");
  const video = ui.state?.video;
  if (!video || !ui.frameImage) return;
  if (canvas.width !== video.width || canvas.height !== video.height) { canvas.width = video.width; canvas.height = video.height; }
  const context = canvas.getContext("2d");
  context.drawImage(ui.frameImage, 0, 0);
  if (ui.maskIds) drawMask(context, video.width, video.height);
  drawPrompts(context);
}

function drawMask(context, width, height) {
  const picture = context.getImageData(0, 0, width, height);
  const pixels = picture.data, ids = ui.maskIds;
  const alpha = Number($("opacity").value), outline = $("outline").checked;
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    if (!id || ui.hidden.has(id)) continue;
    const x = i % width, y = (i - x) / width;
    const edge = outline && (x === 0 || y === 0 || x === width - 1 || y === height - 1 ||
      ids[i - 1] !== id || ids[i + 1] !== id || ids[i - width] !== id || ids[i + width] !== id);
    const a = edge ? 1 : alpha, c = PALETTE[id];
    for (let k = 0; k < 3; k++) pixels[4 * i + k] = (1 - a) * pixels[4 * i + k] + a * c[k];
  }
  context.putImageData(picture, 0, 0);
}

function drawPrompts(context) {
  for (const p of ui.prompts || []) {
    if (ui.hidden.has(p.object)) continue;
    const c = PALETTE[p.object];
    context.lineWidth = 2;
    if (p.kind === "box") {
      context.strokeStyle = `rgb(${c[0]},${c[1]},${c[2]})`;
      const [x0, y0, x1, y1] = p.values;
      context.strokeRect(x0, y0, x1 - x0, y1 - y0);
    } else {
      const [x, y, label] = p.values;
      context.fillStyle = label ? "#2ecc40" : "#ff4136";
      context.beginPath(); context.arc(x, y, 4, 0, 2 * Math.PI); context.fill();
      context.strokeStyle = "#fff"; context.stroke();
    }
  }
  if (ui.drag?.moved) {
    const { x0, y0, x1, y1 } = ui.drag;
    context.strokeStyle = "#fff"; context.setLineDash([4, 3]);
    context.strokeRect(Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0), Math.abs(y1 - y0));
    context.setLineDash([]);
  }
}

function setFrame(index) {
  const video = ui.state?.video;
  if (!video || ui.live) return;
  ui.frame = Math.max(0, Math.min(video.num_frames - 1, index));
  $("scrubber").value = ui.frame;
  $("frame-number").textContent = ui.frame;
  loadFrame();
}

// --- prompts ------------------------------------------------------------------------------------

// Frame pixel coordinates of a mouse event, whatever size the canvas is displayed at.
function framePoint(event) {
  const canvas = $("view"), rect = canvas.getBoundingClientRect();
  return [(event.clientX - rect.left) * canvas.width / rect.width, (event.clientY - rect.top) * canvas.height / rect.height];
}

async function sendPrompt(body) {
  if (ui.selected === null) { showError("add or select an object first"); return; }
  if (ui.live) { await act(async () => showLiveState(await api("POST", `${base()}/live/prompts`, { object: ui.selected, ...body }))); return; }
  await act(async () => setState(await api("POST", `${base()}/prompts`, { frame: ui.frame, object: ui.selected, ...body })));
  loadPrompts();
}

// The size of what the canvas shows: the live source's frames, or the open clip's.
const shownSize = () => ui.live?.state ?? ui.state?.video;

function onMouseDown(event) {
  if (!shownSize()) return;
  const [x, y] = framePoint(event);
  ui.drag = { x0: x, y0: y, x1: x, y1: y, moved: false, negative: event.shiftKey || event.altKey };
}

function onMouseMove(event) {
  if (!ui.drag) return;
  [ui.drag.x1, ui.drag.y1] = framePoint(event);
  const scale = $("view").width / $("view").getBoundingClientRect().width;
  ui.drag.moved = ui.drag.moved || Math.hypot(ui.drag.x1 - ui.drag.x0, ui.drag.y1 - ui.drag.y0) > 4 * scale;
  if (ui.drag.moved) draw();
}

function onMouseUp(event) {
  const drag = ui.drag;
  ui.drag = null;
  if (!drag) return;
  [drag.x1, drag.y1] = framePoint(event);
  const video = shownSize(), clamp = (v, hi) => Math.max(0, Math.min(hi, v));
  if (drag.moved) {
    const box = [Math.min(drag.x0, drag.x1), Math.min(drag.y0, drag.y1), Math.max(drag.x0, drag.x1), Math.max(drag.y0, drag.y1)];
    sendPrompt({ kind: "box", box: [clamp(box[0], video.width), clamp(box[1], video.height), clamp(box[2], video.width), clamp(box[3], video.height)] });
  } else {
    const negative = drag.negative || $("mode-negative").checked;
    sendPrompt({ kind: "point", x: drag.x0, y: drag.y0, label: negative ? 0 : 1 });
  }
}

// --- propagation, opening, export -----------------------------------------------------------------

async function propagate(direction, start = null) {
  const state = await act(() => api("POST", `${base()}/propagate`, { direction, start }));
  if (state) { setState(state); poll(); }
}

async function poll() {
  await act(refresh);
  if (ui.state?.propagation.running) setTimeout(poll, 200);
}

async function opened(state) {
  if (!state) return;
  if (ui.live) await stopLive();
  setState(state);
  ui.frame = 0;
  setFrame(0);
  $("export-masks").href = `${base()}/export/masks.zip`;
  $("export-coco").href = `${base()}/export/coco.json`;
  $("export-overlay").href = `${base()}/export/overlay.mp4`;
  $("export-prompts").href = `${base()}/export/prompts.json`;
}

// --- live mode: the newest tracked frame, fetched again as soon as the last one is shown ---------

function drawLive() {
  const canvas = $("view"), live = ui.live;
  if (!live.image) return;
  if (canvas.width !== live.image.width || canvas.height !== live.image.height) { canvas.width = live.image.width; canvas.height = live.image.height; }
  const context = canvas.getContext("2d");
  context.drawImage(live.image, 0, 0);
  drawPrompts(context);
}

function showLiveState(state) {
  if (!state || !ui.live) return;
  ui.live.state = state;
  const fps = state.frames_per_second ? `${state.frames_per_second.toFixed(1)} frames/s` : "…";
  const ended = state.error ? `stopped: ${state.error}` : state.ended ? "the source ended" : "";
  $("live-text").textContent = `${state.source}: ${fps}, frame ${state.processed}, dropped ${state.frames_dropped} ${ended}`;
  $("speed").textContent = state.frames_per_second ? `live ${fps}` : "";
  if (state.error) showError(`live: ${state.error}`);
}

async function liveLoop(live) {
  let lastState = 0;
  while (ui.live === live) {
    if (performance.now() - lastState > 500) {
      lastState = performance.now();
      const state = await act(() => api("GET", `${base()}/live`));
      if (ui.live !== live) return;
      showLiveState(state);
      if (!state || !state.running) return;
    }
    const hide = [...ui.hidden].join(",");
    const answer = await fetch(`${base()}/live/view.jpg?opacity=${$("opacity").value}&hide=${hide}`);
    if (answer.ok) {
      const image = await createImageBitmap(await answer.blob());
      if (ui.live !== live) return;
      live.image = image;
      drawLive();
    } else {
      await new Promise((done) => setTimeout(done, 100));
    }
    await new Promise((done) => setTimeout(done, 20));
  }
}

async function startLive() {
  const state = await act(() => api("POST", `${base()}/live`, { source: Number($("live-select").value) }));
  if (!state) return;
  if (ui.playing) togglePlay();
  ui.live = { state, image: null };
  ui.prompts = [];
  $("live-stop").disabled = false;
  showLiveState(state);
  liveLoop(ui.live);
}

async function stopLive() {
  if (!ui.live) return;
  ui.live = null;
  $("live-stop").disabled = true;
  $("live-text").textContent = "";
  await act(() => api("DELETE", `${base()}/live`));
  if (ui.state?.video) setFrame(ui.frame);
}

function togglePlay() {
  if (ui.playing) { clearInterval(ui.playing); ui.playing = null; $("play").textContent = "▶︎"; return; }
  $("play").textContent = "❚❚";
  ui.playing = setInterval(() => {
    const last = (ui.state?.video?.num_frames || 1) - 1;
    if (ui.frame >= last) togglePlay(); else setFrame(ui.frame + 1);
  }, 100);
}

function bind() {
  $("open-btn").onclick = () => act(async () => opened(await api("POST", `${base()}/open`, { path: $("data-select").value })));
  $("upload-input").onchange = () => act(async () => {
    const form = new FormData();
    form.append("file", $("upload-input").files[0]);
    opened(await api("POST", `${base()}/upload`, form));
  });
  $("add-object").onclick = () => act(async () => { const obj = await api("POST", `${base()}/objects`, {}); ui.selected = obj.id; await refresh(); });
  $("undo").onclick = () => act(async () => { setState(await api("POST", `${base()}/prompts/undo`, { frame: ui.frame, object: ui.selected })); loadPrompts(); });
  $("clear").onclick = () => act(async () => { setState(await api("POST", `${base()}/prompts/clear`, { frame: ui.frame, object: ui.selected })); loadPrompts(); });
  for (const direction of ["forward", "backward", "both"]) $(`prop-${direction}`).onclick = () => propagate(direction);
  $("prop-from").onclick = () => propagate("forward", ui.frame);
  $("cancel").onclick = () => act(() => api("POST", `${base()}/cancel`));
  $("scrubber").oninput = () => setFrame(Number($("scrubber").value));
  $("prev").onclick = () => setFrame(ui.frame - 1);
  $("next").onclick = () => setFrame(ui.frame + 1);
  $("play").onclick = togglePlay;
  $("live-btn").onclick = startLive;
  $("live-stop").onclick = stopLive;
  $("opacity").oninput = draw;
  $("outline").onchange = draw;
  const canvas = $("view");
  canvas.addEventListener("mousedown", onMouseDown);
  window.addEventListener("mousemove", onMouseMove);
  window.addEventListener("mouseup", onMouseUp);
  document.addEventListener("keydown", (event) => {
    if (event.target.tagName === "INPUT" && event.target.type === "text") return;
    if (event.key === "ArrowLeft") { setFrame(ui.frame - 1); event.preventDefault(); }
    if (event.key === "ArrowRight") { setFrame(ui.frame + 1); event.preventDefault(); }
  });
  window.addEventListener("beforeunload", () => { if (ui.session) navigator.sendBeacon?.(`${base()}/close`); });
}

async function start() {
  bind();
  const info = await act(() => api("GET", "/api/info"));
  if (!info) return;
  ui.classes = info.classes;
  $("status").textContent = info.status;
  for (const entry of info.data) $("data-select").append(new Option(`${entry.path} (${entry.kind})`, entry.path));
  if (!info.data.length) $("data-select").append(new Option("(no --data-dir: upload instead)", ""));
  for (const source of info.live) $("live-select").append(new Option(source.label, String(source.id)));
  $("live-bar").hidden = !info.live.length;
  const session = await act(() => api("POST", "/api/sessions"));
  if (session) { ui.session = session.session; setState(session); document.body.dataset.session = ui.session; }
}

start();
