// Search panel: near-duplicates by signature (POST /search, score) and similar images by embedding
// (POST /find_similar/, similarity), as thumbnails of the stored originals; adding the image to the index (POST /add).
"use strict";

(() => {
  const { $, el } = Page;
  const panel = Page.box("search");
  const THUMBNAIL_SIZE = 256;  // px, longest side of each preview (GET /images/{sha256}?size=): never the original
  const addButton = $("index-add"), filepathInput = $("filepath");
  let pending = 0;

  // the server answers "/images/<sha256>"; relative, so the page also works under a proxy's path prefix
  const relative = (url) => String(url).replace(/^\/+/, "");

  function card(match, kind) {
    const name = match.filename || (match.filepath || "").split("/").pop() || match.sha256 || "?";
    const value = kind === "near" ? `score ${Number(match.score).toFixed(1)}` : `similarity ${Number(match.similarity).toFixed(3)}`;
    const fraction = kind === "near" ? match.score / 100 : match.similarity;
    const item = el("li", { class: "match", dataset: { filepath: match.filepath || "",
      [kind === "near" ? "score" : "similarity"]: String(kind === "near" ? match.score : match.similarity) } });
    let link;
    if (match.url) {
      const img = el("img", { alt: match.filepath || name, loading: "lazy", width: THUMBNAIL_SIZE, height: THUMBNAIL_SIZE });
      img.addEventListener("error", () => { img.classList.add("broken"); img.alt = "preview unavailable"; });
      // a plain <img>: with API_KEY set the key page's cookie opens GET requests (apis/auth.py)
      img.src = `${relative(match.url)}?size=${THUMBNAIL_SIZE}`;
      link = el("a", { href: relative(match.url), target: "_blank", rel: "noopener" }, img);
    } else {
      link = el("a", {}, el("span", { class: "no-preview" }, "no preview"));
    }
    const bar = el("div", { class: "bar" }, el("span", { style: { width: `${Math.max(0, Math.min(1, fraction)) * 100}%` } }));
    item.append(link, el("div", { class: "caption" },
      el("div", { class: "filename", title: match.filepath || name }, name),
      el("div", { class: kind === "near" ? "score" : "similarity" }, value), bar));
    return item;
  }

  function limit() {
    const n = parseInt($("limit").value, 10);
    return n >= 1 && n <= 100 ? n : 12;
  }

  function busy(delta) {
    pending += delta;
    panel.busy(pending > 0);
  }

  async function near(ctx) {
    const list = $("near"), status = $("near-status"), error = $("near-error");
    list.replaceChildren();
    Page.showError(error, "");
    status.textContent = "";
    const answer = await Page.call("search", { method: "POST", form: Page.imageField(new FormData(), "image", "url"),
                                                signal: ctx.signal });
    if (!ctx.current() || answer.aborted) return;
    if (!answer.ok) return Page.showError(error, answer.error);
    const matches = (answer.body.result || []).slice(0, limit());
    status.textContent = matches.length
      ? `${matches.length} near-duplicate${matches.length > 1 ? "s" : ""}, best first (turned and mirrored copies too).`
      : "No near-duplicate in the index.";
    list.replaceChildren(...matches.map((m) => card(m, "near")));
  }

  async function similar(ctx) {
    const list = $("results"), status = $("similar-status"), error = $("similar-error");
    list.replaceChildren();
    Page.showError(error, "");
    status.textContent = "";
    const form = Page.imageField(new FormData(), "file", "image_url");
    form.append("limit", String(limit()));
    const answer = await Page.call("find_similar/", { method: "POST", form, signal: ctx.signal });
    if (!ctx.current() || answer.aborted) return;
    if (!answer.ok) return Page.showError(error, answer.error);
    const body = answer.body, matches = body.similar_images || [];
    status.textContent = body.total_indexed === 0
      ? "The index is empty: add this image below, or a folder with client.py index."
      : `${matches.length} most similar of ${body.total_indexed} indexed images` + (body.model ? ` (${body.model}).` : ".");
    list.replaceChildren(...matches.map((m) => card(m, "similar")));
  }

  const fresh = Page.latestOnly();
  function searchBoth(outer) {
    const ctx = fresh(outer);
    pending = 0;
    // two routes, sent together: neither waits for the other, and one failing leaves the other's answer
    return Promise.all([near, similar].map(async (one) => {
      busy(+1);
      try { await one(ctx); } finally { if (ctx.current()) busy(-1); }
    }));
  }

  addButton.addEventListener("click", async () => {
    const source = Page.source;
    const status = $("index-status"), error = $("index-error");
    Page.showError(error, "");
    const filepath = filepathInput.value.trim();
    if (!source) return;
    if (!filepath) return Page.showError(error, "Give the image a filepath: its name in the index.");
    addButton.disabled = true;
    status.textContent = "Adding…";
    const answer = await Page.call("add", { method: "POST",
      form: (() => { const f = Page.imageField(new FormData(), "image", "url"); f.append("filepath", filepath); return f; })() });
    addButton.disabled = false;
    if (!answer.ok) {
      status.textContent = "";
      return Page.showError(error, answer.error);
    }
    status.textContent = `Added as ${filepath}.`;
    searchBoth();  // shows it among the matches
  });

  Page.panel({
    section: panel.section,
    configure() {
      panel.section.hidden = false;
      const served = Page.serves("search");
      for (const control of panel.section.querySelectorAll("input, button")) control.disabled = !served;
      addButton.disabled = !served || !Page.source;
      panel.content.hidden = !served;
      const note = panel.section.querySelector(".not-served");
      if (!served && !note) {
        panel.section.querySelector(".actions").after(el("p", { class: "note not-served" },
          "This server does not serve search (CAPABILITIES has no search)."));
      } else if (served && note) {
        note.remove();
      }
    },
    run(source, ctx) {
      if (!Page.serves("search")) return;
      panel.fail("");
      $("index-status").textContent = "";
      Page.showError($("index-error"), "");
      filepathInput.value = source.name;
      addButton.disabled = false;
      return searchBoth(ctx.signal);
    },
  });
})();
