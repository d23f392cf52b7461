// Analysis panel (POST /analyze, GET /available_operations/): person and face boxes drawn over the image, the
// caption, each task's own error, and which models cannot run here and why.
"use strict";

(() => {
  const { el } = Page;
  const panel = Page.box("analysis");
  const unavailable = panel.section.querySelector(".unavailable");
  const SVG = "http://www.w3.org/2000/svg";
  // one request, three tasks: the server runs each model once for them (the face is looked for in the whole
  // image, so it is found even where no person detector is loaded)
  const TASKS = [
    { operation_id: "person", type: "detect_bounding_box", params: { target: "prominent_person" } },
    { operation_id: "face", type: "detect_bounding_box", params: { target: "prominent_face", face_context: "whole_image" } },
    { operation_id: "caption", type: "describe_image" },
  ];
  const LABELS = { person: "Person", face: "Face", caption: "Caption" };

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    return node;
  }

  // the boxes are in the pixels of the upright image, as the browser shows it (EXIF orientation applied both sides)
  async function figure(source, boxes) {
    const img = el("img", { alt: `the image analysed: ${source.name}`, referrerpolicy: "no-referrer" });
    const overlay = svg("svg", { class: "boxes", "aria-hidden": "true", preserveAspectRatio: "none" });
    const wrap = el("div", { class: "figure" }, img, overlay);
    img.src = source.preview;
    try {
      await img.decode();
    } catch (err) {
      return el("p", { class: "note" }, "Your browser cannot show this image; the boxes are listed below.");
    }
    const width = img.naturalWidth, height = img.naturalHeight;
    overlay.setAttribute("viewBox", `0 0 ${width} ${height}`);
    const stroke = Math.max(2, Math.round(Math.max(width, height) / 250));
    for (const [name, box] of boxes) {
      const [x0, y0, x1, y1] = box;
      overlay.append(svg("rect", { class: `box ${name}`, x: x0, y: y0, width: x1 - x0, height: y1 - y0,
                                   "stroke-width": stroke, "data-box": box.join(",") }));
      const size = Math.max(12, Math.round(Math.max(width, height) / 30));
      const label = svg("text", { class: `label ${name}`, x: x0 + stroke, y: Math.max(size, y0 - stroke), "font-size": size });
      label.textContent = LABELS[name];
      overlay.append(label);
    }
    return wrap;
  }

  function result(name, answer) {
    const row = el("li", { class: `task status-${answer.status}`, dataset: { task: name, status: answer.status } },
      el("strong", {}, `${LABELS[name]}: `));
    if (answer.status !== "success") {
      row.append(el("span", { class: "error-text" }, answer.error_message || answer.status));
    } else if (name === "caption") {
      row.append(el("q", { id: "caption" }, String(answer.data)));
    } else {
      row.append(answer.data ? `[${answer.data.join(", ")}]` : `no ${name} found`);
    }
    return row;
  }

  async function render(source, body) {
    const results = body.results || {};
    const boxes = ["person", "face"].filter((n) => results[n] && results[n].status === "success" && Array.isArray(results[n].data))
      .map((n) => [n, results[n].data]);
    const list = el("ul", { class: "tasks" }, ...TASKS.map((t) => results[t.operation_id] && result(t.operation_id, results[t.operation_id])));
    panel.content.replaceChildren(list);
    panel.content.prepend(await figure(source, boxes));
  }

  // every operation that cannot run here, with each missing model's reason, as the server words it
  async function loadAvailability(signal) {
    const answer = await Page.call("available_operations/", { signal });
    if (answer.aborted) return;
    if (!answer.ok) {
      unavailable.replaceChildren(el("p", { class: "error" }, `Available operations: ${answer.error}`));
      return;
    }
    const missing = Object.entries(answer.body.operations || {}).filter(([, op]) => !op.available);
    if (!missing.length) {
      unavailable.replaceChildren(el("p", { class: "note" }, "Every analysis model is available here."));
      return;
    }
    const models = [...new Set(missing.flatMap(([, op]) => Object.keys(op.unavailable_models || {})))];
    unavailable.replaceChildren(el("details", { class: "missing", open: false },
      el("summary", {}, `Unavailable here: ${models.join(", ") || missing.map(([name]) => name).join(", ")} (why)`),
      el("ul", {}, ...missing.map(([name, op]) => el("li", { dataset: { operation: name } }, el("code", {}, name), ": ",
        Object.entries(op.unavailable_models || {}).map(([model, why]) => `${model}: ${why}`).join("; ") || "unavailable")))));
  }

  Page.panel({
    section: panel.section,
    configure() {
      panel.section.hidden = false;
      if (!Page.serves("analyze")) {
        panel.content.replaceChildren(el("p", { class: "note" }, "This server does not serve analysis (CAPABILITIES has no analyze)."));
        return;
      }
      loadAvailability();
    },
    async run(source, ctx) {
      if (!Page.serves("analyze")) return;
      panel.fail("");
      panel.content.replaceChildren();
      panel.busy(true);
      const form = Page.imageField(new FormData(), "image_file", "image_url");
      form.append("tasks_json", JSON.stringify(TASKS));
      const [answer] = await Promise.all([
        Page.call("analyze", { method: "POST", form, signal: ctx.signal }),
        loadAvailability(ctx.signal),  // a model may have finished loading, or failed, since the page opened
      ]);
      if (!ctx.current() || answer.aborted) return;
      if (!answer.ok) {
        panel.busy(false);
        return panel.fail(answer.error);
      }
      await render(source, answer.body);
      if (ctx.current()) panel.busy(false);
    },
  });
})();
