/* imclass studio: the behaviour of its pages. No build step, no dependencies but htmx (which re-reads the
 * fragments a change affects, on the "studio:changed" event). Every change goes through the JSON API
 * (/api/v1), from the studio's own origin, with the browser's cookie when the studio has a key.
 *
 *   - forms with data-api="URL" (data-method, data-then="refresh|reload|goto:/x/{id}", data-confirm) send
 *     their fields as JSON; a field named "x[]" is a list (text split on commas);
 *   - the import panel: drops of files, folders (walked with webkitGetAsEntry) and zips, uploaded in small
 *     batches as multipart "files" with their relative paths; a folder of the machine by its path;
 *   - the label view: hotkeys, a save per change (PUT with the version; 409: show what is there now),
 *     prefetching of the next images (paged with a cursor, ?after=ID), undo, "not a duplicate";
 *   - counts of the lists (GET .../counts) beside their names, refreshed after changes;
 *   - the grid: click / shift-click / ctrl-click selection and bulk labels.
 */
"use strict";
(() => {
  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];
  const FLAG_NAMES = {label_issue: "Possible label error", conflict: "Conflicting labels", duplicate: "Duplicate",
                      outlier: "Outlier"};

  // ---- the JSON API -----------------------------------------------------------------------------------------

  function problem(status, data) {
    if (status === 401) {
      location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
      return "please log in";
    }
    const d = data && typeof data === "object" ? data.detail : null;
    if (Array.isArray(d)) {
      return d.map((e) => `${(e.loc || []).filter((x) => x !== "body").join(".")}: ${e.msg}`).join("; ");
    }
    if (d) return String(d);
    if (status === 0) return "the studio cannot be reached (is it still running?)";
    return `the studio answered ${status}`;
  }

  async function api(method, url, body) {
    const init = {method, headers: {Accept: "application/json"}, credentials: "same-origin"};
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(url, init);
    } catch (e) {
      return {ok: false, status: 0, data: null, error: problem(0, null)};
    }
    const text = await res.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch (e) { data = text; }
    }
    return {ok: res.ok, status: res.status, data, error: res.ok ? null : problem(res.status, data)};
  }

  // ---- small things every page uses ------------------------------------------------------------------------

  let flashTimer = null;
  function flash(text, kind = "info") {
    const el = $("#flash");
    if (!el) return;
    el.textContent = text;
    el.dataset.kind = kind;
    clearTimeout(flashTimer);
    if (kind !== "error") flashTimer = setTimeout(() => { el.textContent = ""; }, 6000);
  }

  function changed() {
    document.body.dispatchEvent(new CustomEvent("studio:changed"));
  }

  function confirmDialog(text, button) {
    const dlg = $("#confirm-dialog");
    if (!dlg || typeof dlg.showModal !== "function") return Promise.resolve(window.confirm(text));
    $("#confirm-text").textContent = text;
    $("#confirm-ok").textContent = button || "Delete";
    dlg.returnValue = "";
    dlg.showModal();
    return new Promise((resolve) => dlg.addEventListener("close", () => resolve(dlg.returnValue === "ok"),
                                                         {once: true}));
  }

  const fmtBytes = (n) => (n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB`
    : `${Math.round(n / 1e3)} kB`);
  const labelsText = (labels) => (labels && labels.length ? labels.join(", ") : "unlabelled");
  const inField = (t) => t && t.closest && t.closest("input, textarea, select, [contenteditable]");

  // ---- counts of the lists ([data-qcount=KEY]: an option or chip of a queue; GET .../counts) ------------------

  let countsTimer = null;
  function refreshCounts(pid, delay = 1000) {  // debounced: never on the path of a hotkey
    if (!pid || !document.querySelector("[data-qcount]")) return;
    clearTimeout(countsTimer);
    countsTimer = setTimeout(async () => {
      const r = await api("GET", `/api/v1/projects/${pid}/counts`);
      if (!r.ok || !r.data) return;
      const c = r.data;
      const by = {all: c.all, labelled: c.labelled, unlabelled: c.unlabelled, uncertain: c.uncertain,
                  errors: c.errors, duplicates: c.duplicates};
      for (const k of c.classes || []) {
        by[`label:${k.name}`] = k.labelled;
        by[`suggested:${k.name}`] = k.suggested;
      }
      for (const el of $$("[data-qcount]")) {
        const n = by[el.dataset.qcount];
        if (typeof n !== "number") continue;
        const text = n.toLocaleString("en");
        el.textContent = el.dataset.title !== undefined ? `${el.dataset.title} (${text})` : text;
      }
    }, delay);
  }

  // ---- forms that talk to the API --------------------------------------------------------------------------

  function formBody(form) {
    const body = {};
    for (const el of form.elements) {
      if (!el.name || el.disabled || el.type === "submit" || el.type === "button") continue;
      const list = el.name.endsWith("[]");
      const key = list ? el.name.slice(0, -2) : el.name;
      if (el.type === "radio" && !el.checked) continue;
      if (el.type === "checkbox") {
        if (list) {
          if (el.checked) body[key] = (body[key] || []).concat([el.value]);
        } else {
          body[key] = el.checked;
        }
        continue;
      }
      if (list) {
        const parts = el.value.split(/[,\n]/).map((s) => s.trim()).filter(Boolean);
        body[key] = (body[key] || []).concat(parts);
      } else {
        body[key] = el.value.trim();
      }
    }
    return body;
  }

  document.addEventListener("submit", async (ev) => {
    const form = ev.target.closest && ev.target.closest("form[data-api]");
    if (!form) return;
    ev.preventDefault();
    const err = $("[data-error]", form);
    if (err) { err.hidden = true; err.textContent = ""; }
    const method = (form.dataset.method || "POST").toUpperCase();
    const body = formBody(form);
    if (form.id === "merge-form" && !(body.sources || []).length) {
      if (err) { err.textContent = "Tick the classes to merge first."; err.hidden = false; }
      return;
    }
    if (form.dataset.confirm && !(await confirmDialog(form.dataset.confirm, form.dataset.confirmButton))) return;
    const buttons = $$("button", form);
    buttons.forEach((b) => { b.disabled = true; });
    const r = await api(method, form.dataset.api, method === "DELETE" ? undefined : body);
    buttons.forEach((b) => { b.disabled = false; });
    if (!r.ok) {
      if (err) { err.textContent = r.error; err.hidden = false; } else flash(r.error, "error");
      return;
    }
    const then = form.dataset.then || "refresh";
    if (then.startsWith("goto:")) {
      location.href = then.slice(5).replace("{id}", r.data && r.data.id);
    } else if (then === "reload") {
      location.reload();
    } else {
      flash(method === "DELETE" ? "Deleted." : "Saved.", "ok");
      changed();
    }
  });

  // ---- the suggestions model's status (GET .../assist; absent: the panel stays hidden) ----------------------

  function initAssist() {
    const box = $("#assist");
    const pid = document.body.dataset.pid;
    if (!box || !pid) return;
    const body = $("[data-assist-body]", box);
    let state;
    async function poll() {
      const r = await api("GET", `/api/v1/projects/${pid}/assist`);
      if (r.status === 404 || r.status === 405) { box.hidden = true; return false; }  // no assistance here
      if (!r.ok || !r.data) return true;
      const a = r.data;
      const p = a.probe;
      const pending = a.pending || {};
      const lines = [];
      const paused = $("#assist-paused", box);
      const stopped = a.worker && !a.worker.running;
      if (paused) {
        paused.hidden = !stopped;
        paused.textContent = stopped ? `Suggestions paused: ${a.worker.problem}.` : "";
      } else if (stopped) {
        lines.push(`Suggestions paused: ${a.worker.problem}.`);
      }
      box.dataset.worker = stopped ? "stopped" : "running";
      if (a.mode === "probe" && p) {
        const acc = typeof p.accuracy === "number" ? ` (${Math.round(100 * p.accuracy)}% right on held-out labels)` : "";
        lines.push(`Suggestions from this project's model, trained on ${p.labels} labels${acc}.`);
        if (typeof a.labels_until_retrain === "number") {
          lines.push(`It retrains after ${a.labels_until_retrain} more label change${a.labels_until_retrain === 1 ? "" : "s"}.`);
        }
      } else if (a.mode === "imagenet") {
        lines.push(`Hints from the ImageNet model until every class has ${a.needed_per_class} labels.`);
        if ((a.classes_short || []).length) {
          lines.push(`Still short: ${a.classes_short.slice(0, 8).join(", ")}${a.classes_short.length > 8 ? "…" : ""}.`);
        }
      } else {
        lines.push("Training this project's model…");
      }
      if (pending.embed) lines.push(`Reading ${pending.embed} new image${pending.embed === 1 ? "" : "s"}…`);
      else if (pending.suggest) lines.push(`Updating ${pending.suggest} suggestion${pending.suggest === 1 ? "" : "s"}…`);
      box.hidden = false;
      body.replaceChildren(...lines.map((line) => {
        const el = document.createElement("p");
        el.textContent = line;
        return el;
      }));
      box.dataset.mode = a.mode;
      // A new model, or its suggestions all written: what the pages hold of them is old.
      const now = `${p ? p.id : ""}:${pending.suggest ? "busy" : "done"}`;
      if (state !== undefined && now !== state) document.body.dispatchEvent(new CustomEvent("studio:probe"));
      state = now;
      return true;
    }
    poll().then((more) => {
      if (more) setInterval(poll, document.body.dataset.page === "label" ? 4000 : 8000);
    });
  }

  // ---- the import panel -------------------------------------------------------------------------------------

  const BATCH_FILES = 16;
  const BATCH_BYTES = 8 * 1024 * 1024;
  const HIDDEN = (p) => p.startsWith(".") || p === "__MACOSX" || p === "Thumbs.db" || p === "desktop.ini";

  async function walkEntry(entry, prefix, out) {
    if (entry.isFile) {
      const file = await new Promise((res, rej) => entry.file(res, rej)).catch(() => null);
      out.push({file, parts: [...prefix, entry.name]});
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {  // readEntries answers in chunks (100 in Chrome) until an empty one
        const chunk = await new Promise((res, rej) => reader.readEntries(res, rej)).catch(() => []);
        if (!chunk.length) break;
        for (const child of chunk) await walkEntry(child, [...prefix, entry.name], out);
      }
    }
  }

  async function droppedFiles(dt) {
    // Entries must be taken while the drop event is dispatched; walking them may take longer.
    const entries = [];
    const loose = [];
    for (const item of dt.items || []) {
      if (item.kind !== "file") continue;
      const entry = item.webkitGetAsEntry ? item.webkitGetAsEntry() : null;
      if (entry) entries.push(entry);
      else { const f = item.getAsFile(); if (f) loose.push(f); }
    }
    if (!entries.length && !loose.length) loose.push(...(dt.files || []));
    const out = loose.map((f) => ({file: f, parts: [f.name]}));
    for (const entry of entries) await walkEntry(entry, [], out);
    return out;
  }

  /** The name each file is sent under (the server labels a file by its class folder): one dropped folder:
   * its sub-folders are classes and its own images stay unlabelled; several folders: each is a class. */
  function plan(items) {
    const kept = [];
    let skipped = 0;
    for (const it of items) {
      if (it.parts.some(HIDDEN)) { skipped++; continue; }
      kept.push(it);
    }
    const roots = new Set(kept.filter((it) => it.parts.length > 1).map((it) => it.parts[0]));
    for (const it of kept) {
      it.name = it.parts.length === 2 && roots.size === 1 ? it.parts[1] : it.parts.join("/");
    }
    return {kept, skipped};
  }

  function batchesOf(items) {
    const out = [];
    let cur = [];
    let bytes = 0;
    for (const it of items) {
      const size = it.file ? it.file.size : 0;
      if (cur.length && (cur.length >= BATCH_FILES || bytes + size > BATCH_BYTES)) {
        out.push(cur);
        cur = [];
        bytes = 0;
      }
      cur.push(it);
      bytes += size;
    }
    if (cur.length) out.push(cur);
    return out;
  }

  function sendBatch(pid, batch, label, onProgress) {
    return new Promise((resolve) => {
      const fd = new FormData();
      if (label) fd.append("label", label);
      for (const it of batch) fd.append("files", it.file, it.name);
      const xhr = new XMLHttpRequest();
      xhr.open("POST", `/api/v1/projects/${pid}/imports`);
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.onprogress = (e) => onProgress(e.loaded, e.total);
      xhr.onload = () => {
        let data = null;
        try { data = JSON.parse(xhr.responseText); } catch (e) { data = null; }
        const ok = xhr.status >= 200 && xhr.status < 300 && data;
        resolve({ok, status: xhr.status, data, error: ok ? null : problem(xhr.status, data)});
      };
      xhr.onerror = () => resolve({ok: false, status: 0, data: null, error: "the upload was cut off"});
      xhr.send(fd);
    });
  }

  function importView() {
    const box = $("#upload");
    const rejects = $("#rejects");
    const state = {added: 0, duplicates: 0, rejected: 0};
    box.hidden = false;
    rejects.textContent = "";
    $("#rejects-box").hidden = true;
    $("#rejects-count").textContent = "0";
    return {
      state,
      progress(frac, text) {
        $("#upload-progress").value = Math.max(0, Math.min(1, frac));
        $("#upload-text").textContent = text;
      },
      title(text) { $("#upload-title").textContent = text; },
      add(result) {
        state.added += result.added || 0;
        state.duplicates += result.duplicates || 0;
        for (const r of result.rejected || []) this.reject(r.name, r.error);
        this.summary();
      },
      reject(name, error) {
        state.rejected++;
        if (rejects.children.length < 500) {
          const li = document.createElement("li");
          const b = document.createElement("strong");
          b.textContent = name;
          li.append(b, `: ${error}`);
          rejects.appendChild(li);
        }
        $("#rejects-box").hidden = false;
        $("#rejects-count").textContent = String(state.rejected);
      },
      summary(extra = "") {
        $("#upload-summary").textContent = `${state.added} added · ${state.duplicates} duplicate${
          state.duplicates === 1 ? "" : "s"} (already in the project) · ${state.rejected} rejected${extra}`;
      },
    };
  }

  let uploading = false;
  async function upload(pid, items) {
    if (uploading) { flash("An import is running: wait for it to finish.", "error"); return; }
    const {kept, skipped} = plan(items);
    if (!kept.length) { flash(skipped ? "Only hidden files: nothing to import." : "No files.", "error"); return; }
    uploading = true;
    const view = importView();
    const label = $("#import-label") ? $("#import-label").value : "";
    const cancel = $("#upload-cancel");
    let stop = false;
    cancel.hidden = false;
    cancel.onclick = () => { stop = true; cancel.hidden = true; };
    const totalBytes = kept.reduce((s, it) => s + (it.file ? it.file.size : 0), 0);
    const total = kept.length;
    let files = 0;
    let bytes = 0;
    let lastRefresh = 0;
    view.title(`Uploading ${total} file${total === 1 ? "" : "s"}`);
    const show = (partial) => view.progress((bytes + partial) / (totalBytes || 1),
      `${files} of ${total} files · ${fmtBytes(bytes + partial)} of ${fmtBytes(totalBytes)}`);
    show(0);
    view.summary(skipped ? ` · ${skipped} hidden files skipped` : "");
    for (const batch of batchesOf(kept)) {
      if (stop) break;
      const unreadable = batch.filter((it) => !it.file);
      unreadable.forEach((it) => view.reject(it.parts.join("/"), "could not be read by the browser"));
      const send = batch.filter((it) => it.file);
      const size = send.reduce((s, it) => s + it.file.size, 0);
      if (send.length) {
        const r = await sendBatch(pid, send, label, (loaded, all) => show(Math.min(size, all ? size * loaded / all : 0)));
        if (r.ok) view.add(r.data);
        else send.forEach((it) => view.reject(it.name, r.error));
      }
      files += batch.length;
      bytes += size;
      show(0);
      view.summary(skipped ? ` · ${skipped} hidden files skipped` : "");
      if (performance.now() - lastRefresh > 1500) { lastRefresh = performance.now(); changed(); }
    }
    cancel.hidden = true;
    view.title(stop ? `Stopped after ${files} of ${total} files` : `Uploaded ${total} file${total === 1 ? "" : "s"}`);
    uploading = false;
    changed();
    const st = view.state;
    flash(`Import done: ${st.added} added, ${st.duplicates} duplicate${st.duplicates === 1 ? "" : "s"}, ${st.rejected} rejected.`, "ok");
  }

  async function importPath(pid, path, copy) {
    if (uploading) { flash("An import is running: wait for it to finish.", "error"); return; }
    uploading = true;
    const view = importView();
    view.title(`Importing ${path}`);
    view.progress(0, "starting…");
    try {
      const r = await api("POST", `/api/v1/projects/${pid}/imports`, {path, copy});
      if (!r.ok) { view.title("Import refused"); view.progress(0, r.error); flash(r.error, "error"); return; }
      let s = r.data;
      let shown = 0;
      for (;;) {
        const done = s.added + s.duplicates + (s.rejected || []).length;
        view.state.added = s.added;
        view.state.duplicates = s.duplicates;
        for (const rej of (s.rejected || []).slice(shown)) view.reject(rej.name, rej.error);
        shown = (s.rejected || []).length;
        view.summary();
        view.progress(s.total ? done / s.total : (s.status === "running" ? 0 : 1),
          s.total ? `${done} of ${s.total} files` : `${done} files`);
        if (s.status !== "running") break;
        changed();
        await new Promise((res) => setTimeout(res, 1000));
        const next = await api("GET", `/api/v1/projects/${pid}/imports/${s.id}`);
        if (!next.ok) { flash(next.error, "error"); break; }
        s = next.data;
      }
      view.title(s.status === "done" ? `Imported ${path}` : `Import ${s.status}: ${path}`);
      view.progress(1, `${s.added + s.duplicates + (s.rejected || []).length} files read`);
      changed();
    } finally {
      uploading = false;
    }
  }

  function initImport() {
    const zone = $("#dropzone");
    if (!zone) return;
    const pid = zone.dataset.pid;
    zone.addEventListener("dragover", (e) => {
      e.preventDefault();
      e.dataTransfer.dropEffect = "copy";
      zone.classList.add("over");
    });
    zone.addEventListener("dragleave", (e) => { if (!zone.contains(e.relatedTarget)) zone.classList.remove("over"); });
    zone.addEventListener("drop", async (e) => {
      e.preventDefault();
      zone.classList.remove("over");
      upload(pid, await droppedFiles(e.dataTransfer));
    });
    // A drop that misses the zone must not open the file in the tab (and lose the page).
    window.addEventListener("dragover", (e) => e.preventDefault());
    window.addEventListener("drop", (e) => e.preventDefault());
    $("#pick-files").addEventListener("change", (e) => {
      const items = [...e.target.files].map((f) => ({file: f, parts: [f.name]}));
      e.target.value = "";
      upload(pid, items);
    });
    $("#pick-folder").addEventListener("change", (e) => {
      const items = [...e.target.files].map((f) => ({file: f, parts: (f.webkitRelativePath || f.name).split("/")}));
      e.target.value = "";
      upload(pid, items);
    });
    $("#path-import").addEventListener("submit", (e) => {
      e.preventDefault();
      importPath(pid, $("#import-path").value.trim(), $("#import-copy").checked);
    });
    // Classes added by an import (class folders) or on this page: offer them as the label of loose images.
    document.body.addEventListener("studio:changed", async () => {
      const r = await api("GET", `/api/v1/projects/${pid}`);
      const sel = $("#import-label");
      if (!r.ok || !sel) return;
      const value = sel.value;
      sel.replaceChildren(new Option("(leave unlabelled)", ""),
        ...r.data.classes.map((c) => new Option(c.name, c.name, false, c.name === value)));
    });
  }

  // ---- the label view ---------------------------------------------------------------------------------------

  function initLabel() {
    const cfgEl = $("#label-config");
    if (!cfgEl) return;
    const cfg = JSON.parse(cfgEl.textContent);
    const base = `/api/v1/projects/${cfg.pid}`;
    const multi = cfg.task === "multi_label";
    const classes = cfg.classes;
    const PAGE = 50;
    const AHEAD = 3;
    const S = {items: [], pos: -1, size: 0, exhausted: false, loading: null, chain: Promise.resolve(), undo: [],
               timings: [], cache: new Map(), ready: false, cursor: null};
    window.studioLabel = S;  // read by tests and benchmarks (timings of the hotkey round trip)
    const box = $("#photo-box");
    const buttons = $$(".class-button");
    const keysDialog = $("#keys-dialog");

    const matches = (it) => {  // whether an image is still in the queue, as far as this page knows
      const q = cfg.query;
      if (q.status === "unlabelled" && it.labels.length) return false;
      if (q.status === "labelled" && !it.labels.length) return false;
      if (q.label && !it.labels.includes(q.label)) return false;
      return true;
    };
    const current = () => S.items[S.pos];
    const fileUrl = (it) => (/\.(jpe?g|png|gif|webp|avif)$/i.test(it.name) ? `${base}/images/${it.id}/file`
      : `${base}/images/${it.id}/thumb?size=512`);

    async function fetchMore() {
      if (S.exhausted) return;
      if (!S.loading) {
        S.loading = (async () => {
          const seen = new Set(S.items.map((it) => it.id));
          // The queue after the last image read from it (a cursor: images joining or leaving the queue meanwhile
          // shift nothing); images this page holds already are skipped.
          for (let tries = 0; tries < 10; tries++) {
            const q = new URLSearchParams({...cfg.query, limit: String(PAGE)});
            if (S.cursor != null) q.set("after", String(S.cursor));
            const r = await api("GET", `${base}/images?${q}`);
            if (!r.ok) {
              if (r.status === 404 && S.cursor != null) { S.cursor = null; continue; }  // that image was deleted
              flash(r.error, "error");
              return;
            }
            const now = performance.now();
            const items = r.data.items;
            if (items.length) S.cursor = items[items.length - 1].id;
            const fresh = items.filter((it) => !seen.has(it.id));
            fresh.forEach((it) => { it.fetched = now; S.items.push(it); });
            S.size = S.items.filter((it) => !it.extra && !matches(it)).length + r.data.total;
            if (items.length < PAGE) { S.exhausted = true; return; }
            if (fresh.length) return;
          }
        })();
      }
      const p = S.loading;
      try { await p; } finally { if (S.loading === p) S.loading = null; }
    }

    function preload(it) {
      let p = S.cache.get(it.id);
      if (p) return p;
      const img = new Image();
      img.decoding = "async";
      img.src = fileUrl(it);
      const ready = img.decode().catch(() => {
        if (img.src.includes("/thumb")) return null;
        img.src = `${base}/images/${it.id}/thumb?size=512`;  // a format this browser cannot show
        return img.decode().catch(() => null);
      });
      p = {img, ready};
      S.cache.set(it.id, p);
      return p;
    }

    function prefetch() {
      const keep = new Set();
      for (let i = Math.max(0, S.pos - 2); i <= Math.min(S.items.length - 1, S.pos + AHEAD); i++) {
        keep.add(S.items[i].id);
        preload(S.items[i]);
      }
      for (const id of S.cache.keys()) if (!keep.has(id)) S.cache.delete(id);
    }

    function saveState(text, kind = "") {
      const el = $("#save-state");
      el.textContent = text;
      el.dataset.kind = kind;
    }

    const guesses = (it) => it.imagenet_guesses || [];  // the ImageNet model's top guesses (before the probe)

    function acceptable(it) {
      if (it.suggestion && classes.includes(it.suggestion.label)) return {label: it.suggestion.label, hint: false};
      if (!it.suggestion || it.suggestion.source === "imagenet") {
        for (const [label] of guesses(it)) if (classes.includes(label)) return {label, hint: true};
      }
      return null;
    }

    function position() {
      const el = $("#position");
      if (S.pos < 0 || S.pos >= S.items.length) { el.textContent = ""; return; }
      let text = `Image ${S.pos + 1} of ${Math.max(S.size, S.items.length)}`;
      if (cfg.query.status === "unlabelled") {
        const gone = S.items.filter((it) => !it.extra && !matches(it)).length;
        text += ` · ${Math.max(0, S.size - gone)} left`;
      }
      el.textContent = text;
    }

    function render(it) {
      box.dataset.id = it.id;
      box.dataset.version = it.version;
      $("#photo-name").textContent = it.name;
      $("#photo-size").textContent = it.width && it.height ? `${it.width}×${it.height}` : "";
      for (const b of buttons) b.setAttribute("aria-pressed", it.labels.includes(b.dataset.class) ? "true" : "false");
      const c = $("#conflict");
      c.hidden = !it.conflict;
      c.textContent = it.conflict || "";
      const acc = acceptable(it);
      const sbox = $("#suggestion-box");
      sbox.hidden = !it.suggestion && !acc;
      if (!sbox.hidden) {
        const s = it.suggestion || {label: acc.label, score: (guesses(it).find((h) => h[0] === acc.label) || [0, 0])[1],
                                    source: "imagenet"};
        $("#suggestion-label").textContent = s.label;
        $("#suggestion-score").textContent = `${Math.round(100 * s.score)}% · ${
          acc && acc.hint || s.source === "imagenet" ? "a guess of the ImageNet model" : s.source === "probe"
          ? "this project's model" : s.source}`;
        $("#accept").disabled = !acc;
      }
      const hints = $("#hints");
      hints.textContent = "";
      const showHints = (!it.suggestion || it.suggestion.source === "imagenet") && guesses(it).length;
      $("#hints-box").hidden = !showHints;
      if (showHints) {
        for (const [label, score] of guesses(it).slice(0, 5)) {
          const li = document.createElement("li");
          li.append(`${label} `);
          const sc = document.createElement("span");
          sc.className = "muted";
          sc.textContent = `${Math.round(100 * score)}%`;
          li.append(sc);
          if (classes.includes(label)) {
            const b = document.createElement("button");
            b.type = "button";
            b.className = "small";
            b.textContent = `Accept ${label}`;
            b.addEventListener("click", () => enqueue(() => give(label, performance.now())));
            li.append(" ", b);
          }
          hints.appendChild(li);
        }
      }
      const flags = $("#flags");
      flags.textContent = "";
      $("#flags-box").hidden = !(it.flags || []).length;
      for (const f of it.flags || []) {
        const li = document.createElement("li");
        const b = document.createElement("strong");
        b.textContent = FLAG_NAMES[f.kind] || f.kind;
        li.append(b, f.detail ? `: ${f.detail}` : "");
        if ((f.kind === "duplicate" || f.kind === "conflict") && f.other != null) {
          const nd = document.createElement("button");
          nd.type = "button";
          nd.className = "small not-duplicate";
          nd.dataset.other = f.other;
          nd.textContent = "Not a duplicate";
          nd.title = "Different photos: the checks will not pair these two again";
          nd.addEventListener("click", () => enqueue(() => notDuplicate(it, f.other)));
          li.append(" ", nd);
        }
        flags.appendChild(li);
      }
      position();
    }

    async function display(it) {
      const p = preload(it);
      await p.ready;
      if (current() !== it) return;
      const img = p.img;
      img.id = "photo";
      // Small photos are enlarged to fill the view, up to 4 times their size (beyond, they only blur).
      if (img.naturalWidth) {
        img.style.maxWidth = `${4 * img.naturalWidth}px`;
        img.style.maxHeight = `${4 * img.naturalHeight}px`;
      }
      img.alt = `${it.name} (${labelsText(it.labels)})`;
      const old = $("#photo");
      if (old !== img) {
        if (old) old.replaceWith(img); else box.prepend(img);
      }
      $("#loading").hidden = true;
      box.setAttribute("aria-busy", "false");
    }

    async function refresh(it) {  // a prefetched image's data may be old: re-read it (without waiting)
      if (performance.now() - (it.fetched || 0) < 5000) return;
      const r = await api("GET", `${base}/images/${it.id}`);
      if (!r.ok || r.data.version < it.version) return;
      Object.assign(it, r.data, {fetched: performance.now()});
      if (current() === it) render(it);
    }

    async function show(pos) {
      if (pos < 0) pos = 0;
      if (pos >= S.items.length - AHEAD) {
        if (pos >= S.items.length) await fetchMore();
        else fetchMore();
      }
      if (pos >= S.items.length) {
        S.pos = S.items.length;
        $("#queue-done").hidden = false;
        box.hidden = true;
        $("#photo-name").textContent = "";
        $("#photo-size").textContent = "";
        $("#suggestion-box").hidden = true;
        $("#hints-box").hidden = true;
        $("#flags-box").hidden = true;
        $("#conflict").hidden = true;
        buttons.forEach((b) => b.setAttribute("aria-pressed", "false"));
        position();
        delete box.dataset.id;
        document.body.dataset.shown = "done";
        return;
      }
      $("#queue-done").hidden = true;
      box.hidden = false;
      S.pos = pos;
      const it = S.items[pos];
      render(it);
      await display(it);
      document.body.dataset.shown = String(it.id);
      prefetch();
      refresh(it);
      const url = new URL(location.href);
      url.searchParams.set("queue", cfg.queue);
      url.searchParams.set("image", it.id);
      history.replaceState(null, "", url);
    }

    function enqueue(fn) {
      S.chain = S.chain.then(fn).catch((e) => { console.error(e); flash(String(e), "error"); });
      return S.chain;
    }

    async function put(it, labels) {
      saveState("Saving…");
      const r = await api("PUT", `${base}/images/${it.id}/labels`, {labels, version: it.version});
      if (r.status === 409 && r.data && r.data.current) {
        const cur = r.data.current;
        it.labels = cur.labels;
        it.version = cur.version;
        it.conflict = `Changed in another tab: now ${labelsText(cur.labels)}. Your “${labelsText(labels)
        }” was not saved; press it again to replace what is there.`;
        if (current() === it) render(it);
        saveState("");
        return false;
      }
      if (!r.ok) { saveState(`Not saved: ${r.error}`, "error"); return false; }
      Object.assign(it, r.data, {fetched: performance.now(), conflict: null});
      if (S.undo[S.undo.length - 1] !== it.id) S.undo.push(it.id);
      saveState(`Saved: ${labelsText(it.labels)}`, "ok");
      refreshCounts(cfg.pid);
      return true;
    }

    async function give(label, t0) {  // single-label: give the class and move on
      const it = current();
      if (!it) return;
      const labels = multi ? [...new Set([...it.labels, label])] : [label];
      if (!(await put(it, labels))) return;
      const tSaved = performance.now();
      if (multi) { render(it); return; }
      await show(S.pos + 1);
      await new Promise((res) => requestAnimationFrame(() => res()));
      const t1 = performance.now();
      S.timings.push({total: t1 - t0, save: tSaved - t0});
    }

    async function toggle(label) {  // multi-label: a digit toggles; the view stays
      const it = current();
      if (!it) return;
      const on = new Set(it.labels);
      if (on.has(label)) on.delete(label); else on.add(label);
      await put(it, classes.filter((c) => on.has(c)));
      if (current() === it) render(it);
    }

    async function accept(t0) {
      const it = current();
      if (!it) return;
      const acc = acceptable(it);
      if (!acc) { flash("No suggestion to accept for this image.", "info"); return; }
      await give(acc.label, t0);
    }

    async function notDuplicate(it, other) {
      const r = await api("POST", `${base}/not-duplicates`, {images: [it.id, other]});
      if (!r.ok) { flash(`Not saved: ${r.error}`, "error"); return; }
      it.flags = (it.flags || []).filter((f) => !((f.kind === "duplicate" || f.kind === "conflict") && f.other === other));
      for (const o of S.items) {  // the other image of the pair, if this page holds it
        if (o.id === other) o.flags = (o.flags || []).filter((f) => f.other !== it.id);
      }
      if (current() === it) render(it);
      saveState("Marked: not a duplicate (the checks will not pair them again)", "ok");
      refreshCounts(cfg.pid);
    }

    async function undo() {
      const id = S.undo.length ? S.undo.pop() : current() && current().id;
      if (id == null) return;
      const r = await api("POST", `${base}/images/${id}/undo`);
      if (!r.ok) {
        flash(r.status === 404 ? "Nothing to undo." : r.error, r.status === 404 ? "info" : "error");
        return;
      }
      let idx = S.items.findIndex((it) => it.id === id);
      if (idx < 0) {
        S.items.splice(Math.max(0, S.pos), 0, {...r.data, extra: true});
        idx = Math.max(0, S.pos);
      } else {
        Object.assign(S.items[idx], r.data, {fetched: performance.now(), conflict: null});
      }
      await show(idx);
      saveState(`Undone: ${labelsText(S.items[idx].labels)} again`, "ok");
      refreshCounts(cfg.pid);
    }

    async function move(delta) {
      const to = S.pos + delta;
      if (to < 0) return;
      await show(to);
    }

    document.addEventListener("keydown", (e) => {
      if (e.defaultPrevented || e.ctrlKey || e.metaKey || e.altKey || inField(e.target)) return;
      const t0 = performance.now();
      const key = e.key;
      if (keysDialog.open) {  // it closes itself on Escape, and on ? as it opened
        if (key === "?") { e.preventDefault(); keysDialog.close(); }
        return;
      }
      if (/^[1-9]$/.test(key)) {
        const label = classes[Number(key) - 1];
        if (!label || e.repeat) return;
        e.preventDefault();
        enqueue(() => (multi ? toggle(label) : give(label, t0)));
      } else if (key === "ArrowRight") {
        e.preventDefault();
        enqueue(() => move(1));
      } else if (key === "ArrowLeft") {
        e.preventDefault();
        enqueue(() => move(-1));
      } else if ((key === "z" || key === "Z") && !e.repeat) {
        e.preventDefault();
        enqueue(undo);
      } else if (key === "?") {
        e.preventDefault();
        keysDialog.showModal();
      } else if ((key === "a" || key === "A") && !e.repeat) {
        e.preventDefault();
        enqueue(() => (multi ? acceptMulti() : accept(t0)));
      } else if (key === "Enter" && !e.repeat && !e.target.closest("button, a, summary")) {
        e.preventDefault();
        enqueue(() => (multi ? move(1) : accept(t0)));
      }
    });

    async function acceptMulti() {
      const it = current();
      const acc = it && acceptable(it);
      if (!acc) { flash("No suggestion to accept for this image.", "info"); return; }
      if (!it.labels.includes(acc.label)) await toggle(acc.label);
    }

    buttons.forEach((b) => b.addEventListener("click", () => {
      const t0 = performance.now();
      enqueue(() => (multi ? toggle(b.dataset.class) : give(b.dataset.class, t0)));
    }));
    $("#accept").addEventListener("click", () => {
      const t0 = performance.now();
      enqueue(() => (multi ? acceptMulti() : accept(t0)));
    });
    $("#prev").addEventListener("click", () => enqueue(() => move(-1)));
    $("#next").addEventListener("click", () => enqueue(() => move(1)));
    $("#undo").addEventListener("click", () => enqueue(undo));
    $("#keys-button").addEventListener("click", () => keysDialog.showModal());
    $("#queue").addEventListener("change", (e) => {
      location.href = `/projects/${cfg.pid}/label?queue=${encodeURIComponent(e.target.value)}`;
    });
    // A retrained model: what comes next is re-read (new suggestions, a new uncertain order).
    document.body.addEventListener("studio:probe", () => enqueue(async () => {
      S.items.splice(S.pos + 1);
      S.exhausted = false;
      // the uncertain order is a new one: read it from its start (what this page holds is skipped); other
      // orders go on after the image shown
      const it0 = current();
      S.cursor = cfg.query.order === "uncertain" || !it0 || it0.extra ? null : it0.id;
      refreshCounts(cfg.pid);
      const it = current();
      if (it) { it.fetched = 0; await refresh(it); }
      await fetchMore();
      prefetch();
      position();
    }));

    enqueue(async () => {
      if (cfg.image != null) {
        const r = await api("GET", `${base}/images/${cfg.image}`);
        if (r.ok) {
          r.data.fetched = performance.now();
          r.data.extra = true;  // not counted as read from the queue (where it may also be, further on)
          S.items.push(r.data);
        }
      }
      await fetchMore();
      await show(0);
      S.ready = true;
    });
  }

  // ---- the grid ---------------------------------------------------------------------------------------------

  function initGrid() {
    const cfgEl = $("#grid-config");
    if (!cfgEl) return;
    const cfg = JSON.parse(cfgEl.textContent);
    const base = `/api/v1/projects/${cfg.pid}`;
    const list = $("#tiles");
    const tiles = list ? $$(".tile", list) : [];
    const sel = new Set();
    let anchor = null;
    const assignButton = $("#bulk-assign");

    function paint() {
      for (const t of tiles) t.setAttribute("aria-selected", sel.has(t) ? "true" : "false");
      $("#selected-count").textContent = `${sel.size} selected`;
      assignButton.disabled = sel.size === 0;
      assignButton.textContent = sel.size ? `Assign to ${sel.size}` : "Assign";
    }
    function focusTile(t) {
      for (const o of tiles) o.tabIndex = o === t ? 0 : -1;
      t.focus({preventScroll: false});
    }
    function select(t, {range = false, add = false} = {}) {
      const i = Number(t.dataset.index);
      if (range && anchor !== null) {
        if (!add) sel.clear();
        const [a, b] = anchor < i ? [anchor, i] : [i, anchor];
        for (let k = a; k <= b; k++) sel.add(tiles[k]);
      } else if (add) {
        if (sel.has(t)) sel.delete(t); else sel.add(t);
        anchor = i;
      } else {
        sel.clear();
        sel.add(t);
        anchor = i;
      }
      paint();
    }
    const open = (t) => {
      location.href = `/projects/${cfg.pid}/label?queue=${encodeURIComponent(cfg.queue)}&image=${t.dataset.id}`;
    };

    if (list) {
      list.addEventListener("mousedown", (e) => { if (e.shiftKey) e.preventDefault(); });  // no text selection
      list.addEventListener("click", (e) => {
        const t = e.target.closest(".tile");
        if (!t) return;
        select(t, {range: e.shiftKey, add: e.ctrlKey || e.metaKey});
        focusTile(t);
      });
      list.addEventListener("dblclick", (e) => {
        const t = e.target.closest(".tile");
        if (t) open(t);
      });
      list.addEventListener("keydown", (e) => {
        const t = e.target.closest(".tile");
        if (!t) return;
        const i = Number(t.dataset.index);
        const cols = Math.max(1, Math.round(list.clientWidth / t.offsetWidth));
        const to = {ArrowRight: i + 1, ArrowLeft: i - 1, ArrowDown: i + cols, ArrowUp: i - cols, Home: 0,
                    End: tiles.length - 1}[e.key];
        if (to !== undefined) {
          e.preventDefault();
          const n = tiles[Math.max(0, Math.min(tiles.length - 1, to))];
          focusTile(n);
          if (e.shiftKey) select(n, {range: true});
        } else if (e.key === " ") {
          e.preventDefault();
          select(t, {add: true});
        } else if (e.key === "Enter") {
          e.preventDefault();
          open(t);
        }
      });
    }

    async function assign(label) {
      if (!sel.size) return;
      const modeEl = $("#bulk-mode");
      const mode = cfg.task === "multi_label" && modeEl ? modeEl.value : "set";
      const chosen = [...sel];
      const ids = chosen.map((t) => Number(t.dataset.id));
      assignButton.disabled = true;
      const r = await api("POST", `${base}/labels/bulk`, {ids, label, mode});
      assignButton.disabled = false;
      if (!r.ok) { flash(`Not saved: ${r.error}`, "error"); paint(); return; }
      for (const t of chosen) {
        let labels = JSON.parse(t.dataset.labels || "[]");
        if (mode === "set") labels = [label];
        else if (mode === "add") labels = cfg.classes.filter((c) => c === label || labels.includes(c));
        else labels = labels.filter((c) => c !== label);
        t.dataset.labels = JSON.stringify(labels);
        const cap = $(".tile-labels", t);
        cap.textContent = labelsText(labels);
        cap.classList.toggle("none", !labels.length);
        t.classList.add("just-labelled");
      }
      flash(`${ids.length} image${ids.length === 1 ? "" : "s"}: ${mode === "remove" ? "removed" : "gave"} “${label}” (${
        r.data.changed} changed).`, "ok");
      refreshCounts(cfg.pid, 0);
      sel.clear();
      paint();
    }

    assignButton.addEventListener("click", () => assign($("#bulk-class").value));
    $("#select-page").addEventListener("click", () => { tiles.forEach((t) => sel.add(t)); paint(); });
    $("#select-none").addEventListener("click", () => { sel.clear(); paint(); });
    document.addEventListener("keydown", (e) => {
      if (e.defaultPrevented || e.altKey || inField(e.target)) return;
      if ((e.ctrlKey || e.metaKey) && (e.key === "a" || e.key === "A")) {
        e.preventDefault();
        tiles.forEach((t) => sel.add(t));
        paint();
      } else if (e.ctrlKey || e.metaKey) {
        return;
      } else if (/^[1-9]$/.test(e.key) && sel.size && !e.repeat) {
        const label = cfg.classes[Number(e.key) - 1];
        if (label) { e.preventDefault(); assign(label); }
      } else if (e.key === "Escape" && sel.size) {
        sel.clear();
        paint();
      }
    });
    // The filters apply as soon as one changes (the Apply button is there without JavaScript).
    const filters = $("#filters");
    if (filters) {
      filters.addEventListener("change", () => {
        const q = new URLSearchParams();
        for (const el of filters.elements) {
          if (!el.name || !el.value || (el.name === "status" && el.value === "all")
              || (el.name === "order" && el.value === "added")) continue;
          q.set(el.name, el.value);
        }
        location.href = `${location.pathname}${q.toString() ? "?" + q : ""}`;
      });
    }
    paint();
    document.body.dataset.ready = "grid";
  }

  function init() {
    initAssist();
    initImport();
    initLabel();
    initGrid();
    document.body.dataset.js = "ready";
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
