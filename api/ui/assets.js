// Assets: the list with its filters, an upload form, and for each asset a download,
// a signed link to copy and a delete; a run's assets on its page, images previewed.
//
// What the page shows of an asset's content is only ever a raster image, fetched with
// the token and shown from a blob: URL. HTML, SVG and every other type are never
// rendered here (a blob: URL runs on this origin, where the token lives): they are
// downloaded through a short signed link, which the API answers as an attachment.

import { api, blob, upload } from "./api.js";
import { h, replace, shortId, when } from "./dom.js";

const PREVIEWABLE = new Set(["image/png", "image/jpeg", "image/gif", "image/webp", "image/avif", "image/bmp"]);
const PREVIEW_MAX = 8 * 1024 * 1024; // larger images are offered for download only
const DOWNLOAD_LINK_SECONDS = 60; // the link a download click makes is used at once
const COPY_LINK_SECONDS = 3600;
const PAGE = 20;

/** Bytes for people: 512 B, 1.5 KiB, 20.0 MiB. */
export function size(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = "B";
  for (const next of units) {
    if (value < 1024) break;
    value /= 1024;
    unit = next;
  }
  return `${value.toFixed(1)} ${unit}`;
}

function nameOf(asset) {
  return asset.filename || asset.label || `asset-${shortId(asset.id)}`;
}

export function previewable(asset) {
  return PREVIEWABLE.has(asset.media_type) && asset.size <= PREVIEW_MAX;
}

/** Image previews by asset id, as blob: URLs made once and revoked with the view. */
class Previews {
  constructor() {
    this.urls = new Map();
    this.controller = new AbortController();
  }

  async url(asset) {
    if (!this.urls.has(asset.id)) {
      const pending = blob(`assets/${asset.id}/content`, this.controller.signal).then((data) =>
        // Typed from the allow-list only, whatever the answer said.
        URL.createObjectURL(new Blob([data], { type: asset.media_type })));
      this.urls.set(asset.id, pending);
      pending.catch(() => this.urls.delete(asset.id));
    }
    return this.urls.get(asset.id);
  }

  /** An <img> that fills in once the bytes are here, or says why it could not. */
  image(asset, ctx) {
    const box = h("figure", { class: "asset-preview", "data-asset-id": asset.id },
      h("span", { class: "muted small" }, "Loading preview…"));
    this.url(asset).then((src) => {
      replace(box, h("img", { src, alt: `Preview of ${nameOf(asset)}` }),
        h("figcaption", { class: "muted small" }, `${nameOf(asset)} · ${size(asset.size)}`));
    }).catch((err) => {
      if (err?.name === "AbortError") return;
      replace(box, h("span", { class: "muted small" }, "No preview: ", err.message || String(err)));
      if (err?.status && err.status !== 403) ctx.showProblem(err);
    });
    return box;
  }

  close() {
    this.controller.abort();
    for (const pending of this.urls.values()) {
      pending.then((u) => URL.revokeObjectURL(u)).catch(() => {});
    }
    this.urls.clear();
  }
}

