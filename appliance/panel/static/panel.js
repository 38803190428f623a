// lineguard operator panel: vanilla JS, no library. Each page's shell is rendered by the
// server (appliance/panel/pages.py); this file fills it from the JSON API.
"use strict";
(function () {
  const body = document.body;
  const page = body.dataset.page;
  const csrf = body.dataset.csrf;
  const SVG = "http://www.w3.org/2000/svg";
  const WORD = { pass: "PASS", fail: "FAIL", uninspected: "UNINSPECTED" };

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v; else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c);
    return node;
  }
  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    return node;
  }
  async function getJSON(url) {
    const r = await fetch(url, { credentials: "same-origin", cache: "no-store" });
    if (r.status === 401) { location.href = "/login?next=" + encodeURIComponent(location.pathname); }
    if (!r.ok) throw new Error(url + ": " + r.status);
    return r.json();
  }
  async function post(url, data) {
    const r = await fetch(url, { method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(data || {}) });
    const out = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(out.detail ? JSON.stringify(out.detail) : String(r.status));
    return out;
  }
  function time(s) { return s ? new Date(s * 1000).toLocaleString() : "–"; }
  function pct(v) { return v === null || v === undefined ? "–" : v.toFixed(1) + " %"; }

  // Boxes over a picture: a layer of boxes placed in percent of the picture's own pixel
  // size (so lines and labels keep their size on screen whatever the scale).
  function overlay(width, height, defects, extra) {
    const layer = el("div", { class: "overlay" });
    (defects || []).forEach((d, i) => {
      const [x1, y1, x2, y2] = d.box_xyxy;
      const box = el("div", { class: "box" + (extra ? " " + extra : "") });
      box.style.left = (100 * x1 / width) + "%";
      box.style.top = (100 * y1 / height) + "%";
      box.style.width = (100 * Math.max(1, x2 - x1) / width) + "%";
      box.style.height = (100 * Math.max(1, y2 - y1) / height) + "%";
      box.append(el("span", { class: "boxlabel", text: `${i + 1} ${d.class_name}` +
        (d.score !== undefined ? ` ${d.score.toFixed(2)}` : "") }));
      layer.append(box);
    });
    return layer;
  }

  // -------------------------------------------------------------- live view
  function live() {
    const root = document.getElementById("live");
    const cards = {};
    let seq = 0;
    function card(name) {
      if (cards[name]) return cards[name];
      const verdict = el("span", { class: "verdict" });
      const img = el("img", { alt: "latest frame of " + name });
      const view = el("div", { class: "frame-view" }, img);
      const list = el("ul", { class: "defects" });
      const info = el("p", { class: "muted" });
      const node = el("section", { class: "station", "data-station": name },
        el("header", {}, el("span", { class: "name", text: name }), verdict),
        el("div", { class: "row" }, view, el("div", { class: "side" }, list, info)));
      root.append(node);
      cards[name] = { node, verdict, img, view, list, info };
      return cards[name];
    }
    function show(data) {
      seq = Math.max(seq, data.seq);
      for (const [name, f] of Object.entries(data.stations)) {
        document.getElementById("live-empty").hidden = true;
        const c = card(name);
        c.node.className = "station " + f.verdict;
        c.node.dataset.frame = f.frame_id;
        c.verdict.className = "verdict " + f.verdict;
        c.verdict.textContent = WORD[f.verdict] + (f.reason ? ": " + f.reason : "");
        if (f.jpeg_b64) c.img.src = "data:image/jpeg;base64," + f.jpeg_b64;
        c.view.querySelector(".overlay")?.remove();
        if (f.width_px) c.view.append(overlay(f.width_px, f.height_px, f.defects));
        c.list.replaceChildren(...f.defects.map((d, i) =>
          el("li", { text: `${i + 1}. ${d.class_name} ${(100 * d.score).toFixed(0)} %` })));
        c.info.textContent = `${f.frame_id} · model ${f.model_version || "none"}`;
      }
    }
    // Server-sent events: one message per new frame (at most the live rate). Where
    // EventSource is missing, poll.
    if (window.EventSource) {
      const follow = () => {
        const source = new EventSource("/api/live/stream");
        source.onmessage = ev => show(JSON.parse(ev.data));
        source.onerror = () => {
          if (source.readyState !== EventSource.CLOSED) return;  // it reconnects itself
          // refused (session expired: getJSON goes to the login page), or gone: retry
          getJSON("/api/session").catch(() => {}).finally(() => setTimeout(follow, 2000));
        };
      };
      follow();
    } else {
      const tick = async () => {
        try { show(await getJSON("/api/live?after=" + seq)); } catch (e) { /* retried */ }
        setTimeout(tick, 100);
      };
      tick();
    }
  }

  // -------------------------------------------------------------- counters and charts
  function counterTable(c) {
    const rows = [["Parts", c.parts], ["Pass", c.passed], ["Fail", c.failed],
                  ["Uninspected", c.uninspected], ["Yield", pct(c.yield_pct)]];
    for (const [r, n] of Object.entries(c.uninspected_by_reason)) rows.push(["  uninspected: " + r, n]);
    for (const [k, n] of Object.entries(c.defects_by_class)) rows.push(["Defects: " + k, n]);
    return el("table", {}, ...rows.map(([k, v]) =>
      el("tr", { "data-key": k }, el("td", { text: k }), el("td", { class: "num", text: String(v) }))));
  }
  function chart(target, points, series) {
    const W = 720, H = 200, P = 36;
    const all = points.flatMap(p => series.map(s => p[s.key])).filter(v => v !== null);
    const max = Math.max(1e-9, ...all) * 1.1;
    const s = svg("svg", { viewBox: `0 0 ${W} ${H}` });
    s.append(svg("line", { class: "axis", x1: P, y1: H - 20, x2: W, y2: H - 20 }));
    s.append(svg("line", { class: "axis", x1: P, y1: 5, x2: P, y2: H - 20 }));
    const top = svg("text", { x: 2, y: 14 }); top.textContent = max.toPrecision(3); s.append(top);
    const left = svg("text", { x: P, y: H - 4 }); left.textContent = "-60 min"; s.append(left);
    const right = svg("text", { x: W - 40, y: H - 4 }); right.textContent = "now"; s.append(right);
    const n = Math.max(1, points.length - 1);
    for (const ser of series) {
      let d = "";
      points.forEach((p, i) => {
        const v = p[ser.key];
        if (v === null) return;
        const x = P + (W - P) * i / n, y = (H - 20) - (H - 25) * v / max;
        d += (d ? " L" : "M") + x.toFixed(1) + " " + y.toFixed(1);
      });
      if (d) s.append(svg("path", { class: ser.cls, d }));
      const lab = svg("text", { x: W - 150, y: 14 + 14 * series.indexOf(ser) }); lab.textContent = ser.label;
      lab.setAttribute("class", ser.cls + "-label"); s.append(lab);
    }
    target.replaceChildren(s);
  }
  function counters() {
    async function tick() {
      try {
        const c = await getJSON("/api/counters");
        document.getElementById("shift-title").textContent =
          `Shift ${c.shift.name} (since ${new Date(c.shift.start_s * 1000).toLocaleTimeString()})`;
        document.getElementById("shift").replaceChildren(counterTable(c.shift));
        document.getElementById("hour").replaceChildren(counterTable(c.last_hour));
        const s = await getJSON("/api/series");
        chart(document.getElementById("chart-rate"), s.points,
              [{ key: "per_s", cls: "l1", label: "parts/s" }]);
        chart(document.getElementById("chart-latency"), s.points,
              [{ key: "p50_ms", cls: "l1", label: "p50 ms" }, { key: "p99_ms", cls: "l2", label: "p99 ms" }]);
      } catch (e) { /* retried */ }
      setTimeout(tick, 1000);
    }
    tick();
  }

  // -------------------------------------------------------------- gallery
  async function gallery() {
    const form = document.getElementById("filters");
    const grid = document.getElementById("gallery");
    const more = document.getElementById("more");
    const model = await getJSON("/api/model").catch(() => ({}));
    const classes = model.active ? model.active.classes : [];
    for (const c of classes) form.elements["class"].append(el("option", { value: c, text: c }));
    const live = await getJSON("/api/live").catch(() => ({ stations: {} }));
    for (const s of Object.keys(live.stations)) form.elements.station.append(el("option", { value: s, text: s }));
    let before = null;
    async function load(reset) {
      const q = new URLSearchParams();
      const f = new FormData(form);
      if (f.get("class")) q.set("class", f.get("class"));
      if (f.get("station")) q.set("station", f.get("station"));
      if (f.get("since")) q.set("since", String(Date.now() / 1000 - Number(f.get("since"))));
      if (!reset && before) q.set("before", before);
      const data = await getJSON("/api/gallery?" + q);
      if (reset) grid.replaceChildren();
      for (const it of data.items) {
        const pic = it.has_image ? el("img", { src: `/api/frames/${encodeURIComponent(it.frame_id)}/image`,
                                               alt: it.frame_id, loading: "lazy" })
                                 : el("div", { class: "noimg muted", text: "no image kept" });
        grid.append(el("a", { class: "card", href: "/frame/" + encodeURIComponent(it.frame_id),
                              "data-frame": it.frame_id },
          pic, el("div", { text: "FAIL · " + it.classes.join(", ") }),
          el("div", { class: "muted", text: `${it.station} · ${time(it.judged_at)}` })));
      }
      if (!data.items.length && reset) grid.append(el("p", { class: "muted", text: "No failures match." }));
      before = data.next_before;
      more.hidden = !before;
    }
    form.addEventListener("submit", ev => { ev.preventDefault(); load(true); });
    more.addEventListener("click", () => load(false));
    load(true);
  }

  // -------------------------------------------------------------- frame detail + feedback
  async function frame() {
    const id = document.getElementById("frame-id").textContent;
    const view = document.getElementById("frame-view");
    const info = document.getElementById("frame-info");
    const msg = document.getElementById("frame-msg");
    const missed = document.getElementById("missed");
    let f, box = null, start = null;  // start: where a drag began (picture pixels)
    async function refresh() {
      f = await getJSON("/api/frames/" + encodeURIComponent(id));
      document.getElementById("labels").replaceChildren(el("table", {},
        ...f.labels.map(l => el("tr", {}, el("td", { text: l.kind }),
          el("td", { text: l.defect_index !== null && l.defect_index !== undefined ? "#" + (l.defect_index + 1) : (l.class_name || "") }),
          el("td", { text: l.author || "" })))));
    }
    await refresh();
    const img = el("img", { alt: "frame " + id });
    view.append(img);
    const sel = document.getElementById("missed-class");
    for (const c of f.classes) sel.append(el("option", { value: c, text: c }));
    function draw() {
      view.querySelector(".overlay")?.remove();
      const W = img.naturalWidth, H = img.naturalHeight;
      const s = overlay(W, H, f.defects);
      const marked = f.labels.filter(l => l.kind === "missed" && l.box_xyxy)
        .map(l => ({ class_name: "missed " + l.class_name, box_xyxy: l.box_xyxy }));
      for (const m of overlay(W, H, marked, "missed").children) s.append(m);
      if (box) {
        const b = [Math.min(box[0], box[2]), Math.min(box[1], box[3]), Math.max(box[0], box[2]), Math.max(box[1], box[3])];
        for (const m of overlay(W, H, [{ class_name: "new", box_xyxy: b }], "drawing").children) s.append(m);
      }
      view.append(s);
      const toImage = ev => {
        const r = s.getBoundingClientRect();
        return [Math.min(W, Math.max(0, (ev.clientX - r.left) * W / r.width)),
                Math.min(H, Math.max(0, (ev.clientY - r.top) * H / r.height))];
      };
      s.addEventListener("pointerdown", ev => { start = toImage(ev); ev.preventDefault(); });
      s.addEventListener("pointermove", ev => {
        if (!start) return;
        box = [...start, ...toImage(ev)];
        draw();
      });
      s.addEventListener("pointerup", () => { start = null; if (box) missed.hidden = false; });
    }
    if (f.has_image) {
      img.addEventListener("load", draw);
      img.src = "/api/frames/" + encodeURIComponent(id) + "/image";
    } else {
      view.append(el("p", { class: "muted", text: "The image of this frame is not kept." }));
    }
    const verdict = el("span", { class: "verdict " + f.verdict, text: WORD[f.verdict] + (f.reason ? ": " + f.reason : "") });
    const rows = el("table", {},
      ...[["Station", f.station], ["Part", f.part_id || "–"], ["Judged", time(f.judged_at)],
          ["Model version", f.model_version || "–"], ["Preprocessing hash", f.preprocess_hash || "–"],
          ["Latency", f.total_ms !== null ? f.total_ms.toFixed(1) + " ms" : "–"]]
        .map(([k, v]) => el("tr", {}, el("th", { text: k }), el("td", { text: v, "data-key": k }))));
    const dets = el("table", { id: "detections" }, ...f.defects.map((d, i) => el("tr", { "data-index": String(i) },
      el("td", { text: `${i + 1}. ${d.class_name} ${(100 * d.score).toFixed(0)} %` +
        (d.size_mm_wh ? ` · ${d.size_mm_wh[0].toFixed(1)} × ${d.size_mm_wh[1].toFixed(1)} mm` : "") }),
      el("td", {}, el("button", { type: "button", class: "confirm", "data-index": String(i), text: "Confirm" })),
      el("td", {}, el("button", { type: "button", class: "reject", "data-index": String(i), text: "Reject" })))));
    info.replaceChildren(verdict, rows, el("h2", { text: "Detections" }), dets);
    dets.addEventListener("click", async ev => {
      const b = ev.target.closest("button");
      if (!b) return;
      const kind = b.classList.contains("confirm") ? "confirm" : "reject";
      try {
        await post(`/api/frames/${encodeURIComponent(id)}/labels`, { kind, defect_index: Number(b.dataset.index) });
        msg.textContent = `Saved: ${kind} detection ${Number(b.dataset.index) + 1}`;
        await refresh();
      } catch (e) { msg.textContent = "Not saved: " + e.message; }
    });
    document.getElementById("missed-cancel").addEventListener("click", () => { box = null; missed.hidden = true; draw(); });
    document.getElementById("missed-save").addEventListener("click", async () => {
      const b = [Math.min(box[0], box[2]), Math.min(box[1], box[3]), Math.max(box[0], box[2]), Math.max(box[1], box[3])]
        .map(v => Math.round(v * 10) / 10);
      try {
        await post(`/api/frames/${encodeURIComponent(id)}/labels`, { kind: "missed", class_name: sel.value, box_xyxy: b });
        msg.textContent = `Saved: missed ${sel.value}`;
        box = null; missed.hidden = true;
        await refresh(); draw();
      } catch (e) { msg.textContent = "Not saved: " + e.message; }
    });
  }

  // -------------------------------------------------------------- alarms
  function alarmRow(a, ackable) {
    a.active = a.cleared_at_s === null || a.cleared_at_s === undefined;
    const state = a.active ? "ACTIVE" : "cleared " + time(a.cleared_at_s);
    const ack = a.acked_at_s ? `acknowledged by ${a.acked_by} at ${time(a.acked_at_s)}` : "not acknowledged";
    const node = el("div", { class: "alarm" + (a.active ? "" : " cleared") + (a.acked_at_s ? " acked" : ""), "data-alarm": String(a.id), "data-code": a.code },
      el("span", { class: "code", text: a.code }),
      el("span", { class: "msg", text: `${a.message} (${a.station || "line"}) · raised ${time(a.raised_at_s)} · ${state} · ${ack}` }));
    if (ackable && !a.acked_at_s) {
      const b = el("button", { type: "button", class: "ack", text: "Acknowledge" });
      b.addEventListener("click", async () => {
        try { await post(`/api/alarms/${a.id}/ack`); alarms(); } catch (e) { b.textContent = "Failed: " + e.message; }
      });
      node.append(b);
    }
    return node;
  }
  async function alarms() {
    const data = await getJSON("/api/alarms");
    const cur = document.getElementById("alarms-current");
    cur.replaceChildren(...(data.current.length ? data.current.map(a => alarmRow(a, true))
                                                : [el("p", { class: "muted", text: "No alarms." })]));
    document.getElementById("alarms-history").replaceChildren(...data.history.map(a => alarmRow(a, false)));
  }
  async function badge() {
    const b = document.getElementById("alarm-badge");
    if (!b) return;
    try {
      const data = await getJSON("/api/alarms?limit=1");
      const n = data.current.filter(a => !a.acked_at_s).length;
      b.hidden = n === 0; b.textContent = `${n} ALARM${n === 1 ? "" : "S"}`;
    } catch (e) { /* retried */ }
    setTimeout(badge, 2000);
  }

  // -------------------------------------------------------------- model
  async function model() {
    const m = await getJSON("/api/model");
    const root = document.getElementById("model");
    if (!m.active) { root.replaceChildren(el("p", { class: "error", text: "No model is active: parts are uninspected." })); }
    else {
      const a = m.active;
      const rows = [["Active bundle", a.version_id], ["Label", a.label], ["Classes", a.classes.join(", ")],
        ["Preprocessing hash", a.preprocess_hash], ["Providers", a.providers.join(", ")],
        ["Dataset", a.lineage.dataset_fingerprint || "–"], ["Parent version", String(a.lineage.parent_version ?? "–")],
        ["Code revision", a.lineage.code_revision || "–"], ["Created", a.lineage.created_at]];
      if (a.metrics) rows.push(["mAP50", String(a.metrics.map50 ?? "–")], ["Precision", String(a.metrics.precision)],
                               ["Recall", String(a.metrics.recall)], ["Evaluated on", a.metrics.dataset]);
      root.replaceChildren(el("table", {}, ...rows.map(([k, v]) => el("tr", {}, el("th", { text: k }), el("td", { text: v })))));
      const th = document.getElementById("thresholds");
      if (th) th.replaceChildren(...Object.entries(a.thresholds).map(([c, t]) =>
        el("label", {}, `${c} (bundle ${t.bundle}) `, el("input", { type: "number", step: "0.01", min: "0", max: "1",
          name: c, value: String(t.override ?? t.bundle) }))));
    }
    const hist = document.getElementById("model-history");
    hist.replaceChildren(el("table", {}, ...m.history.map(e => el("tr", {}, el("td", { text: time(e.at) }),
      el("td", { text: e.kind }), el("td", { text: e.message })))));
    const rb = document.getElementById("rollback-to");
    if (rb) {
      rb.textContent = m.rollback_to ? "Roll back to " + m.rollback_to : "No previous bundle to roll back to.";
      document.getElementById("rollback").disabled = !m.rollback_to;
    }
  }
  function engineer() {
    const form = document.getElementById("thresholds-form");
    if (!form) return;
    const msg = document.getElementById("engineer-msg");
    form.addEventListener("submit", async ev => {
      ev.preventDefault();
      const values = {};
      for (const input of form.querySelectorAll("input")) values[input.name] = Number(input.value);
      try { await post("/api/thresholds", { thresholds: values }); msg.textContent = "Thresholds applied."; model(); }
      catch (e) { msg.textContent = "Not applied: " + e.message; }
    });
    document.getElementById("rollback").addEventListener("click", async () => {
      try { const r = await post("/api/rollback"); msg.textContent = "Rolled back to " + r.active; model(); }
      catch (e) { msg.textContent = "Rollback refused: " + e.message; }
    });
  }

  const pages = { live, counters, gallery, frame, alarms: () => { alarms(); setInterval(alarms, 2000); }, model: () => { model(); engineer(); } };
  if (pages[page]) pages[page]();
  if (page !== "login") badge();
})();
