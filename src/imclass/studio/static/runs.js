/* imclass studio, Studio II: the train page, a run's live view (SSE), its evaluation and ship sections, and the
 * review box of the label view. No dependencies; every change goes through the JSON API (/api/v1).
 *
 *   - buttons with data-run-action="cancel|resume|retrain" data-rid="N", on any page;
 *   - the train form (#train-form): settings -> POST /projects/{pid}/runs -> the run's page; augmentation preview;
 *   - the run page (#run-config): the events so far come with the page, the rest from
 *     GET /api/v1/runs/{rid}/events (Server-Sent Events): curves (inline SVG), progress and ETA, the preview grid;
 *     when the run ends, its head and report are re-read (no reload);
 *   - the report (#report-config): the unknown-threshold slider (computed here from the validation predictions,
 *     saved with PATCH), export and label-a-folder tasks (polled), Try it, copy buttons;
 *   - the review box (#review-config) in the label view: what the run answered for the image shown.
 */
"use strict";
(() => {
  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];
  const SVG = "http://www.w3.org/2000/svg";

  function problem(status, data) {
    if (status === 401) {
      location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
      return "please log in";
    }
    const d = data && typeof data === "object" ? data.detail : null;
    if (Array.isArray(d)) return d.map((e) => `${(e.loc || []).filter((x) => x !== "body").join(".")}: ${e.msg}`).join("; ");
    if (d) return String(d);
    if (status === 0) return "the studio cannot be reached (is it still running?)";
    return `the studio answered ${status}`;
  }

  async function api(method, url, body) {
    const init = {method, headers: {Accept: "application/json"}, credentials: "same-origin"};
    if (body instanceof FormData) {
      init.body = body;
    } else if (body !== undefined) {
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

  let flashTimer = null;
  function flash(text, kind = "info") {
    const el = $("#flash");
    if (!el) return;
    el.textContent = text;
    el.dataset.kind = kind;
    clearTimeout(flashTimer);
    if (kind !== "error") flashTimer = setTimeout(() => { el.textContent = ""; }, 6000);
  }

  function h(tag, attrs = {}, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "text") el.textContent = v;
      else el.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) if (c !== null && c !== undefined) el.append(c);
    return el;
  }

  function s(tag, attrs = {}) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    return el;
  }

  const pct = (x, digits = 1) => (typeof x === "number" && isFinite(x) ? `${(100 * x).toFixed(digits)}%` : "–");
  function duration(sec) {
    sec = Math.max(0, Math.round(sec));
    if (sec < 60) return `${sec} s`;
    if (sec < 3600) return `${Math.floor(sec / 60)} min ${String(sec % 60).padStart(2, "0")} s`;
    return `${Math.floor(sec / 3600)} h ${String(Math.floor((sec % 3600) / 60)).padStart(2, "0")} min`;
  }
  const thumb = (pid, iid, size = 128) => `/api/v1/projects/${pid}/images/${iid}/thumb?size=${size}`;

  function confirmDialog(text, button) {
    const dlg = $("#confirm-dialog");
    if (!dlg || typeof dlg.showModal !== "function") return Promise.resolve(window.confirm(text));
    $("#confirm-text").textContent = text;
    $("#confirm-ok").textContent = button;
    dlg.returnValue = "";
    dlg.showModal();
    return new Promise((resolve) => dlg.addEventListener("close", () => resolve(dlg.returnValue === "ok"),
                                                         {once: true}));
  }

  // ---- run actions: cancel, resume, retrain ---------------------------------------------------------------

  document.addEventListener("click", async (e) => {
    const b = e.target.closest && e.target.closest("[data-run-action]");
    if (!b) return;
    const action = b.dataset.runAction;
    const rid = b.dataset.rid;
    if (action === "cancel" && !(await confirmDialog(`Cancel run #${rid}? What it trained so far is dropped.`,
                                                     "Cancel the run"))) return;
    b.disabled = true;
    const r = await api("POST", `/api/v1/runs/${rid}/${action}`);
    b.disabled = false;
    if (!r.ok) { flash(r.error, "error"); return; }
    if (action === "retrain") {
      location.href = `/runs/${r.data.id}`;
    } else if ($("#run-config")) {
      location.reload();  // the run page follows the run again from its new state
    } else {
      flash(action === "cancel" ? `Run #${rid} cancelled.` : `Run #${rid} queued again.`, "ok");
      document.body.dispatchEvent(new CustomEvent("studio:changed"));
    }
  });

  // ---- the train page -------------------------------------------------------------------------------------

  function initTrain() {
    const form = $("#train-form");
    if (!form) return;
    const cfg = JSON.parse($("#train-config").textContent);
    const init = cfg.initial || {};
    const modelSel = $("#train-model");
    const other = $("#train-model-other");
    if (init.model) {
      if (cfg.models.includes(init.model)) modelSel.value = init.model;
      else { modelSel.value = "other"; other.value = init.model; }
    }
    const mode = () => (form.querySelector("input[name=mode]:checked") || {}).value || "budget";

    function modeChanged() {
      const probe = mode() === "probe";
      const budget = mode() === "budget";  // chooses its own epochs, batch and learning rate
      $$("[data-not-probe]", form).forEach((el) => { el.disabled = probe || budget; });
      $$("[data-probe-only]", form).forEach((el) => { el.hidden = !probe; });
      $$("[data-budget-only]", form).forEach((el) => { el.hidden = !budget; });
      $$("[data-not-probe-hint]", form).forEach((el) => { el.hidden = probe || budget; });
      $("#train-augment").disabled = probe;
      const fig = $(".augment-preview");
      if (fig) fig.classList.toggle("unused", probe);
      $$(".mode-card", form).forEach((c) => c.classList.toggle("checked", c.querySelector("input").checked));
    }
    function modelChanged() {
      other.hidden = modelSel.value !== "other";
      if (!other.hidden) other.focus();
    }
    form.addEventListener("change", (e) => {
      if (e.target.name === "mode") modeChanged();
      if (e.target === modelSel) modelChanged();
    });
    modeChanged();
    modelChanged();

    const cov = $("#train-coverage");
    cov.addEventListener("input", () => { $("#train-coverage-out").textContent = `${cov.value}%`; });

    const preview = $("#augment-preview");
    if (preview) {
      const caption = $("#augment-caption");
      const base = caption.textContent;
      preview.addEventListener("load", () => { preview.classList.remove("loading"); caption.textContent = base; });
      preview.addEventListener("error", () => {
        preview.classList.remove("loading");
        caption.textContent = "The samples could not be made (are the project's images readable?).";
      });
      $("#train-augment").addEventListener("change", (e) => {
        preview.classList.add("loading");
        caption.textContent = "Making samples…";
        preview.src = `/api/v1/projects/${cfg.pid}/augment-preview?preset=${encodeURIComponent(e.target.value)}&n=8&size=128`;
      });
    }

    function number(id, {integer = true, scale = 1} = {}) {
      const el = $(id);
      if (!el || el.disabled || el.value.trim() === "") return undefined;
      const v = Number(el.value);
      if (!isFinite(v)) throw new Error(`${el.labels[0] ? el.labels[0].textContent.trim() : id}: not a number`);
      return integer ? Math.round(v * scale) : v * scale;
    }

    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const err = $("#train-error");
      err.hidden = true;
      const body = {mode: mode()};
      try {
        const model = modelSel.value === "other" ? other.value.trim() : modelSel.value;
        if (model) body.model = model;
        if (body.mode === "budget") {
          body.budget_minutes = number("#train-budget", {integer: false});
          body.augment = $("#train-augment").value;
        } else if (body.mode !== "probe") {
          body.augment = $("#train-augment").value;
          body.epochs = number("#train-epochs");
          body.batch_size = number("#train-batch");
          body.lr = number("#train-lr", {integer: false});
        }
        body.image_size = number("#train-size");
        body.balance = $("#train-balance").value;
        if ($("#train-val")) body.val_fraction = number("#train-val", {integer: false, scale: 0.01});
        body.unknown_coverage = Number(cov.value) / 100;
        body.seed = number("#train-seed");
      } catch (ex) {
        err.textContent = ex.message;
        err.hidden = false;
        return;
      }
      for (const k of Object.keys(body)) if (body[k] === undefined) delete body[k];
      const button = $("#train-start");
      button.disabled = true;
      const r = await api("POST", `/api/v1/projects/${cfg.pid}/runs`, body);
      if (!r.ok) {
        button.disabled = false;
        err.textContent = `Not started: ${r.error}`;
        err.hidden = false;
        return;
      }
      location.href = `/runs/${r.data.id}`;
    });
  }

  // ---- charts: small inline SVG line charts ------------------------------------------------------------------

  const LOSS_SERIES = [["train_loss", "Training loss", "#1d5fd1"], ["val_loss", "Validation loss", "#e07b00"]];
  const SCORE_SERIES = [["val_accuracy", "Accuracy", "#1a7f37"], ["val_macro_precision", "Precision", "#7b3fbf"],
                        ["val_macro_f1", "F1", "#1d5fd1"], ["val_confidence", "Average confidence", "#8a8f98"]];

  function drawChart(svg, legend, records, series, {xMax, percent}) {
    const W = 460, H = 220, L = 46, R = 14, T = 12, B = 34;
    svg.replaceChildren();
    const used = series.filter(([key]) => records.some((r) => typeof r[key] === "number"));
    let lo = 0, hi = 1;
    if (!percent) {
      const values = used.flatMap(([key]) => records.map((r) => r[key]).filter((v) => typeof v === "number"));
      hi = values.length ? Math.max(...values) * 1.1 : 1;
      if (!(hi > 0)) hi = 1;
    }
    const n = Math.max(xMax || 1, ...records.map((r) => r.epoch || 1));
    const x = (v) => (n <= 1 ? L + (W - L - R) / 2 : L + ((v - 1) / (n - 1)) * (W - L - R));
    const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
    for (let i = 0; i <= 4; i++) {
      const v = lo + ((hi - lo) * i) / 4;
      svg.append(s("line", {x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid"}));
      const t = s("text", {x: L - 6, y: y(v) + 4, class: "tick", "text-anchor": "end"});
      t.textContent = percent ? `${Math.round(v * 100)}%` : v.toFixed(v >= 10 ? 0 : 2);
      svg.append(t);
    }
    const step = Math.max(1, Math.ceil(n / 10));
    for (let e = 1; e <= n; e += step) {
      const t = s("text", {x: x(e), y: H - B + 16, class: "tick", "text-anchor": "middle"});
      t.textContent = String(e);
      svg.append(t);
    }
    const label = s("text", {x: L + (W - L - R) / 2, y: H - 4, class: "axis", "text-anchor": "middle"});
    label.textContent = "epoch";
    svg.append(label);
    legend.replaceChildren();
    for (const [key, name, color] of used) {
      const pts = records.filter((r) => typeof r[key] === "number").map((r) => [r.epoch || 1, r[key]]);
      if (pts.length > 1) {
        svg.append(s("polyline", {points: pts.map(([a, b]) => `${x(a)},${y(b)}`).join(" "), fill: "none",
                                  stroke: color, "stroke-width": 2, class: "series", "data-key": key}));
      }
      for (const [a, b] of pts) {
        const c = s("circle", {cx: x(a), cy: y(b), r: 3.5, fill: color, class: "point", "data-key": key});
        const tt = s("title", {});
        tt.textContent = `${name}, epoch ${a}: ${percent ? pct(b) : b.toFixed(4)}`;
        c.append(tt);
        svg.append(c);
      }
      const last = pts[pts.length - 1][1];
      legend.append(h("li", {"data-key": key}, h("span", {class: "swatch", style: `background:${color}`}),
                      `${name} `, h("strong", {text: percent ? pct(last) : last.toFixed(3)})));
    }
    if (!used.length) {
      const t = s("text", {x: L + (W - L - R) / 2, y: T + (H - T - B) / 2, class: "axis", "text-anchor": "middle"});
      t.textContent = "no epoch yet";
      svg.append(t);
    }
  }

  // ---- the run page: live view ------------------------------------------------------------------------------

  const FINISHED = ["done", "failed", "cancelled", "interrupted"];
  const STATUS_NAMES = {queued: "Waiting", running: "Training", done: "Done", failed: "Failed",
                        cancelled: "Cancelled", interrupted: "Interrupted"};

  function initRun() {
    const cfgEl = $("#run-config");
    if (!cfgEl) return;
    const cfg = JSON.parse(cfgEl.textContent);
    const offset = cfg.server_now - Date.now() / 1000;  // the server's clock, from this page's
    const serverNow = () => Date.now() / 1000 + offset;
    const S = {status: cfg.status, records: [], previews: [], epochs: cfg.epochs, started: cfg.started,
               progress: {stage: cfg.stage, done: cfg.done, total: cfg.total}, etaAt: null, source: null,
               live: {epoch: 0, status: 0, progress: 0, candidate: 0}, pointsAfterEpoch: [], finished: false,
               candidates: []};
    window.studioRun = S;  // read by tests

    function epochsTotal() {
      const m = /^epoch (\d+)\/(\d+)/.exec(S.progress.stage || "");
      if (m) S.epochs = Number(m[2]);
      return S.epochs || Math.max(1, S.records.length);
    }

    function render() {
      // a run that ended before its first evaluation (failed, cancelled early) has no curves to show
      $("#live").hidden = FINISHED.includes(S.status) && !S.records.length && !$("#run-notes li") &&
        !S.candidates.length;
      const n = epochsTotal();
      drawChart($("#chart-loss"), $("#legend-loss"), S.records, LOSS_SERIES, {xMax: n, percent: false});
      drawChart($("#chart-scores"), $("#legend-scores"), S.records, SCORE_SERIES, {xMax: n, percent: true});
      renderPreview();
    }

    function renderPreview() {
      const list = $("#preview");
      const last = S.previews[S.previews.length - 1];
      $("#preview-empty").hidden = !!(last && last.items.length);
      if (!last) { list.replaceChildren(); return; }
      const before = S.previews.length > 1 ? S.previews[S.previews.length - 2] : null;
      const wasRight = new Map((before ? before.items : []).map((p) => [p.image_id, p.true === p.predicted]));
      const right = last.items.filter((p) => p.true === p.predicted).length;
      const fitted = cfg.mode === "probe" || (cfg.mode === "budget" && !S.records.some((r) => r.train_loss != null));
      $("#preview-caption").textContent = `after ${fitted ? "fitting" : `epoch ${last.epoch}`}: ${right} of ${
        last.items.length} right`;
      list.replaceChildren(...last.items.map((p) => {
        const ok = p.true === p.predicted;
        const turned = before && wasRight.has(p.image_id) && wasRight.get(p.image_id) !== ok;
        return h("li", {class: `ptile ${ok ? "ok" : "bad"}`, "data-id": p.image_id},
          p.image_id != null ? h("img", {src: thumb(cfg.pid, p.image_id), alt: p.path ? p.path.split("/").pop() : "",
                                         width: 128, height: 128, loading: "lazy"}) : h("div", {class: "noimg"}),
          h("span", {class: "ptrue", text: `labelled ${p.true}`}),
          h("span", {class: "ppred"}, "answer ", h("strong", {text: p.predicted || "unknown"}),
            typeof p.score === "number" ? ` ${pct(p.score, 0)}` : ""),
          turned ? h("span", {class: `pbadge ${ok ? "good" : "bad"}`, text: ok ? "now right" : "now wrong"}) : null);
      }));
    }

    function fraction() {
      const p = S.progress;
      const m = /^epoch (\d+)\/(\d+)/.exec(p.stage || "");
      if (m) return (Number(m[1]) - 1 + (p.total ? p.done / p.total : 0)) / Number(m[2]);
      if (p.stage === "embedding" && p.total) return (0.9 * p.done) / p.total;
      if (p.stage === "epoch done" && S.epochs) return Math.min(1, S.records.length / S.epochs);
      return null;
    }

    function stageText() {
      const p = S.progress;
      if (S.status === "queued") return "Waiting for its turn…";
      if (S.status !== "running") return "";
      const st = p.stage || "starting";
      const m = /^epoch (\d+)\/(\d+)(?: \((.*)\))?/.exec(st);
      const steps = p.total ? ` · step ${p.done} of ${p.total}` : "";
      if (m) return `Epoch ${m[1]} of ${m[2]}${m[3] ? ` (${m[3]})` : ""}${steps}`;
      if (st === "embedding") return `Reading the images${p.total ? ` · ${p.done} of ${p.total}` : ""}`;
      if (st === "evaluating") return `Evaluating on the validation images${p.total ? ` · ${p.done} of ${p.total}` : ""}`;
      if (st === "epoch done") return "Saving the epoch…";
      return st.charAt(0).toUpperCase() + st.slice(1) + (p.total ? ` · ${p.done} of ${p.total}` : "");
    }

    function renderProgress() {
      $("#live-stage").textContent = stageText();
      const bar = $("#live-progress");
      const f = fraction();
      bar.hidden = FINISHED.includes(S.status);
      if (f === null) bar.removeAttribute("value"); else bar.value = Math.min(1, f);
      const note = $("#queued-note");
      if (note) note.hidden = S.status !== "queued";
      const status = $("#run-status");
      if (status) {
        status.textContent = STATUS_NAMES[S.status] || S.status;
        status.className = `status status-${S.status}`;
      }
      if (S.status === "running" && S.started && f !== null && f > 0.02) {
        const elapsed = serverNow() - S.started;
        if (elapsed > 1) S.etaAt = serverNow() + (elapsed * (1 - f)) / f;
      } else if (S.status !== "running") {
        S.etaAt = null;
      }
      renderEta();
    }

    function renderEta() {
      const el = $("#live-eta");
      if (S.status === "running" && S.started) {
        const elapsed = `${duration(serverNow() - S.started)} so far`;
        el.textContent = S.etaAt ? `about ${duration(S.etaAt - serverNow())} left · ${elapsed}` : elapsed;
      } else {
        el.textContent = "";
      }
    }
    setInterval(renderEta, 1000);

    // a budgeted run: each candidate as it is decided, and the next one of its ladder as the one being tried
    function renderCandidates() {
      const list = $("#run-candidates");
      if (!list || cfg.mode !== "budget") return;
      const items = S.candidates.map((c) => {
        const secs = typeof c.seconds === "number"
          ? ` in ${c.seconds < 10 ? `${c.seconds.toFixed(1)} s` : duration(c.seconds)}` : "";
        const text = c.status === "done" ? `${c.candidate}: ${typeof c.metric === "number" ? pct(c.metric) : "–"}${secs}`
          : c.status === "skipped" ? `${c.candidate} skipped: ${c.why || ""}`
            : `${c.candidate} failed${c.why ? `: ${c.why}` : ""}`;
        return h("li", {class: `cand-${c.status}`, "data-status": c.status, text});
      });
      const next = (cfg.ladder || [])[S.candidates.length];
      if (S.status === "running" && next) items.push(h("li", {class: "cand-trying", text: `trying ${next}…`}));
      list.replaceChildren(...items);
      list.hidden = !items.length;
    }

    function onEvent(kind, data, live) {
      if (kind === "candidate") {
        S.candidates.push(data);
        if (live) S.live.candidate++;
        renderCandidates();
      } else if (kind === "epoch") {
        const rec = {...data};
        const i = S.records.findIndex((r) => r.epoch === rec.epoch);  // a resumed run repeats none, but be safe
        if (i >= 0) S.records[i] = rec; else S.records.push(rec);
        S.records.sort((a, b) => a.epoch - b.epoch);
        if ((rec.preview || []).length) S.previews.push({epoch: rec.epoch, items: rec.preview});
        if (live) S.live.epoch++;
        render();
        if (live) S.pointsAfterEpoch.push($$('#chart-loss circle.point[data-key="val_loss"]').length);
      } else if (kind === "status") {
        if (live) S.live.status++;
        if (data.status === "running" && S.status !== "running" && live) S.started = S.started || serverNow();
        S.status = data.status;
        renderProgress();
        renderCandidates();
        if (FINISHED.includes(data.status) && live) finish();
      } else if (kind === "progress") {
        if (live) S.live.progress++;
        S.progress = {stage: data.stage, done: data.done, total: data.total};
        if (data.status && data.status !== S.status) {
          if (data.status === "running" && !S.started) S.started = serverNow();
          S.status = data.status;
        }
        renderProgress();
      } else if (kind === "note" && data.note) {
        const notes = $("#run-notes");
        notes.append(h("li", {text: data.note}));
        notes.hidden = false;
        if (live) flash(data.note, "info");
      }
    }

    async function finish() {
      if (S.finished) return;
      S.finished = true;
      if (S.source) { S.source.close(); S.source = null; }
      $("#live-title").textContent = "Training curves";
      render();
      renderProgress();
      const [head, report] = await Promise.all([api("GET", `/runs/${cfg.rid}/partials/head`),
                                                fetch(`/runs/${cfg.rid}/partials/report`).then((r) => r.text())]);
      if (head.ok) $("#run-head").innerHTML = head.data;
      const box = $("#report");
      box.innerHTML = report;
      initReport(box);
      if (window.htmx) window.htmx.process(box);
      document.body.dataset.runDone = S.status;
    }

    function follow() {
      const es = new EventSource(`/api/v1/runs/${cfg.rid}/events?after=${cfg.last}`);
      S.source = es;
      for (const kind of ["epoch", "status", "progress", "note", "cams", "candidate"]) {
        es.addEventListener(kind, (e) => {
          let data = {};
          try { data = JSON.parse(e.data); } catch (ex) { return; }
          onEvent(kind, data, true);
        });
      }
      es.addEventListener("end", (e) => {
        let data = {};
        try { data = JSON.parse(e.data); } catch (ex) { data = {}; }
        if (data.status) S.status = data.status;
        finish();
      });
      es.onerror = () => {
        if (es.readyState === EventSource.CLOSED && !S.finished) {
          $("#live-stage").textContent = "Lost the connection to the studio: reload the page to follow the run.";
        }
      };
    }

    S.status = cfg.status;
    for (const ev of cfg.events) onEvent(ev.kind, ev.data, false);
    S.status = cfg.status;
    render();
    renderProgress();
    renderCandidates();
    if (!FINISHED.includes(cfg.status)) {
      follow();
    } else {
      S.finished = true;
      document.body.dataset.runDone = cfg.status;
    }
    document.body.dataset.ready = "run";
  }

  // ---- the report: threshold, ship ---------------------------------------------------------------------------

  function initReport(root = document) {
    const cfgEl = $("#report-config", root);
    if (!cfgEl) return;
    const cfg = JSON.parse(cfgEl.textContent);
    initThreshold(cfg, root);
    initCopy(root);
    initTasks(cfg, root);
    initTry(cfg, root);
  }

  function initThreshold(cfg, root) {
    const range = $("#threshold", root);
    if (!range) return;  // multi-label models have no "unknown" answer
    const off = $("#threshold-off", root);
    const state = $("#threshold-state", root);
    const val = cfg.val || [];
    function show() {
      range.disabled = off.checked;
      const t = off.checked ? 0 : Number(range.value);
      $("#th-value", root).textContent = off.checked ? "off" : t.toFixed(3);
      const kept = val.filter(([c]) => c >= t);
      const right = kept.reduce((n, [, ok]) => n + ok, 0);
      $("#th-coverage", root).textContent = val.length ? pct(kept.length / val.length) : "–";
      $("#th-coverage-text", root).textContent = `answered (${kept.length} of ${val.length} images; the rest: unknown)`;
      $("#th-accuracy", root).textContent = kept.length ? pct(right / kept.length) : "–";
    }
    range.addEventListener("input", show);
    off.addEventListener("change", show);
    const reset = $("#threshold-reset", root);
    if (reset) reset.addEventListener("click", () => { off.checked = false; range.value = cfg.fitted; show(); });
    $("#threshold-save", root).addEventListener("click", async (e) => {
      const threshold = off.checked ? null : Number(range.value);
      e.target.disabled = true;
      state.textContent = "Saving…";
      state.dataset.kind = "";
      const r = await api("PATCH", `/api/v1/runs/${cfg.rid}/unknown-threshold`, {threshold});
      e.target.disabled = false;
      if (!r.ok) { state.textContent = `Not saved: ${r.error}`; state.dataset.kind = "error"; return; }
      state.dataset.kind = "ok";
      state.textContent = r.data.threshold === null ? "Saved in the model: never unknown"
        : `Saved in the model: ${r.data.threshold.toFixed(3)} (answers ${pct(r.data.coverage)}, ${pct(r.data.accuracy)} right)`;
    });
    show();
  }

  function initCopy(root) {
    $$("[data-copy]", root).forEach((b) => b.addEventListener("click", async () => {
      const text = $(`#${b.dataset.copy}`, root).textContent;
      let ok = false;
      try { await navigator.clipboard.writeText(text); ok = true; } catch (e) {
        const ta = h("textarea", {class: "sr-only"});
        ta.value = text;
        document.body.append(ta);
        ta.select();
        try { ok = document.execCommand("copy"); } catch (e2) { ok = false; }
        ta.remove();
      }
      b.textContent = ok ? "Copied" : "Select and copy";
      setTimeout(() => { b.textContent = "Copy"; }, 2000);
    }));
  }

  function taskView(t) {
    const li = h("li", {class: `task task-${t.status}`, "data-task": t.id});
    const res = t.result || {};
    if (t.kind === "export") {
      const title = t.params.int8 ? "ONNX + INT8" : "ONNX";
      li.append(h("p", {}, h("strong", {text: title}), ` · ${taskStatus(t)}`));
      if (t.status === "done") {
        const rows = Object.entries(res.parity || {}).map(([kind, p]) => h("tr", {"data-kind": kind},
          h("th", {scope: "row", text: kind === "int8" ? "INT8" : "ONNX fp32"}),
          h("td", {class: "num", text: pct(p.top1_agreement)}),
          h("td", {class: "num", text: typeof p.max_abs_prob_diff === "number" ? p.max_abs_prob_diff.toFixed(4) : "–"}),
          h("td", {class: "num", text: `${p.n} ${p.images === "photos" ? "photos" : "synthetic"}`})));
        li.append(h("table", {class: "table compact parity"},
          h("thead", {}, h("tr", {}, h("th", {text: "File"}), h("th", {class: "num", text: "Same answer"}),
                           h("th", {class: "num", text: "Largest difference"}), h("th", {class: "num", text: "Checked on"}))),
          h("tbody", {}, ...rows)));
        if (!res.passed) li.append(h("p", {class: "error", text: "Below the agreement the studio expects: check before use."}));
        for (const w of res.warnings || []) li.append(h("p", {class: "hint", text: w}));
        li.append(h("p", {}, h("a", {class: "button", href: `/api/v1/tasks/${t.id}/file`, download: true,
                                     text: "Download the export (zip)"})));
      }
    } else {
      li.append(h("p", {}, h("strong", {text: t.params.path}), ` · ${taskStatus(t)}`));
      if (t.status === "running" || t.status === "queued") {
        const bar = h("progress", {max: t.total || 1});
        if (t.total) bar.value = t.done; else bar.removeAttribute("value");
        li.append(bar);
      }
      if (t.status === "done") {
        const counts = Object.entries(res.counts || {}).map(([k, v]) => `${k} ${v}`).join(", ");
        li.append(h("p", {class: "small", text: `${res.labelled} labelled${res.skipped ? `, ${res.skipped} already done` : ""}${
          res.errors ? `, ${res.errors} unreadable` : ""}${counts ? `: ${counts}` : ""}`}));
        li.append(h("p", {}, h("a", {class: "button", href: `/api/v1/tasks/${t.id}/file`, download: true,
                                     text: "Download the CSV"})));
      }
      if (t.status === "interrupted" || t.status === "failed") {
        const b = h("button", {type: "button", class: "small", text: "Resume"});
        b.addEventListener("click", () => startLabelling(t.run_id, t.params.path, true));
        li.append(b);
      }
    }
    if (t.error) li.append(h("p", {class: "error", text: t.error}));
    return li;
  }

  function taskStatus(t) {
    if (t.status === "queued") return "waiting (after any training run)";
    if (t.status === "running") return t.total ? `${t.done} of ${t.total}` : "running…";
    return {done: "done", failed: "failed", interrupted: "interrupted (the studio stopped)"}[t.status] || t.status;
  }

  const polling = new Set();
  function showTask(t, list) {
    const old = $(`[data-task="${t.id}"]`, list);
    const li = taskView(t);
    if (old) old.replaceWith(li); else list.prepend(li);
    if ((t.status === "queued" || t.status === "running") && !polling.has(t.id)) {
      polling.add(t.id);
      const tick = async () => {
        const r = await api("GET", `/api/v1/tasks/${t.id}`);
        if (r.ok) {
          const cur = $(`[data-task="${t.id}"]`, list);
          if (cur) cur.replaceWith(taskView(r.data));
          if (r.data.status === "queued" || r.data.status === "running") { setTimeout(tick, 1000); return; }
        } else if (r.status !== 0) {
          polling.delete(t.id);
          return;
        } else {
          setTimeout(tick, 3000);
          return;
        }
        polling.delete(t.id);
      };
      setTimeout(tick, 1000);
    }
  }

  let startLabelling = () => {};
  function initTasks(cfg, root) {
    const exports = $("#exports", root);
    const labellings = $("#labellings", root);
    for (const t of [...cfg.exports].reverse()) showTask(t, exports);
    for (const t of [...cfg.labellings].reverse()) showTask(t, labellings);
    $$("[data-export]", root).forEach((b) => b.addEventListener("click", async () => {
      b.disabled = true;
      const r = await api("POST", `/api/v1/runs/${cfg.rid}/export`, {int8: b.dataset.export === "int8"});
      b.disabled = false;
      if (!r.ok) { flash(`Not exported: ${r.error}`, "error"); return; }
      showTask(r.data, exports);
    }));
    const err = $("#label-folder-error", root);
    startLabelling = async (rid, path, resume) => {
      err.hidden = true;
      const r = await api("POST", `/api/v1/runs/${rid}/label-folder`, {path, resume});
      if (!r.ok) { err.textContent = r.error; err.hidden = false; return; }
      showTask(r.data, labellings);
    };
    $("#label-folder", root).addEventListener("submit", (e) => {
      e.preventDefault();
      startLabelling(cfg.rid, $("#label-folder-path", root).value.trim(), $("#label-folder-resume", root).checked);
    });
  }

  function initTry(cfg, root) {
    const drop = $("#try-drop", root);
    const input = $("#try-file", root);
    const err = $("#try-error", root);
    let url = null;
    async function tryFile(file) {
      if (!file) return;
      err.hidden = true;
      drop.classList.add("busy");
      const fd = new FormData();
      fd.append("file", file, file.name);
      const r = await api("POST", `/api/v1/runs/${cfg.rid}/try`, fd);
      drop.classList.remove("busy");
      if (!r.ok) { err.textContent = `Could not try it: ${r.error}`; err.hidden = false; return; }
      if (url) URL.revokeObjectURL(url);
      url = URL.createObjectURL(file);
      $("#try-image", root).src = url;
      const cam = $("#try-cam", root);
      cam.closest("figure").hidden = !r.data.overlay;
      if (r.data.overlay) cam.src = r.data.overlay;
      $("#try-label", root).textContent = r.data.label || "unknown";
      $("#try-score", root).textContent = typeof r.data.score === "number" ? `${pct(r.data.score, 0)} sure` : "";
      $("#try-topk", root).replaceChildren(...r.data.topk.map(([label, score]) => h("li", {},
        h("span", {class: "topk-label", text: label}),
        h("span", {class: "hbar"}, h("span", {style: `width:${(100 * score).toFixed(1)}%`})),
        h("span", {class: "topk-score", text: pct(score, 0)}))));
      $("#try-result", root).hidden = false;
    }
    input.addEventListener("change", () => { tryFile(input.files[0]); input.value = ""; });
    drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("over");
      tryFile(e.dataTransfer.files[0]);
    });
  }

  // ---- the review box of the label view ---------------------------------------------------------------------

  function initReview() {
    const cfgEl = $("#review-config");
    if (!cfgEl) return;
    const cfg = JSON.parse(cfgEl.textContent);
    const out = $("#review-pred");
    function show() {
      const p = cfg.preds[document.body.dataset.shown || ""];
      if (!p) { out.textContent = document.body.dataset.shown === "done" ? "All the images of this list are seen." : ""; return; }
      out.replaceChildren(`Run #${cfg.rid} answered `, h("strong", {text: p.predicted || "unknown"}),
        typeof p.confidence === "number" ? ` (${pct(p.confidence, 0)} sure)` : "",
        h("br"), h("span", {class: "muted", text: `labelled ${p.true} when it trained`}));
    }
    new MutationObserver(show).observe(document.body, {attributes: true, attributeFilter: ["data-shown"]});
    show();
  }

  function init() {
    initTrain();
    initRun();
    initReport(document);
    initReview();
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