/** Download through a short signed link: the browser streams it to disk itself. */
async function download(asset, ctx) {
  try {
    const link = await api("POST", `assets/${asset.id}/links`, { body: { expires_in: DOWNLOAD_LINK_SECONDS } });
    const a = h("a", { href: link.url, download: nameOf(asset), hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
  } catch (err) {
    ctx.showProblem(err);
  }
}

function actions(asset, ctx, { onLink, onDelete } = {}) {
  return h("div", { class: "asset-actions" },
    h("button", { type: "button", class: "secondary small", onclick: () => download(asset, ctx),
      "aria-label": `Download ${nameOf(asset)}` }, "Download"),
    onLink ? h("button", { type: "button", class: "secondary small", onclick: () => onLink(asset),
      "aria-label": `Copy a link to ${nameOf(asset)}` }, "Copy link") : null,
    onDelete ? h("button", { type: "button", class: "danger small", onclick: () => onDelete(asset),
      "aria-label": `Delete ${nameOf(asset)}` }, "Delete…") : null);
}

// -- the Assets page -------------------------------------------------------------------------

export function assetsView(root, ctx) {
  let alive = true;
  let filters = {};
  let items = [];
  let cursor = null;
  const previews = new Previews();
  const shown = new Set(); // ids whose preview is open

  const body = h("div", { class: "card" }, h("p", { class: "muted" }, "Loading assets…"));
  const more = h("button", { type: "button", class: "secondary", hidden: true, onclick: () => load(true) }, "Load more");
  const linkBox = h("section", { class: "card link-box", id: "asset-link", "aria-live": "polite", hidden: true });

  // Named "Filter by …" for assistive technology: the upload form has a Label field too.
  const tag = h("input", { id: "asset-tag", name: "tag", size: 12, "aria-label": "Filter by tag" });
  const label = h("input", { id: "asset-label", name: "label", size: 14, "aria-label": "Filter by label" });
  const type = h("input", { id: "asset-type", name: "media_type", size: 12, placeholder: "image/*",
    "aria-label": "Filter by media type" });
  const filterForm = h("form", { class: "toolbar", role: "search", onsubmit: (event) => {
    event.preventDefault();
    filters = { tag: tag.value.trim(), label: label.value.trim(), media_type: type.value.trim() };
    load(false);
  } },
  h("label", { for: "asset-tag" }, "Tag"), tag,
  h("label", { for: "asset-label" }, "Label"), label,
  h("label", { for: "asset-type" }, "Media type"), type,
  h("button", { type: "submit", class: "secondary" }, "Filter"));

  replace(root,
    h("div", { class: "view-head" }, h("h1", {}, "Assets"), filterForm),
    uploadForm(ctx, (asset) => {
      if (alive) load(false, asset);
    }),
    linkBox,
    body,
    h("div", { class: "more" }, more));

  async function load(append, uploaded) {
    try {
      const page = await api("GET", "assets", { query: { ...filters, limit: PAGE, cursor: append ? cursor : null } });
      if (!alive) return;
      items = append ? items.concat(page.items) : page.items;
      cursor = page.next_cursor;
      more.hidden = !cursor;
      draw();
      if (uploaded) {
        const row = body.querySelector(`tr[data-asset-id="${uploaded.id}"]`);
        if (row) row.classList.add("fresh");
      }
    } catch (err) {
      if (alive) ctx.showProblem(err);
    }
  }

  function draw() {
    if (!items.length) {
      const filtered = Object.values(filters).some(Boolean);
      replace(body, h("p", { class: "muted" }, filtered ? "No asset matches these filters." : "No assets yet. Upload one above, or with POST /assets."));
      return;
    }
    replace(body, h("table", { class: "assets" },
      h("caption", { class: "visually-hidden" }, "Assets, newest first"),
      h("thead", {}, h("tr", {}, ["Name", "Type", "Size", "Tags", "Run", "Created", "Actions"]
        .map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, items.flatMap(row))));
  }

  function row(asset) {
    const open = shown.has(asset.id);
    const toggle = previewable(asset)
      ? h("button", { type: "button", class: "secondary small", "aria-expanded": String(open),
        onclick: () => {
          if (shown.has(asset.id)) shown.delete(asset.id); else shown.add(asset.id);
          draw();
        } }, open ? "Hide preview" : "Preview")
      : null;
    const rows = [h("tr", { "data-asset-id": asset.id },
      h("th", { scope: "row" }, h("span", { class: "asset-name" }, nameOf(asset)),
        asset.label && asset.filename ? h("div", { class: "muted small" }, asset.label) : null),
      h("td", {}, h("code", {}, asset.media_type)),
      h("td", { class: "num" }, size(asset.size)),
      h("td", {}, asset.tags.length ? asset.tags.map((t) => h("span", { class: "tag" }, t)) : "—"),
      h("td", {}, asset.run_id ? h("a", { href: `#/runs/${asset.run_id}` }, shortId(asset.run_id)) : "—"),
      h("td", {}, when(asset.created_at)),
      h("td", {}, h("div", { class: "asset-actions" }, toggle,
        actions(asset, ctx, { onLink: copyLink, onDelete: remove }))))];
    if (open) rows.push(h("tr", { class: "preview-row" }, h("td", { colspan: 7 }, previews.image(asset, ctx))));
    return rows;
  }

  async function copyLink(asset) {
    try {
      const link = await api("POST", `assets/${asset.id}/links`, { body: { expires_in: COPY_LINK_SECONDS } });
      const field = h("input", { id: "asset-link-url", readonly: true, value: link.url, spellcheck: "false" });
      const note = h("span", { class: "muted small", id: "asset-link-note" }, "");
      replace(linkBox,
        h("h2", {}, "Signed link to ", nameOf(asset)),
        h("p", { class: "muted small" }, "Anyone with it can download the file until ", when(link.expires_at),
          ", without a token. Hand it only to whom you would hand the file."),
        h("div", { class: "toolbar" }, h("label", { for: "asset-link-url" }, "Link"), field,
          h("button", { type: "button", class: "secondary small", onclick: () => copy(field, note) }, "Copy"), note));
      linkBox.hidden = false;
      await copy(field, note);
    } catch (err) {
      ctx.showProblem(err);
    }
  }

  async function remove(asset) {
    if (!(await ctx.confirm(`Delete ${nameOf(asset)} (${size(asset.size)})? Its bytes are removed for good.`, "Delete"))) return;
    try {
      await api("DELETE", `assets/${asset.id}`);
      items = items.filter((a) => a.id !== asset.id);
      shown.delete(asset.id);
      draw();
    } catch (err) {
      ctx.showProblem(err);
    }
  }

  load(false);
  return () => {
    alive = false;
    previews.close();
  };
}

/** Put a link on the clipboard where the browser lets us; else leave it selected. */
async function copy(field, note) {
  field.focus();
  field.select();
  try {
    await navigator.clipboard.writeText(field.value);
    note.textContent = "Copied to the clipboard.";
  } catch {
    note.textContent = "Selected: press Ctrl+C (⌘C) to copy it.";
  }
}

function uploadForm(ctx, done) {
  const file = h("input", { id: "upload-file", name: "file", type: "file", required: true });
  const label = h("input", { id: "upload-label", name: "label", maxlength: 200 });
  const tags = h("input", { id: "upload-tags", name: "tags", placeholder: "reports, q1" });
  const bar = h("progress", { id: "upload-progress", max: 100, value: 0, hidden: true, "aria-label": "Upload progress" });
  const status = h("span", { class: "muted small", id: "upload-status", "aria-live": "polite" });
  const submit = h("button", { type: "submit" }, "Upload");
  const form = h("form", { class: "upload", novalidate: true },
    h("div", { class: "field" }, h("label", { for: "upload-file" }, "File"), file),
    h("div", { class: "field" }, h("label", { for: "upload-label" }, "Label"), label),
    h("div", { class: "field" }, h("label", { for: "upload-tags" }, "Tags"), tags,
      h("small", { class: "hint" }, "comma-separated")),
    h("div", { class: "actions" }, submit, bar, status));

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    ctx.clearProblem();
    const chosen = file.files[0];
    if (!chosen) {
      status.textContent = "Choose a file first.";
      file.focus();
      return;
    }
    const data = new FormData();
    if (label.value.trim()) data.append("label", label.value.trim());
    if (tags.value.trim()) data.append("tags", tags.value.trim());
    data.append("file", chosen, chosen.name); // last: the API streams it as it comes
    submit.disabled = true;
    bar.hidden = false;
    bar.value = 0;
    status.textContent = `Uploading ${chosen.name}…`;
    try {
      const asset = await upload("assets", data, (sent, total) => {
        bar.value = total ? Math.round((sent / total) * 100) : 0;
      });
      status.textContent = `Uploaded ${asset.filename} (${asset.media_type}, ${size(asset.size)}).`;
      form.reset();
      done(asset);
    } catch (err) {
      status.textContent = "Nothing was stored.";
      ctx.showProblem(err);
    } finally {
      submit.disabled = false;
      bar.hidden = true;
    }
  });
  return h("details", { class: "card create-card", open: true }, h("summary", {}, "Upload a file"), form);
}

// -- a run's assets --------------------------------------------------------------------------

/**
 * The Assets section of a run's page. `show(run)` draws the run's assets: from
 * `run.assets` when the API sends them with the run, else from GET /assets?run_id;
 * `refresh()` asks GET /assets?run_id whatever the run said.
 */
export function runAssets(ctx, runId) {
  const previews = new Previews();
  const list = h("div", { id: "run-assets" }, h("p", { class: "muted" }, "Loading assets…"));
  const section = h("section", { class: "card", "aria-labelledby": "h-assets" },
    h("h2", { id: "h-assets" }, "Assets"), list);
  let drawn = null; // what is on screen, so a redraw keeps loaded previews
  let asking = false;
  let again = false; // asked while a request was out: ask once more after it

  function draw(assets) {
    const key = assets.map((a) => a.id).join(",");
    if (key === drawn) return;
    drawn = key;
    if (!assets.length) {
      replace(list, h("p", { class: "muted" }, "This run has no assets."));
      return;
    }
    replace(list, h("ul", { class: "run-assets" }, assets.map((asset) => h("li", { "data-asset-id": asset.id },
      previewable(asset) ? previews.image(asset, ctx) : null,
      h("div", { class: "asset-line" },
        h("strong", {}, nameOf(asset)), " ",
        h("code", {}, asset.media_type), " ",
        h("span", { class: "muted small" }, size(asset.size)),
        PREVIEWABLE.has(asset.media_type) && !previewable(asset)
          ? h("span", { class: "muted small" }, " · too large to preview") : null,
        actions(asset, ctx))))));
  }

  function show(run) {
    if (Array.isArray(run?.assets)) draw(run.assets);
    else refresh();
  }

  /** Ask the API for the run's assets now (a step just ended: it may have made some). */
  async function refresh() {
    if (asking) {
      again = true;
      return;
    }
    asking = true;
    try {
      do {
        again = false;
        const page = await api("GET", "assets", {
          query: { run_id: runId, limit: 100 }, signal: previews.controller.signal });
        draw(page.items);
      } while (again);
    } catch (err) {
      if (err?.name === "AbortError") return;
      if (err?.status === 403) {
        drawn = null;
        replace(list, h("p", { class: "muted" }, "This token may not read assets (it needs assets:read)."));
      } else {
        ctx.showProblem(err);
      }
    } finally {
      asking = false;
    }
  }

  return { section, show, refresh, close: () => previews.close() };
}
