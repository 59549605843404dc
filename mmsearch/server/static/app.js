// mmsearch web page: plain JS, no build step. State lives in the URL (?q=, ?like=,
// ?session=, target=) so searches are shareable and the back button works; uploaded images
// stay in memory. 👍/👎 marks and the follow-up box continue a search session (stored in
// the index: `mmsearch refine NAME` continues the same one).
"use strict";

const PAGE = 30;
const EXAMPLES = ["a red circle", "two blue squares", "a yellow triangle", "a sunset over the sea", "a dog on a beach"];
const $ = (id) => document.getElementById(id);
const el = {
  form: $("search"), q: $("q"), file: $("file"), pick: $("pick"), grid: $("grid"),
  status: $("status"), error: $("error"), empty: $("empty"), sentinel: $("sentinel"),
  drop: $("drop"), viewer: $("viewer"), chip: $("query-chip"), explain: $("explain"),
  refine: $("refine"), follow: $("follow"), marks: $("marks"), refineGo: $("refine-go"),
};
const marks = new Map(); // item id -> "more" | "less", for the next refine
const uploads = new Map(); // upload key -> File, for back/forward within this tab
let state = { target: "image" };
let hits = [];
let nextOffset = null;
let loading = false;
let generation = 0; // bumps with each new query; stale responses are dropped
let current = -1; // index in hits of the item in the viewer
let parts = null; // an explained query's parts ({text, negative}), for the hover text

// -- API -------------------------------------------------------------------------------

async function api(url, options) {
  const res = await fetch(url, options);
  let body = null;
  try { body = await res.json(); } catch (_) { /* not JSON */ }
  if (!res.ok) throw new Error((body && body.error) || `${res.status} ${res.statusText}`);
  return body;
}

function searchRequest(offset) {
  const params = new URLSearchParams({ target: state.target, k: PAGE, offset });
  if (state.lang) params.set("lang", state.lang);
  if (state.session) return api(`api/sessions/${encodeURIComponent(state.session)}/hits?${params}`);
  if (state.q && state.explain) params.set("explain", "1");
  if (state.q) return api(`api/search?q=${encodeURIComponent(state.q)}&${params}`);
  if (state.like) return api(`api/items/${state.like}/similar?${params}`);
  if (state.upload) {
    const form = new FormData();
    form.append("file", uploads.get(state.upload));
    for (const [k, v] of params) form.append(k, v);
    return api("api/search/image", { method: "POST", body: form });
  }
  return Promise.resolve({ hits: [], next_offset: null });
}

// -- URL state -------------------------------------------------------------------------

function stateFromUrl() {
  const p = new URLSearchParams(location.search);
  const s = { target: p.get("target") === "text" ? "text" : "image" };
  if (/^[a-z]{2,3}$/.test(p.get("lang") || "")) s.lang = p.get("lang");
  if (p.get("explain") === "1") s.explain = true;
  if (p.get("session")) s.session = p.get("session");
  else if (p.get("q")) s.q = p.get("q");
  else if (/^\d+$/.test(p.get("like") || "")) s.like = p.get("like");
  else if (history.state && history.state.upload) s.upload = history.state.upload;
  return s;
}

function urlFor(s) {
  const p = new URLSearchParams();
  if (s.session) p.set("session", s.session);
  if (s.q) p.set("q", s.q);
  if (s.lang) p.set("lang", s.lang);
  if (s.q && s.explain) p.set("explain", "1");
  if (s.like) p.set("like", s.like);
  if (s.upload) p.set("image", "upload");
  if (s.target === "text") p.set("target", "text");
  const qs = p.toString();
  return qs ? `?${qs}` : location.pathname;
}

function go(s) {
  history.pushState(s.upload ? { upload: s.upload } : {}, "", urlFor(s));
  run(s);
}

// -- rendering -------------------------------------------------------------------------

function showError(message) {
  el.error.textContent = message;
  el.error.hidden = !message;
}

function run(s) {
  state = s;
  generation += 1;
  hits = [];
  nextOffset = 0;
  loading = false;
  el.grid.replaceChildren();
  el.grid.classList.toggle("texts", s.target === "text");
  el.q.value = s.q || "";
  el.explain.checked = Boolean(s.explain);
  parts = null;
  for (const b of document.querySelectorAll(".toggle button")) {
    b.setAttribute("aria-pressed", String(b.dataset.target === s.target));
  }
  showError("");
  marks.clear();
  el.follow.value = "";
  renderMarks();
  el.refine.hidden = !(s.q || s.like || s.session);  // an upload cannot start a session
  renderChip();
  const blank = !s.q && !s.like && !s.upload && !s.session;
  el.empty.hidden = !blank;
  el.status.textContent = "";
  if (blank) {
    nextOffset = null;
    if (new URLSearchParams(location.search).get("image")) {
      showError("The uploaded image is not kept across reloads: drop or pick it again.");
    }
    return;
  }
  loadMore();
}

