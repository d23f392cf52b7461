// PicTrace page: post the chosen image to find_similar/ and show the matches as a grid.
"use strict";

const $ = (id) => document.getElementById(id);
const fileInput = $("file"), drop = $("drop"), keyInput = $("api-key");
const KEY_STORE = "pictrace-api-key";
const THUMBNAIL_SIZE = 256;  // px, longest side of each match's preview (GET /images/{sha256}?size=)
let latest = 0;  // a newer search wins: answers of older ones are dropped
let objectUrls = [];  // blob: URLs of the last grid, released when it is replaced

keyInput.value = localStorage.getItem(KEY_STORE) || "";
if (keyInput.value) $("key-box").open = true;
let lastFile = null;  // searched again when the key changes (the usual answer to a 401)
keyInput.addEventListener("change", () => {
  rememberKey(keyInput.value.trim());
  if (lastFile) search(lastFile);
});

// The key goes in local storage (sent as X-API-Key on every fetch) and in a cookie the server accepts on
// GET alone: what a page load, its script and stylesheet can send (see the server's apis/auth.py).
function rememberKey(key) {
  localStorage.setItem(KEY_STORE, key);
  const secure = location.protocol === "https:" ? "; Secure" : "";
  document.cookie = key
    ? `${KEY_STORE}=${encodeURIComponent(key)}; Path=/; Max-Age=31536000; SameSite=Strict${secure}`
    : `${KEY_STORE}=; Path=/; Max-Age=0; SameSite=Strict${secure}`;
}

fileInput.addEventListener("change", () => {
  if (fileInput.files[0]) search(fileInput.files[0]);
  fileInput.value = "";  // choosing the same file again must search again
});
for (const type of ["dragenter", "dragover"]) {
  drop.addEventListener(type, (event) => { event.preventDefault(); drop.classList.add("over"); });
}
for (const type of ["dragleave", "drop"]) {
  drop.addEventListener(type, () => drop.classList.remove("over"));
}
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  const file = event.dataTransfer.files[0];
  if (file) search(file);
});
document.addEventListener("paste", (event) => {
  const file = [...event.clipboardData.files].find((f) => f.type.startsWith("image/"));
  if (file) search(file);
});
$("query").addEventListener("submit", (event) => event.preventDefault());

function headers() {
  const key = keyInput.value.trim();
  return key ? { "X-API-Key": key } : {};
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  $("status").textContent = "";
}

// The server's error JSON: PicTrace's {"error", "detail"}, the shared layer's {"detail"}; detail may be a list
// (FastAPI validation errors), shown as their messages.
function errorText(status, body) {
  if (!body || typeof body !== "object") return `The server answered ${status}.`;
  const detail = Array.isArray(body.detail) ? body.detail.map((d) => d.msg || JSON.stringify(d)).join("; ") : body.detail;
  const parts = [...new Set([body.error, detail].filter(Boolean).map(String))];  // often the same text twice
  return parts.join(": ") || `The server answered ${status}.`;
}

async function search(file) {
  const mine = ++latest;
  lastFile = file;
  $("error").hidden = true;
  $("results").replaceChildren();
  $("query-view").hidden = false;
  URL.revokeObjectURL($("query-preview").src);
  $("query-preview").src = URL.createObjectURL(file);
  $("query-name").textContent = file.name;
  $("status").textContent = "Searching…";

  const form = new FormData();
  form.append("file", file, file.name);
  const limit = parseInt($("limit").value, 10);
  if (limit > 0) form.append("limit", String(limit));

  let response, body = null;
  try {
    response = await fetch("find_similar/", { method: "POST", body: form, headers: headers() });
  } catch (err) {
    if (mine === latest) showError(`Cannot reach the server: ${err.message}`);
    return;
  }
  try { body = await response.json(); } catch (err) { /* not JSON: reported by status below */ }
  if (mine !== latest) return;
  if (!response.ok || !body || body.error) {
    if (response.status === 401) $("key-box").open = true;
    showError(errorText(response.status, body));
    return;
  }
  render(body);
}

function render(body) {
  objectUrls.forEach(URL.revokeObjectURL);
  objectUrls = [];
  const matches = body.similar_images || [];
  const total = body.total_indexed;
  $("status").textContent = total === 0
    ? "The index is empty: add images first (client.py index FOLDER)."
    : `${matches.length} most similar of ${total} indexed images` + (body.model ? ` (${body.model})` : "") + ".";
  $("results").replaceChildren(...matches.map(card));
}

function card(match) {
  const item = document.createElement("li");
  item.className = "match";
  item.dataset.filepath = match.filepath || "";
  item.dataset.similarity = match.similarity;

  const link = document.createElement("a");
  const name = match.filename || match.filepath || match.sha256;
  if (match.url) {
    link.href = match.url;
    link.target = "_blank";
    link.rel = "noopener";
    const img = document.createElement("img");
    img.alt = name;
    img.loading = "lazy";
    img.addEventListener("error", () => { img.classList.add("broken"); img.alt = "preview unavailable"; });
    thumbnail(img, `${match.url}?size=${THUMBNAIL_SIZE}`);  // the server reduces it; the link keeps the original
    link.append(img);
  } else {
    const none = document.createElement("span");
    none.className = "no-preview";
    none.textContent = "no preview";
    link.append(none);
  }

  const caption = document.createElement("div");
  caption.className = "caption";
  const filename = document.createElement("div");
  filename.className = "filename";
  filename.textContent = name;
  filename.title = match.filepath || name;
  const similarity = document.createElement("div");
  similarity.className = "similarity";
  similarity.textContent = `similarity ${Number(match.similarity).toFixed(3)}`;
  const bar = document.createElement("div");
  bar.className = "bar";
  const fill = document.createElement("span");
  fill.style.width = `${Math.max(0, Math.min(1, match.similarity)) * 100}%`;
  bar.append(fill);
  caption.append(filename, similarity, bar);

  item.append(link, caption);
  return item;
}

// An <img> cannot send X-API-Key: with a key, same-origin images are fetched with it and shown as blobs.
async function thumbnail(img, url) {
  const key = keyInput.value.trim();
  const sameOrigin = new URL(url, location.href).origin === location.origin;
  if (!key || !sameOrigin) {
    img.src = url;
    return;
  }
  try {
    const response = await fetch(url, { headers: headers() });
    if (!response.ok) throw new Error(String(response.status));
    const blobUrl = URL.createObjectURL(await response.blob());
    objectUrls.push(blobUrl);
    img.src = blobUrl;
  } catch (err) {
    img.classList.add("broken");
    img.alt = "preview unavailable";
  }
}
