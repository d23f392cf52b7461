// The page's core: the image the user gave (file, drop, paste or URL), the API key, one fetch helper that turns
// any route's error shape into its message, and the fan-out of one image to every panel at once.
// Panels (stats.js, analysis.js, background.js, search.js, gallery.js) register themselves with Page.panel().
"use strict";

const Page = (() => {
  const $ = (id) => document.getElementById(id);

  // The newest request wins: each call aborts the previous one's requests (and is aborted with `outer`, a
  // caller's signal), and its context's current() is false once a newer call is made, so a late answer
  // for an older image or choice is dropped.
  function latestOnly() {
    let latest = 0, controller = null;
    return (outer) => {
      if (controller) controller.abort();
      const mine = controller = new AbortController();
      if (outer) outer.addEventListener("abort", () => mine.abort());
      const number = ++latest;
      return { signal: mine.signal, current: () => number === latest };
    };
  }

  const KEY_STORE = "pictrace-api-key";  // the server's key page (apis/auth.py) writes the same name
  const panels = [];
  let config = null;        // GET /page/config: the capabilities served here and their choices
  let configReady = null;   // its promise: panels wait for it before their first request
  let source = null;        // {file, url, name, preview}: the image every panel works on

  // ---- API key: local storage for the page's requests (header), a SameSite=Strict cookie for <img> and the page
  // load itself, which the server accepts on GET and HEAD only (apis/auth.py)
  const keyInput = $("api-key");
  keyInput.value = localStorage.getItem(KEY_STORE) || "";
  if (keyInput.value) $("key-box").open = true;  // a key in use is one click from being changed
  function rememberKey(key) {
    localStorage.setItem(KEY_STORE, key);
    const secure = location.protocol === "https:" ? "; Secure" : "";
    document.cookie = key
      ? `${KEY_STORE}=${encodeURIComponent(key)}; Path=/; Max-Age=31536000; SameSite=Strict${secure}`
      : `${KEY_STORE}=; Path=/; Max-Age=0; SameSite=Strict${secure}`;
  }
  keyInput.addEventListener("change", () => {
    rememberKey(keyInput.value.trim());
    loadConfig().then(() => (source ? run(source) : refreshIdle()));  // the usual answer to a 401: try again
  });
  function headers(extra) {
    const key = keyInput.value.trim();
    return Object.assign(key ? { "X-API-Key": key } : {}, extra || {});
  }

  // ---- errors in the server's own words, whatever the route's shape (docs/api.md, "Errors")
  function errorText(status, body, path) {
    if (typeof body === "string") return body.trim() || `The server answered ${status}.`;
    if (!body || typeof body !== "object") return `The server answered ${status}.`;
    const parts = [];
    const add = (value) => {
      if (Array.isArray(value)) value.forEach(add);
      else if (value && typeof value === "object") add(value.msg || JSON.stringify(value));
      else if (value !== undefined && value !== null && value !== "") parts.push(String(value));
    };
    add(body.error);
    add(body.message);
    add(body.detail);
    const unique = [...new Set(parts)].filter((p) => !(status === 404 && p === "Not Found" && parts.length > 1));
    let text = unique.join(": ") || `The server answered ${status}.`;
    if (status === 401) $("key-box").open = true;
    if (status === 404 && path && /^not found: /.test(text)) text += " (this server does not serve that route)";
    return text;
  }

  // fetch + the body read as JSON (or text, or a blob with asBlob); never throws: {ok, status, body, error, response}
  async function call(path, options = {}) {
    const init = { method: options.method || "GET", headers: headers(options.headers), signal: options.signal };
    if (options.form) init.body = options.form;
    if (options.json !== undefined) {
      init.body = JSON.stringify(options.json);
      init.headers["Content-Type"] = "application/json";
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      if (err.name === "AbortError") return { ok: false, aborted: true, status: 0, error: "cancelled" };
      return { ok: false, status: 0, error: `Cannot reach the server: ${err.message}` };
    }
    let body = null;
    const type = response.headers.get("content-type") || "";
    try {
      if (response.ok && options.asBlob && !type.includes("json")) body = await response.blob();
      else if (type.includes("json")) body = await response.json();
      else body = await response.text();
    } catch (err) {
      if (err.name === "AbortError") return { ok: false, aborted: true, status: 0, error: "cancelled" };
      body = null;
    }
    // the near-duplicate routes' envelope can say "fail" in its body
    const failed = !response.ok || (body && typeof body === "object" && !(body instanceof Blob) && body.status === "fail");
    return { ok: !failed, status: response.status, body, response,
             error: failed ? errorText(response.status, body, path) : null };
  }

  // ---- a panel's state: progress while its models work, its own error, its content
  function box(id) {
    const section = $(id);
    const progress = section.querySelector(":scope > .progress");
    const error = section.querySelector(":scope > .error");
    const content = section.querySelector(":scope > .content");
    return {
      section, content,
      busy(on, text) {
        progress.hidden = !on;
        if (text) progress.querySelector("span").textContent = text;
        section.setAttribute("aria-busy", on ? "true" : "false");
        section.classList.toggle("busy", on);
      },
      fail(message) {
        error.textContent = message;
        error.hidden = !message;
        section.classList.toggle("failed", Boolean(message));
      },
    };
  }
  function showError(element, message) {
    element.textContent = message || "";
    element.hidden = !message;
  }
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "class") node.className = v;
      else if (k === "dataset") Object.assign(node.dataset, v);
      else if (k === "style") Object.assign(node.style, v);  // CSSOM: the page's CSP refuses style attributes
      else if (k in node && typeof v !== "string") node[k] = v;
      else node.setAttribute(k, v);
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  // ---- the image: a File (upload, drop, paste) or a URL the server fetches
  function imageField(form, fileField, urlField) {
    if (source.file) form.append(fileField, source.file, source.name);
    else form.append(urlField, source.url);
    return form;
  }

  function serves(capability) {
    return Boolean(config && config.capabilities.includes(capability));
  }

  async function loadConfig() {
    configReady = call("page/config").then((answer) => {
      if (answer.ok) {
        config = answer.body;
        showError($("page-error"), "");
      } else {
        config = null;
        showError($("page-error"), answer.error);
      }
      for (const panel of panels) panel.configure && panel.configure(config);
      return config;
    });
    return configReady;
  }

  function refreshIdle() {
    for (const panel of panels) panel.idle && panel.idle();
  }

  const newImage = latestOnly();  // a newer image wins: the requests for the one replaced are aborted

  // every panel gets the image at the same moment: their requests are in flight together
  async function run(next) {
    await configReady;
    if (!config) return;
    const context = newImage();
    for (const panel of panels) {
      Promise.resolve().then(() => panel.run(next, context)).catch((err) => {
        if (err && err.name === "AbortError") return;
        console.warn(err);  // a panel's own bug must not blank the others
      }).finally(() => {
        // which image the panel last finished (answer or error): what scripts and tests wait on
        if (context.current() && panel.section) panel.section.dataset.image = String(next.number);
      });
    }
  }

  let uses = 0;
  function use(next) {
    if (source && source.preview && source.file) URL.revokeObjectURL(source.preview);
    source = next;
    next.number = ++uses;
    document.body.dataset.image = String(next.number);
    $("source").textContent = next.file
      ? `${next.name} (${formatBytes(next.file.size)})`
      : `${next.url} (fetched by the server)`;
    run(next);
  }

  function useFile(file) {
    if (!file) return;
    use({ file, name: file.name || "pasted-image", url: null, preview: URL.createObjectURL(file) });
  }

  function useUrl(text) {
    const url = (text || "").trim();
    if (!/^https?:\/\/\S+$/i.test(url)) {
      showError($("page-error"), "Give an http(s) URL of an image.");
      return;
    }
    showError($("page-error"), "");
    const name = decodeURIComponent(url.split(/[?#]/)[0].split("/").pop() || "") || "image";
    use({ file: null, url, name, preview: url });
  }

  function formatBytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
    return `${(n / 1024 / 1024).toFixed(1)} MB`;
  }

  // ---- input: choose, drop, paste (an image or a URL), or type a URL
  const fileInput = $("file"), drop = $("drop");
  fileInput.addEventListener("change", () => {
    if (fileInput.files[0]) useFile(fileInput.files[0]);
    fileInput.value = "";  // choosing the same file again must run again
  });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) drop.addEventListener(type, () => drop.classList.remove("over"));
  // a drop anywhere on the page counts: the browser's own would open the file in place of the page
  document.addEventListener("dragover", (event) => event.preventDefault());
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer.files[0];
    if (file) useFile(file);
    else useUrl(event.dataTransfer.getData("text/uri-list") || event.dataTransfer.getData("text/plain"));
  });
  document.addEventListener("paste", (event) => {
    const file = [...event.clipboardData.files].find((f) => f.type.startsWith("image/"));
    if (file) {  // an image, wherever the focus is: no field of the page takes one
      event.preventDefault();
      useFile(file);
      return;
    }
    const target = event.target;
    if (target && target.matches && target.matches("input, textarea") && target.id !== "url") return;  // typing
    const text = event.clipboardData.getData("text/plain").trim();
    if (/^https?:\/\//i.test(text)) {
      event.preventDefault();
      $("url").value = text;
      useUrl(text);
    }
  });
  $("query").addEventListener("submit", (event) => {
    event.preventDefault();
    if (document.activeElement === keyInput) return;  // Enter in the key box: its change event applies it
    useUrl($("url").value);
  });

  loadConfig();

  return {
    $, el, box, call, headers, errorText, showError, imageField, serves, formatBytes, latestOnly,
    get source() { return source; },
    get config() { return config; },
    rerun() { if (source) run(source); },
    panel(definition) {
      panels.push(definition);
      if (config && definition.configure) definition.configure(config);
    },
  };
})();
