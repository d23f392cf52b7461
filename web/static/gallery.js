// Gallery panel (GET /records, PATCH and DELETE /records/{id}): this browser's records, newest first, renamed in
// place and deleted after a confirmation; the user is the one of the server's signed cookie (apis/identity.py).
"use strict";

(() => {
  const { $, el } = Page;
  const panel = Page.box("gallery");
  const list = $("records"), status = $("gallery-status");
  const THUMBNAIL_SIZE = 256;  // px: ?size= previews of the processed PNG, the full image one click away
  let limitMessage = "";       // the server's 409 text from the last save, until a record is deleted

  const relative = (url) => String(url).replace(/^\/+/, "");

  function summary(total, userLimit) {
    status.replaceChildren(`${total} of ${userLimit} record${userLimit === 1 ? "" : "s"}, newest first.`);
    if (total >= userLimit) {
      status.append(el("strong", { class: "limit", role: "alert" },
        ` ${limitMessage || `You have reached the limit of ${userLimit} records (USER_LIMIT=${userLimit}): delete one to save another.`}`));
    }
  }

  function item(record) {
    const processed = relative(record.processed_url), original = relative(record.original_url);
    const img = el("img", { alt: `${record.name}, background removed`, loading: "lazy", width: THUMBNAIL_SIZE,
                            height: THUMBNAIL_SIZE });
    img.src = `${processed}?size=${THUMBNAIL_SIZE}`;
    const name = el("span", { class: "record-name" }, record.name);
    const renameButton = el("button", { type: "button", class: "rename" }, "Rename");
    const deleteButton = el("button", { type: "button", class: "delete" }, "Delete");
    const row = el("li", { class: "record", dataset: { id: record.id } },
      el("a", { href: processed, target: "_blank", rel: "noopener", class: "checker" }, img),
      el("div", { class: "caption" }, name,
        el("div", { class: "note" }, `${record.created_on} · ${record.model} · `,
          el("a", { href: original, target: "_blank", rel: "noopener" }, "original")),
        el("p", { class: "error", role: "alert", hidden: true }),
        el("div", { class: "row record-actions" }, renameButton, deleteButton)));
    const error = row.querySelector(".error");
    renameButton.addEventListener("click", () => rename(row, record, name, error));
    deleteButton.addEventListener("click", () => confirmDelete(row, record, error));
    return row;
  }

  // in place: the name becomes a text field; Enter or Save renames (PATCH), Escape or Cancel restores it
  function rename(row, record, name, error) {
    const actions = row.querySelector(".record-actions");
    const input = el("input", { class: "rename-input", value: record.name, maxlength: "200",
                                "aria-label": `new name for ${record.name}` });
    const saveButton = el("button", { type: "button", class: "rename-save" }, "Save");
    const cancel = el("button", { type: "button", class: "rename-cancel" }, "Cancel");
    const form = el("div", { class: "row rename-form" }, input, saveButton, cancel);
    const restore = () => { form.replaceWith(name); actions.hidden = false; actions.querySelector(".rename").focus(); };
    const submit = async () => {
      saveButton.disabled = true;
      const answer = await Page.call(`records/${encodeURIComponent(record.id)}`, { method: "PATCH", json: { name: input.value } });
      saveButton.disabled = false;
      Page.showError(error, answer.ok ? "" : answer.error);
      if (!answer.ok) return input.focus();
      record.name = answer.body.name;
      name.textContent = record.name;
      row.querySelector("img").alt = `${record.name}, background removed`;
      restore();
    };
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") { event.preventDefault(); submit(); }
      if (event.key === "Escape") { Page.showError(error, ""); restore(); }
    });
    saveButton.addEventListener("click", submit);
    cancel.addEventListener("click", () => { Page.showError(error, ""); restore(); });
    name.replaceWith(form);
    actions.hidden = true;
    input.focus();
    input.select();
  }

  // a second, explicit step: the record and its images cannot be brought back
  function confirmDelete(row, record, error) {
    const actions = row.querySelector(".record-actions");
    const yes = el("button", { type: "button", class: "confirm-delete danger" }, "Yes, delete");
    const no = el("button", { type: "button", class: "cancel-delete" }, "Keep");
    const ask = el("div", { class: "row confirm", role: "group", "aria-label": `delete ${record.name}?` },
      el("span", {}, `Delete “${record.name}”?`), yes, no);
    actions.hidden = true;
    actions.after(ask);
    no.addEventListener("click", () => { ask.remove(); actions.hidden = false; actions.querySelector(".delete").focus(); });
    yes.addEventListener("click", async () => {
      yes.disabled = true;
      const answer = await Page.call(`records/${encodeURIComponent(record.id)}`, { method: "DELETE" });
      if (!answer.ok) {
        yes.disabled = false;
        return Page.showError(error, answer.error);
      }
      limitMessage = "";
      refresh();
    });
    no.focus();
  }

  let latest = 0;
  async function refresh() {
    if (!Page.serves("background")) return;
    const mine = ++latest;
    panel.busy(true);
    // the whole gallery in one answer: the server's default page is USER_LIMIT records (at most 1000)
    const answer = await Page.call("records");
    if (mine !== latest) return;
    panel.busy(false);
    if (!answer.ok) return panel.fail(answer.error);
    panel.fail("");
    const body = answer.body;
    summary(body.total, body.user_limit);
    list.replaceChildren(...body.records.map(item));
    if (!body.records.length) status.prepend("No records yet: remove a background above and save it. ");
  }

  document.addEventListener("records-changed", refresh);
  document.addEventListener("records-limit", (event) => { limitMessage = event.detail; refresh(); });

  Page.panel({
    section: panel.section,
    configure() {
      panel.section.hidden = false;
      if (!Page.serves("background")) {
        list.replaceChildren();
        status.textContent = "This server keeps no gallery (CAPABILITIES has no background).";
        return;
      }
      refresh();
    },
    run() { /* the gallery does not depend on the image */ },
  });
})();