function renderChip() {
  el.chip.replaceChildren();
  el.chip.hidden = true;
  if (state.upload && uploads.has(state.upload)) {
    const img = document.createElement("img");
    img.src = URL.createObjectURL(uploads.get(state.upload));
    img.alt = "query image";
    el.chip.append(img, `Results for your image (${uploads.get(state.upload).name || "pasted"})`);
    el.chip.hidden = false;
  } else if (state.session) {
    el.chip.append(`Refined search (session ${state.session})`);
    el.chip.hidden = false;
  } else if (state.like) {
    const img = document.createElement("img");
    img.src = `api/items/${state.like}/thumbnail?size=128`;
    img.alt = "";
    img.addEventListener("error", () => img.remove());
    el.chip.append(img, `More like item ${state.like}`);
    el.chip.hidden = false;
  }
}

async function loadMore() {
  if (loading || nextOffset === null) return;
  loading = true;
  const mine = generation;
  el.status.textContent = hits.length ? "Loading more…" : "Searching…";
  try {
    const page = await searchRequest(nextOffset);
    if (mine !== generation) return;
    nextOffset = page.next_offset;
    if (page.turns) {
      const rounds = page.turns - 1;
      el.chip.textContent = `Refined search: session ${page.session}, ${rounds} round${rounds === 1 ? "" : "s"} of feedback`;
    }
    if (page.parts) parts = page.parts;
    const start = hits.length;
    hits.push(...page.hits);
    page.hits.forEach((h, i) => el.grid.append(card(h, start + i)));
    const noun = state.target === "text" ? "texts" : "images";
    el.status.textContent = hits.length
      ? `${hits.length}${nextOffset !== null ? "+" : ""} ${noun}`
      : `No matching ${noun}. Is the index empty? Try other words, or switch to ${state.target === "text" ? "images" : "texts"}.`;
  } catch (err) {
    if (mine !== generation) return;
    nextOffset = null;
    el.status.textContent = "";
    showError(`Search failed: ${err.message}`);
  } finally {
    if (mine === generation) loading = false;  // a newer query has reset it already
  }
  // Fill the screen: if the sentinel is still visible, the observer will not fire again.
  if (mine === generation && nextOffset !== null && sentinelVisible()) loadMore();
}

function sentinelVisible() {
  const r = el.sentinel.getBoundingClientRect();
  return r.top < window.innerHeight + 600;
}

function card(h, i) {
  const li = document.createElement("li");
  const b = document.createElement("button");
  b.type = "button";
  b.className = h.modality === "text" ? "card text" : "card";
  b.dataset.index = i;
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = h.score.toFixed(3);
  score.title = h.part_scores && parts ? explainTitle(h) : "cosine similarity";
  if (h.part_scores && parts) b.title = score.title; // the whole card shows the parts
  const name = document.createElement("span");
  name.className = "name";
  if (h.modality === "text") {
    const body = document.createElement("span");
    body.className = "body";
    body.textContent = h.text;
    name.textContent = h.source || "";
    b.append(body, name, score);
    b.setAttribute("aria-label", `${h.text}, score ${score.textContent}`);
  } else {
    const img = document.createElement("img");
    img.loading = "lazy";
    img.decoding = "async";
    img.src = `${h.thumbnail}?size=256`;
    img.alt = basename(h.path);
    if (h.width && h.height) { img.width = h.width; img.height = h.height; }
    name.textContent = basename(h.path);
    b.append(img, name, score);
    b.setAttribute("aria-label", `${basename(h.path)}, score ${score.textContent}`);
  }
  b.addEventListener("click", () => openViewer(i));
  li.append(b, feedbackButtons(h, li));
  return li;
}

// -- feedback (search sessions) ----------------------------------------------------------

