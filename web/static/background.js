// Background removal panel (POST /remove-background, POST /records): before and after over a checkerboard, the
// model, a background colour, a download, and saving the result as a gallery record.
"use strict";

(() => {
  const { $, el } = Page;
  const panel = Page.box("background");
  const model = $("bg-model"), fill = $("bg-fill"), color = $("bg-color");
  const download = $("bg-download"), save = $("record-save"), nameInput = $("record-name");
  let cutout = null;       // {blob, url, width, height} of the last answer
  let downloadUrl = null;  // blob: URL of the composited download, when a colour is chosen
  let lastSource = null;

  // The colour is applied here, not by the server: the cut-out is the same whatever the colour, so changing it
  // costs no request. The download is composited like the server's bgcolor (the cut-out drawn over the colour).
  async function applyColor() {
    const chosen = fill.value === "color";
    color.disabled = !chosen;
    const after = panel.content.querySelector(".after .checker");
    if (after) after.style.background = chosen ? color.value : "";
    if (downloadUrl) URL.revokeObjectURL(downloadUrl);
    downloadUrl = null;
    if (!cutout) return;
    let href = cutout.url;
    if (chosen) {
      const bitmap = await createImageBitmap(cutout.blob);
      const canvas = el("canvas", { width: bitmap.width, height: bitmap.height });
      const g = canvas.getContext("2d");
      g.fillStyle = color.value;
      g.fillRect(0, 0, canvas.width, canvas.height);
      g.drawImage(bitmap, 0, 0);
      downloadUrl = URL.createObjectURL(await new Promise((done) => canvas.toBlob(done, "image/png")));
      href = downloadUrl;
    }
    download.href = href;
    download.download = `${(lastSource ? lastSource.name : "image").replace(/\.[^.]*$/, "")}-cutout.png`;
    download.hidden = false;
  }
  fill.addEventListener("change", applyColor);
  color.addEventListener("input", applyColor);
  model.addEventListener("change", () => { if (Page.source) removeBackground(Page.source, fresh()); });

  // a model change re-asks the server for the same image; the newest request wins
  const fresh = Page.latestOnly();

  function side(title, src, className) {
    const img = el("img", { alt: `${title}: ${lastSource.name}`, referrerpolicy: "no-referrer" });
    img.addEventListener("error", () => img.replaceWith(el("p", { class: "note" }, "Your browser cannot show this image.")));
    img.src = src;
    return el("figure", { class: className }, el("div", { class: "checker" }, img), el("figcaption", {}, title));
  }

  async function removeBackground(source, ctx) {
    lastSource = source;
    panel.fail("");
    download.hidden = true;
    if (cutout) URL.revokeObjectURL(cutout.url);
    cutout = null;
    panel.content.replaceChildren(el("div", { class: "pair" }, side("Before", source.preview, "before")));
    panel.busy(true, `Cutting out with ${model.value || "the default model"}…`);
    const form = Page.imageField(new FormData(), "file", "image_url");
    if (model.value) form.append("model", model.value);
    const answer = await Page.call("remove-background", { method: "POST", form, signal: ctx.signal, asBlob: true });
    if (!ctx.current() || answer.aborted) return;
    panel.busy(false);
    if (!answer.ok) return panel.fail(answer.error);
    cutout = { blob: answer.body, url: URL.createObjectURL(answer.body) };
    panel.content.querySelector(".pair").append(side("After", cutout.url, "after"));
    await applyColor();
  }

  save.addEventListener("click", async () => {
    const source = Page.source;
    if (!source) return;
    const status = $("record-status");
    const form = new FormData();
    if (source.file) form.append("image", source.file, source.name);
    else form.append("image", source.url);  // the server fetches it, as it does for a file field holding a URL
    form.append("name", nameInput.value.trim() || source.name);
    if (model.value) form.append("model", model.value);
    if (fill.value === "color") form.append("bgcolor", `${hexToRgb(color.value).join(",")},255`);
    save.disabled = true;
    status.classList.remove("error");
    status.textContent = "Saving…";
    const answer = await Page.call("records", { method: "POST", form });
    save.disabled = false;
    status.classList.toggle("error", !answer.ok);
    if (!answer.ok) {
      status.textContent = answer.error;  // the USER_LIMIT message (409) shows here, in the server's words
      if (answer.status === 409) document.dispatchEvent(new CustomEvent("records-limit", { detail: answer.error }));
      return;
    }
    status.textContent = `Saved as “${answer.body.name}”.`;
    document.dispatchEvent(new CustomEvent("records-changed"));
  });

  function hexToRgb(hex) {
    return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
  }

  Page.panel({
    section: panel.section,
    configure(config) {
      panel.section.hidden = false;
      const served = Page.serves("background");
      for (const control of panel.section.querySelectorAll("select, input, button")) control.disabled = !served;
      color.disabled = true;
      if (!served) {
        panel.content.replaceChildren(el("p", { class: "note" },
          "This server does not serve background removal (CAPABILITIES has no background)."));
        return;
      }
      const models = config.background_models || [];
      model.replaceChildren(...models.map((name) => el("option", { value: name }, name)));
      if (!models.length) model.append(el("option", { value: "" }, "server default"));
      model.value = config.background_model && models.includes(config.background_model) ? config.background_model : models[0] || "";
      save.disabled = !Page.source;
    },
    run(source, ctx) {
      if (!Page.serves("background")) return;
      nameInput.value = source.name.replace(/\.[^.]*$/, "").slice(0, 200) || "image";
      save.disabled = false;
      $("record-status").textContent = "";
      return removeBackground(source, fresh(ctx.signal));
    },
  });
})();
