// Statistics panel (POST /stats): colour swatches, format and size, EXIF as a readable table, a map link for GPS.
"use strict";

(() => {
  const { el } = Page;
  const panel = Page.box("stats");

  // EXIF rows people read first; each [label, function of the tags -> text or null]
  const READABLE = [
    ["Camera", (t) => joinDistinct(t.Make, t.Model)],
    ["Lens", (t) => joinDistinct(t.LensMake, t.LensModel) || lensSpec(t.LensSpecification)],
    ["Exposure", (t) => [exposure(t.ExposureTime), t.FNumber ? `f/${round(t.FNumber, 1)}` : null,
                         iso(t.ISOSpeedRatings ?? t.PhotographicSensitivity),
                         bias(t.ExposureBiasValue)].filter(Boolean).join(", ") || null],
    ["Focal length", (t) => t.FocalLength ? `${round(t.FocalLength, 1)} mm` +
      (t.FocalLengthIn35mmFilm ? ` (${t.FocalLengthIn35mmFilm} mm in 35 mm film)` : "") : null],
    ["Flash", (t) => (typeof t.Flash === "number" ? (t.Flash & 1 ? "fired" : "did not fire") : null)],
    ["Date taken", (t) => exifDate(t.DateTimeOriginal || t.DateTimeDigitized || t.DateTime)],
    ["Software", (t) => text(t.Software)],
    ["Artist", (t) => text(t.Artist)],
    ["Copyright", (t) => text(t.Copyright)],
  ];

  function text(value) {
    return typeof value === "string" && value.trim() ? value.trim() : null;
  }
  function joinDistinct(make, model) {
    make = text(make); model = text(model);
    if (make && model && model.toLowerCase().startsWith(make.toLowerCase())) return model;  // "Canon Canon EOS"
    return [make, model].filter(Boolean).join(" ") || null;
  }
  function lensSpec(spec) {
    if (!Array.isArray(spec) || spec.length < 2 || !spec[0]) return null;
    const focal = spec[0] === spec[1] ? `${round(spec[0], 1)} mm` : `${round(spec[0], 1)}-${round(spec[1], 1)} mm`;
    return spec[2] ? `${focal} f/${round(spec[2], 1)}` : focal;
  }
  function round(x, digits) {
    return Number(Number(x).toFixed(digits)).toString();
  }
  function exposure(seconds) {
    if (typeof seconds !== "number" || !(seconds > 0)) return null;
    return seconds < 1 ? `1/${Math.round(1 / seconds)} s` : `${round(seconds, 1)} s`;
  }
  function iso(value) {
    const n = Array.isArray(value) ? value[0] : value;
    return typeof n === "number" && n > 0 ? `ISO ${n}` : null;
  }
  function bias(value) {
    return typeof value === "number" && value !== 0 ? `${value > 0 ? "+" : ""}${round(value, 2)} EV` : null;
  }
  function exifDate(value) {
    const m = typeof value === "string" && value.match(/^(\d{4}):(\d\d):(\d\d)[ T](\d\d:\d\d(:\d\d)?)/);
    return m ? `${m[1]}-${m[2]}-${m[3]} ${m[4]}` : text(value);
  }

  function swatch(label, color, extra) {
    return el("figure", { class: "swatch", dataset: { hex: color.hex } },
      el("span", { class: "chip", "aria-hidden": "true", style: { background: color.hex } }),
      el("figcaption", {}, el("strong", {}, label), el("br"), el("code", { class: "hex" }, color.hex),
        extra ? el("span", { class: "note" }, ` ${extra}`) : null));
  }

  function table(rows, className) {
    return el("table", { class: className },
      el("tbody", {}, ...rows.map(([k, v]) => el("tr", {}, el("th", { scope: "row" }, k), el("td", {}, v)))));
  }

  // a tag's value as one short line: nested blocks flattened, long base64 blobs cut
  function show(value) {
    if (value === null || value === undefined) return "";
    if (typeof value === "string") return value.startsWith("base64:") && value.length > 40
      ? `${value.slice(0, 40)}… (${value.length - 7} base64 characters)` : value;
    if (typeof value === "number") return String(Number(value.toPrecision(10)));
    if (Array.isArray(value)) return value.length > 16 ? `[${value.slice(0, 16).map(show).join(", ")}, … ${value.length} values]`
      : `[${value.map(show).join(", ")}]`;
    return Object.entries(value).map(([k, v]) => `${k}: ${show(v)}`).join("; ");
  }

  function mapLink(gps) {
    const lat = gps.latitude.toFixed(6), lon = gps.longitude.toFixed(6);
    const href = `https://www.openstreetmap.org/?mlat=${lat}&mlon=${lon}#map=15/${lat}/${lon}`;
    return el("p", { class: "gps" },
      `GPS ${lat}, ${lon}` + (typeof gps.altitude === "number" ? `, ${round(gps.altitude, 1)} m` : "") + " ",
      el("a", { href, target: "_blank", rel: "noopener noreferrer", id: "map-link" }, "Open in OpenStreetMap"));
  }

  function render(body, source) {
    const parts = [];
    const colors = body.color_data;
    if (colors) {
      parts.push(el("div", { class: "swatches" },
        swatch("Average", colors.avg_color, colors.avg_color.method ? `(${colors.avg_color.method})` : ""),
        swatch("Dominant", colors.dominant_color,
          typeof colors.dominant_color.share === "number" ? `(${Math.round(colors.dominant_color.share * 100)} % of pixels)` : "")));
    } else {
      parts.push(el("p", { class: "note" }, "No colour: every pixel is transparent."));
    }
    const image = body.image || {};
    const size = [image.format, image.width && image.height ? `${image.width} × ${image.height} px` : null,
                  source.file ? Page.formatBytes(source.file.size) : null].filter(Boolean).join(", ");
    parts.push(el("p", { class: "format" }, el("strong", {}, "Image "), size));

    const tags = body.exif_data || {};
    const rows = READABLE.map(([label, f]) => [label, f(tags)]).filter(([, v]) => v);
    if (body.gps) parts.push(mapLink(body.gps));
    if (rows.length) parts.push(table(rows, "exif"));
    const names = Object.keys(tags);
    if (names.length) {
      parts.push(el("details", { class: "all-tags" }, el("summary", {}, `All EXIF tags (${names.length})`),
        table(names.map((k) => [k, show(tags[k])]), "exif raw")));
    } else {
      parts.push(el("p", { class: "note" }, "No EXIF in this image."));
    }
    panel.content.replaceChildren(...parts);
  }

  Page.panel({
    section: panel.section,
    configure(config) {
      panel.section.hidden = false;
      if (!Page.serves("stats")) {
        panel.fail("");
        panel.content.replaceChildren(el("p", { class: "note" }, "This server does not serve statistics (CAPABILITIES has no stats)."));
      }
    },
    async run(source, ctx) {
      if (!Page.serves("stats")) return;
      panel.fail("");
      panel.content.replaceChildren();
      panel.busy(true);
      const answer = await Page.call("stats", { method: "POST", form: Page.imageField(new FormData(), "content", "content"),
                                                 signal: ctx.signal });
      if (!ctx.current() || answer.aborted) return;
      panel.busy(false);
      if (!answer.ok) return panel.fail(answer.error);
      render(answer.body, source);
    },
  });
})();