function feedbackButtons(h, li) {
  const box = document.createElement("span");
  box.className = "feedback";
  for (const [role, path, cls, title] of [
    ["more", THUMB_UP, "up", "More like this"], ["less", THUMB_DOWN, "down", "Less like this"],
  ]) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = cls;
    b.append(icon(path));  // SVG, not emoji: no emoji font is needed to see them
    b.title = title;
    b.setAttribute("aria-label", `${title} (item ${h.id})`);
    b.setAttribute("aria-pressed", "false");
    b.addEventListener("click", (e) => {
      e.stopPropagation();
      if (marks.get(h.id) === role) marks.delete(h.id); else marks.set(h.id, role);
      for (const other of box.querySelectorAll("button")) {
        other.setAttribute("aria-pressed", String(other === b && marks.get(h.id) === role));
      }
      li.classList.toggle("more", marks.get(h.id) === "more");
      li.classList.toggle("less", marks.get(h.id) === "less");
      renderMarks();
    });
    box.append(b);
  }
  return box;
}

const THUMB_UP = "M1 21h4V9H1v12zm22-11c0-1.1-.9-2-2-2h-6.31l.95-4.57.03-.32c0-.41-.17-.79-.44-1.06L14.17 1 7.59 7.59C7.22 7.95 7 8.45 7 9v10c0 1.1.9 2 2 2h9c.83 0 1.54-.5 1.84-1.22l3.02-7.05c.09-.23.14-.47.14-.73v-2z";
const THUMB_DOWN = "M15 3H6c-.83 0-1.54.5-1.84 1.22l-3.02 7.05c-.09.23-.14.47-.14.73v2c0 1.1.9 2 2 2h6.31l-.95 4.57-.03.32c0 .41.17.79.44 1.06L9.83 23l6.59-6.59c.36-.36.58-.86.58-1.41V5c0-1.1-.9-2-2-2zm4 0v12h4V3h-4z";

function icon(d) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", d);
  svg.append(path);
  return svg;
}

function renderMarks() {
  const more = [...marks.values()].filter((r) => r === "more").length;
  const less = marks.size - more;
  el.marks.textContent = marks.size ? `${more} more · ${less} less` : "";
  el.refineGo.disabled = !marks.size && !el.follow.value.trim();
}

async function refineSession() {
  const more = [...marks].filter(([, r]) => r === "more").map(([id]) => id);
  const less = [...marks].filter(([, r]) => r === "less").map(([id]) => id);
  const text = el.follow.value.trim();
  if (!more.length && !less.length && !text) return;
  el.refineGo.disabled = true;
  el.status.textContent = "Refining…";
  const json = (body) => ({
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
  });
  try {
    let name = state.session;
    if (!name) {  // the first feedback on a plain search starts a session with its query
      const start = state.q ? { q: state.q } : { like: Number(state.like) };
      name = (await api("api/sessions", json({ ...start, target: state.target, k: PAGE }))).session;
    }
    await api(`api/sessions/${encodeURIComponent(name)}/refine`,
      json({ more, less, text: text || null, k: PAGE }));
    go({ session: name, target: state.target });
  } catch (err) {
    el.status.textContent = "";
    showError(`Refine failed: ${err.message}`);
    renderMarks();
  }
}

el.refine.addEventListener("submit", (e) => { e.preventDefault(); refineSession(); });
el.follow.addEventListener("input", renderMarks);

// The hover text of an explained hit: its combined score, the whole query's, each part's.
function explainTitle(h) {
  const lines = [`combined ${h.score.toFixed(3)}`];
  if (h.query_score != null) lines.push(`whole query ${h.query_score.toFixed(3)}`);
  parts.forEach((p, i) => {
    if (h.part_scores[i] != null) lines.push(`${p.negative ? "not " : ""}${p.text}: ${h.part_scores[i].toFixed(3)}`);
  });
  return lines.join("\n");
}

function basename(p) { return (p || "").split(/[\\/]/).pop(); }

function formatBytes(n) {
  if (n == null) return "";
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

// -- viewer ----------------------------------------------------------------------------

async function openViewer(i) {
  if (i < 0 || i >= hits.length) return;
  current = i;
  const h = hits[i];
  const isText = h.modality === "text";
  $("v-img").hidden = isText;
  $("v-text").hidden = !isText;
  $("v-open").hidden = isText;
  $("v-name").textContent = isText ? (h.source || "text") : basename(h.path);
  $("v-score").textContent = h.score.toFixed(4);
  $("v-path").textContent = isText ? (h.source || "") : h.path;
  $("v-size").textContent = h.width ? `${h.width} × ${h.height}` : "";
  $("v-date").textContent = "";
  $("v-like").textContent = isText ? "More texts like this" : "More like this";
  $("v-texts").textContent = isText ? "Find matching images" : "Find matching texts";
  if (isText) {
    $("v-text").textContent = h.text;
  } else {
    $("v-img").src = `${h.thumbnail}?size=1024`;
    $("v-img").alt = basename(h.path);
    $("v-open").href = h.file;
  }
  if (!el.viewer.open) el.viewer.showModal();
  try {
    const item = await api(`api/items/${h.id}`);
    if (current !== i) return;
    if (item.width) $("v-size").textContent = `${item.width} × ${item.height} px · ${formatBytes(item.size)}`;
    if (item.modified) $("v-date").textContent = new Date(item.modified).toLocaleString();
  } catch (err) {
    $("v-date").textContent = `(${err.message})`;
  }
}

function similar(target) {
  const h = hits[current];
  if (!h) return;
  el.viewer.close();
  go({ like: String(h.id), target });
}

$("v-like").addEventListener("click", () => similar(hits[current] && hits[current].modality));
$("v-texts").addEventListener("click", () => similar(hits[current] && hits[current].modality === "text" ? "image" : "text"));
$("v-prev").addEventListener("click", () => openViewer(current - 1));
$("v-next").addEventListener("click", () => openViewer(current + 1));
$("v-close").addEventListener("click", () => el.viewer.close());
el.viewer.addEventListener("click", (e) => { if (e.target === el.viewer) el.viewer.close(); });
el.viewer.addEventListener("close", () => {
  const b = el.grid.querySelector(`[data-index="${current}"]`);
  if (b) b.focus();
});

// -- input -----------------------------------------------------------------------------

el.form.addEventListener("submit", (e) => {
  e.preventDefault();
  const q = el.q.value.trim();
  if (q) go({ q, target: state.target, lang: state.lang, explain: el.explain.checked });
});

el.explain.addEventListener("change", () => {
  if (state.q) go({ ...state, explain: el.explain.checked });
});

for (const b of document.querySelectorAll(".toggle button")) {
  b.addEventListener("click", () => {
    const s = { ...state, target: b.dataset.target };
    if (s.q || s.like || s.upload) go(s);
    else { history.replaceState({}, "", urlFor(s)); run(s); }
  });
}

function searchImage(file) {
  if (!file || !file.type.startsWith("image/")) {
    showError("That is not an image: drop, paste or pick a JPEG, PNG, WebP … file.");
    return;
  }
  const key = `u${Date.now()}`;
  uploads.set(key, file);
  go({ upload: key, target: state.target });
}

el.pick.addEventListener("click", () => el.file.click());
el.file.addEventListener("change", () => { searchImage(el.file.files[0]); el.file.value = ""; });

let dragDepth = 0;
window.addEventListener("dragenter", (e) => {
  if (![...e.dataTransfer.types].includes("Files")) return;
  dragDepth += 1; el.drop.hidden = false;
});
window.addEventListener("dragleave", () => { dragDepth = Math.max(0, dragDepth - 1); if (!dragDepth) el.drop.hidden = true; });
window.addEventListener("dragover", (e) => e.preventDefault());
window.addEventListener("drop", (e) => {
  e.preventDefault();
  dragDepth = 0; el.drop.hidden = true;
  searchImage(e.dataTransfer.files[0]);
});
window.addEventListener("paste", (e) => {
  const file = [...(e.clipboardData ? e.clipboardData.files : [])].find((f) => f.type.startsWith("image/"));
  if (file) { e.preventDefault(); searchImage(file); }
});

document.addEventListener("keydown", (e) => {
  if (el.viewer.open) {
    if (e.key === "ArrowLeft") openViewer(current - 1);
    else if (e.key === "ArrowRight") openViewer(current + 1);
    else if (e.key === "m" || e.key === "M") similar(hits[current] && hits[current].modality);
    return;
  }
  const typing = ["INPUT", "TEXTAREA"].includes(document.activeElement.tagName);
  if (e.key === "/" && !typing) { e.preventDefault(); el.q.focus(); el.q.select(); }
  if (e.key === "Escape" && typing) el.q.blur();
});

$("home").addEventListener("click", (e) => { e.preventDefault(); go({ target: state.target }); });
window.addEventListener("popstate", () => run(stateFromUrl()));
new IntersectionObserver((entries) => {
  if (entries.some((x) => x.isIntersecting)) loadMore();
}, { rootMargin: "600px" }).observe(el.sentinel);

// -- start -----------------------------------------------------------------------------

for (const text of EXAMPLES) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.addEventListener("click", () => go({ q: text, target: state.target }));
  $("examples").append(b);
}
api("api/info").then((info) => {
  $("counts").textContent = `${info.images.toLocaleString()} images and ${info.texts.toLocaleString()} texts indexed · model ${info.model || "none yet"}`;
}).catch((err) => showError(`Cannot reach the index: ${err.message}`));
run(stateFromUrl());
