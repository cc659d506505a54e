// varsitysrch web page: plain JavaScript, no framework, no build step, no network access
// beyond this server.  Views are chosen by the URL hash:
//   #search              upload / drop / paste a photo
//   #id=<image id>       more like a catalogue image (the image itself is left out)
//   #clusters            every cluster with a few samples
//   #cluster=<c>&offset=<n>  a cluster's members, most typical first (as in the report), paged
// Search options are the elements with data-param inside #options (see index.html): their
// values are sent as query parameters, and changing one re-runs the current search.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const PAGE = 24;
  const SMALL_SCREEN = "(max-width: 700px)";
  let info = { max_upload_bytes: 20 * 1024 * 1024, search_by_image: true, clusters: null };
  let inflight = null;      // AbortController of the running search
  let previewUrl = null;    // object URL of the uploaded query
  let current = null;       // the search on screen: {kind: "upload", file} or {kind: "id", id}
  let marks = { pos: [], neg: [] };  // "more like this" / "less like this" on the search on screen
  let clusterView = 0;      // bumped by each clusters view: a late answer for an older one is dropped

  // ------------------------------------------------------------------ helpers
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "class") e.className = v;
      else if (k === "dataset") Object.assign(e.dataset, v);
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const c of children) {
      if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
    }
    return e;
  }

  function setStatus(node, text, kind, code) {
    node.textContent = text || "";
    node.className = "status" + (kind ? " " + kind : "");
    if (code) node.dataset.code = String(code);
    else delete node.dataset.code;
  }

  // A size never wraps inside itself ("22 KB", not "2 / 2 KB"): a no-break space before the unit.
  function fmtBytes(n) {
    if (n >= 1024 * 1024) return (n / 1024 / 1024).toFixed(1) + "\u00a0MB";
    if (n >= 1024) return (n / 1024).toFixed(0) + "\u00a0KB";
    return n + "\u00a0bytes";
  }

  // An image that cannot be shown becomes a plain "no preview" box, never a broken-image icon.
  function safeImg(attrs) {
    const img = el("img", { loading: "lazy", ...attrs });
    img.addEventListener("error", () => {
      const box = el("span", { class: "noimg", role: "img", "aria-label": "no preview" }, "no preview");
      img.replaceWith(box);
    }, { once: true });
    return img;
  }

  // ------------------------------------------------------------------ messages in the page's words
  function controls() {
    return [...$("options").querySelectorAll("[data-param]")];
  }

  function labelOf(param) {
    const c = controls().find((x) => x.dataset.param === param);
    if (c) return c.dataset.label;
    return { image: "The photo", image_id: "The catalogue image", offset: "Page", limit: "Page size",
      where: "A filter" }[param] || null;
  }

  function rangeText(label, lo, hi) {
    return `${label} must be between ${lo} and ${hi}.`;
  }

  // "nprobe must be in [1, k] = [1, 4]; got 99"  ->  "Clusters to scan must be between 1 and 4."
  function friendly(detail) {
    if (Array.isArray(detail)) {  // FastAPI validation errors: [{loc, msg}, ...]
      return detail.map((d) => {
        const label = labelOf(d.loc ? d.loc[d.loc.length - 1] : "") || "A value";
        return `${label}: ${String(d.msg || "is not valid").replace(/^Input should be /, "should be ")}.`;
      }).join(" ");
    }
    const text = String(detail || "");
    const m = text.match(/^(\w+) must be\b(.*)$/);
    if (m) {
      const label = labelOf(m[1]);
      if (label) {
        const ranges = [...m[2].matchAll(/\[(\d+), (\d+)\]/g)];
        if (ranges.length) {
          const r = ranges[ranges.length - 1];
          return rangeText(label, r[1], r[2]);
        }
        return `${label} must be${m[2].replace(/; got .*$/, "")}.`;
      }
    }
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  async function failure(resp) {
    let detail = "";
    try {
      detail = (await resp.json()).detail;
    } catch (_) { /* not JSON */ }
    const words = {
      413: `That file is too large (the limit is ${fmtBytes(info.max_upload_bytes)}).`,
      503: "The server is busy right now; try again in a moment.",
    }[resp.status];
    return { status: resp.status, text: words || friendly(detail) || resp.statusText || "Request failed." };
  }

  async function getJSON(url) {
    const resp = await fetch(url, { headers: { Accept: "application/json" } });
    if (!resp.ok) {
      const f = await failure(resp);
      throw Object.assign(new Error(f.text), { status: f.status });
    }
    return resp.json();
  }

  // ------------------------------------------------------------------ views
  function show(view) {
    $("search-view").hidden = view !== "search";
    $("clusters-view").hidden = view !== "clusters";
    $("nav-search").classList.toggle("active", view === "search");
    $("nav-clusters").classList.toggle("active", view === "clusters");
  }

  function route() {
    const h = location.hash.replace(/^#/, "");
    const params = new URLSearchParams(h.includes("=") ? h : "");
    if (params.has("id")) {
      show("search");
      searchById(params.get("id"));
    } else if (params.has("cluster")) {
      show("clusters");
      showCluster(params.get("cluster"), parseInt(params.get("offset") || "0", 10));
    } else if (h === "clusters") {
      show("clusters");
      showClusters();
    } else {
      show("search");
    }
  }

  function goSearchId(id) {
    const target = "#id=" + encodeURIComponent(id);
    if (location.hash === target) searchById(id);  // same hash: no hashchange event
    else location.hash = target;
  }

  // ------------------------------------------------------------------ search options
  // Checked in the page first, so a wrong value gets a message in the page's words at once.
  function options() {
    const p = new URLSearchParams();
    for (const c of controls()) {
      if (c.type === "checkbox") {
        if (c.checked) p.set(c.dataset.param, "true");
        continue;
      }
      const v = String(c.value).trim();
      if (!v) continue;
      if (c.type === "number") {
        const lo = c.min === "" ? -Infinity : Number(c.min);
        const hi = c.max === "" ? Infinity : Number(c.max);
        const n = Number(v);
        if (!Number.isInteger(n) || n < lo || n > hi) {
          throw new Error(Number.isFinite(hi) ? rangeText(c.dataset.label, lo, hi)
            : `${c.dataset.label} must be a whole number of at least ${lo}.`);
        }
      }
      p.set(c.dataset.param, v);
    }
    for (const cond of filterConditions()) p.append("where", cond);
    return p;
  }

  // ------------------------------------------------------------------ filters (from GET /attributes)
  function csvCell(v) {  // a where value: a CSV cell, quoted when it holds a comma, quote or edge space
    return /[",]|^\s|\s$/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v;
  }

  function filterConditions() {
    const out = [];
    for (const c of $("filters").querySelectorAll("[data-where]")) {
      const v = String(c.value).trim();
      if (!v) continue;
      const col = c.dataset.where;
      if (c.dataset.bound) {
        if (!Number.isFinite(Number(v))) throw new Error(`${col}: "${v}" is not a number.`);
        out.push(`${col}${c.dataset.bound === "min" ? ">=" : "<="}${v}`);
      } else {
        out.push(`${col}=${csvCell(v)}`);
      }
    }
    return out;
  }

  function buildFilters(columns) {
    const box = $("filters");
    const controls = columns.map((col) => {
      const label = el("label", { class: "control" }, col.name);
      if (col.kind === "number") {
        const lo = el("input", { type: "text", inputmode: "decimal", placeholder: col.min === null ? "min" : `≥ ${col.min}`,
          dataset: { where: col.name, bound: "min" }, "aria-label": col.name + " from" });
        const hi = el("input", { type: "text", inputmode: "decimal", placeholder: col.max === null ? "max" : `≤ ${col.max}`,
          dataset: { where: col.name, bound: "max" }, "aria-label": col.name + " to" });
        label.append(el("span", { class: "range" }, lo, hi));
      } else if (col.kind === "bool") {
        label.append(el("select", { dataset: { where: col.name } },
          el("option", { value: "" }, "any"), el("option", { value: "true" }, "yes"), el("option", { value: "false" }, "no")));
      } else if ((col.values || []).length <= 50 && (col.distinct || 0) <= 50) {
        label.append(el("select", { dataset: { where: col.name } }, el("option", { value: "" }, "any"),
          ...(col.values || []).map(([v, n]) => el("option", { value: v }, `${v} (${n})`))));
      } else {
        const listId = "values-" + col.name;
        label.append(el("input", { type: "text", list: listId, placeholder: "any", dataset: { where: col.name } }),
          el("datalist", { id: listId }, ...(col.values || []).map(([v]) => el("option", { value: v }))));
      }
      return label;
    });
    box.replaceChildren(el("legend", {}, "Filters"), ...controls);
    box.hidden = controls.length === 0;
  }

  // Re-run the search on screen when an option changed since it ran (a "change" that follows
  // the debounced "input" of a number field, or a blur, is not a second search).
  function rerun() {
    if (!current) return;
    let now;
    try {
      now = options().toString();
    } catch (_) {
      now = null;  // let the search show the message
    }
    if (now !== null && now === current.applied) return;
    if (marks.pos.length || marks.neg.length) searchFeedback();
    else if (current.kind === "upload") searchFile(current.file);
    else searchById(current.id);
  }

  // ------------------------------------------------------------------ feedback
  function resetMarks() {
    marks = { pos: [], neg: [] };
    $("feedback").hidden = true;
  }

  function mark(id, kind) {
    const other = kind === "pos" ? "neg" : "pos";
    marks[other] = marks[other].filter((x) => x !== id);
    marks[kind] = marks[kind].includes(id) ? marks[kind].filter((x) => x !== id) : [...marks[kind], id];
    if (marks.pos.length || marks.neg.length) searchFeedback();
    else if (current && current.kind === "upload") searchFile(current.file);
    else if (current) searchById(current.id);
  }

  async function searchFeedback() {
    if (!current) return;
    const form = new FormData();
    if (current.kind === "upload") form.append("image", current.file, current.file.name || "upload");
    else form.append("image_id", current.id);
    for (const id of marks.pos) form.append("positive", id);
    for (const id of marks.neg) form.append("negative", id);
    const n = (k) => `${marks[k].length}`;
    $("feedback-text").textContent = `Refined: ${n("pos")} more like, ${n("neg")} less like (judged items are not shown again).`;
    $("feedback").hidden = false;
    const label = (current.kind === "upload" ? "upload:" + (current.file.name || "") : "id:" + current.id)
      + `+feedback:${marks.pos.length}/${marks.neg.length}`;
    await runSearch("search/feedback?", { method: "POST", body: form }, label, current.kind === "upload");
  }

  // ------------------------------------------------------------------ search
  function beginSearch() {
    if (inflight) inflight.abort();
    inflight = new AbortController();
    return inflight.signal;
  }

  function showQuery(src, caption) {
    $("query").hidden = false;
    const frame = $("query").querySelector(".query-frame");
    frame.replaceChildren(safeImg({ id: "query-img", src, alt: "query image" }));
    $("query-caption").textContent = caption;
  }

  function clearResults(label) {
    const results = $("results");
    results.replaceChildren();
    results.dataset.query = label;
    results.removeAttribute("aria-busy");
  }

  function showError(text, code) {
    setStatus($("status"), text, "error", code);
    clearResults("error");
  }

  // Skeleton cards while a search runs, so the layout does not jump when results arrive.
  function placeholders(n) {
    const cards = [];
    for (let i = 0; i < Math.min(n, 20); i++) {
      cards.push(el("li", { class: "card skeleton", "aria-hidden": "true" },
        el("div", { class: "thumb" }), el("div", { class: "line" }), el("div", { class: "line short" })));
    }
    const results = $("results");
    results.replaceChildren(...cards);
    results.dataset.query = "loading";
    results.setAttribute("aria-busy", "true");
  }

  // On a phone the results start below the fold: bring the query and results into view.
  function reveal() {
    if (!window.matchMedia(SMALL_SCREEN).matches) return;
    const q = $("query");
    (q.hidden ? $("status") : q).scrollIntoView({ block: "start", behavior: "auto" });
  }

  async function searchFile(file) {
    if (!file) return;
    show("search");
    if (file.size > info.max_upload_bytes) {
      $("query").hidden = true;
      return showError(`That file is ${fmtBytes(file.size)}; the limit is ${fmtBytes(info.max_upload_bytes)}.`, 413);
    }
    if (!info.search_by_image) {
      $("query").hidden = true;
      return showError("This catalogue cannot search with new photos; click a catalogue image instead.", 501);
    }
    if (!current || current.file !== file) resetMarks();
    current = { kind: "upload", file };
    if (location.hash && location.hash !== "#search") history.pushState(null, "", "#search");
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    showQuery(previewUrl, `${file.name || "pasted image"} · ${fmtBytes(file.size)}`);
    const form = new FormData();
    form.append("image", file, file.name || "upload");
    await runSearch("search?", { method: "POST", body: form }, "upload:" + (file.name || ""), true);
  }

  async function searchById(id) {
    if (!id) return;
    if (!current || current.id !== id) resetMarks();
    current = { kind: "id", id };
    showQuery("thumbnails/" + id.split("/").map(encodeURIComponent).join("/"), id);
    await runSearch("search?", { method: "GET" }, "id:" + id, false, { image_id: id, include_self: "false" });
  }

  async function runSearch(url, init, label, isUpload, extra) {
    const status = $("status");
    let p;
    try {
      p = options();
    } catch (err) {
      return showError(err.message, 422);
    }
    if (current) current.applied = p.toString();
    for (const [k, v] of Object.entries(extra || {})) p.set(k, v);
    const signal = beginSearch();
    setStatus(status, "Searching…", "busy");
    placeholders(Number(p.get("top_n")) || 10);
    reveal();
    try {
      const resp = await fetch(url + p.toString(), { ...init, signal, headers: { Accept: "application/json" } });
      if (!resp.ok) {
        const f = await failure(resp);
        if (isUpload && [413, 415, 422].includes(f.status)) $("query").hidden = true;  // nothing to show
        return showError(f.text, f.status);
      }
      const data = await resp.json();
      renderHits(data);
      $("results").dataset.query = label;
      const scan = data.exact ? "all clusters" : `${data.nprobe} cluster${data.nprobe === 1 ? "" : "s"}`;
      const n = data.hits.length;
      // calibrated models mark each hit close or not: say so when nothing is close
      const noClose = n > 0 && data.hits.every((h) => h.close === false);
      const none = noClose ? " No close match in the catalogue: these are only loosely related." : "";
      setStatus(status, `${n} result${n === 1 ? "" : "s"} in ${Math.round(data.took_ms)} ms (scanned ${scan}).${none}`);
      $("results").dataset.close = noClose ? "none" : "some";
    } catch (err) {
      if (err.name === "AbortError") return;
      showError("The search could not reach the server: " + err.message, 0);
    } finally {
      if (!signal.aborted) $("results").removeAttribute("aria-busy");
    }
  }

  function card(item, extra) {
    const img = safeImg({ src: item.thumbnail_url, alt: item.image });
    const button = el("button", {
      type: "button", class: "thumb", title: "More like this",
      onclick: () => goSearchId(item.image),
    }, img);
    const name = el("div", { class: "name", title: item.image }, item.image);
    const more = el("button", { type: "button", class: "more", onclick: () => goSearchId(item.image) }, "Search with this");
    const open = el("a", { class: "open", href: item.url, target: "_blank", rel: "noopener" }, "full size ↗");
    return el("li", { class: "card", dataset: { id: item.image, ...(extra.dataset || {}) } },
      button, ...(extra.children || []), name, el("div", { class: "actions" }, more, open));
  }

  function renderHits(data) {
    const cards = data.hits.map((h) => {
      const pct = Math.max(0, Math.min(1, h.score)) * 100;
      const meta = el("div", { class: "meta" },
        el("span", { class: "rank" }, "#" + h.rank),
        el("span", { class: "score", title: "cosine similarity" }, h.score.toFixed(3)),
        ...(h.match ? [el("span", {
          class: "match " + (h.close ? "close" : "loose"),
          title: `confidence ${Math.round(100 * h.confidence)} %: compared with how close catalogue items are to each other`,
        }, h.match)] : []),
        el("a", { class: "cluster", href: "#cluster=" + h.cluster }, "cluster " + h.cluster));
      const fill = el("span");
      fill.style.width = pct.toFixed(1) + "%";  // CSSOM, allowed by the page's CSP (no inline styles)
      const bar = el("div", { class: "bar" }, fill);
      const judge = el("div", { class: "judge" },
        el("button", { type: "button", class: "like", "aria-pressed": String(marks.pos.includes(h.image)),
          onclick: () => mark(h.image, "pos") }, "More like this"),
        el("button", { type: "button", class: "less", "aria-pressed": String(marks.neg.includes(h.image)),
          onclick: () => mark(h.image, "neg") }, "Less like this"));
      const extra = [meta, bar, judge];
      const attrs = Object.entries(h.attributes || {});
      if (attrs.length) {
        extra.push(el("div", { class: "attrs", title: attrs.map(([k, v]) => `${k}: ${v}`).join("\n") },
          attrs.slice(0, 4).map(([, v]) => String(v)).join(" · ")));
      }
      if (h.duplicates && h.duplicates.length) {
        const n = h.duplicates.length;
        extra.push(el("div", { class: "dups", title: h.duplicates.map((d) => d.image).join("\n") },
          `+${n} near-identical photo${n === 1 ? "" : "s"}`));
      }
      return card(h, {
        dataset: { rank: String(h.rank), score: String(h.score), cluster: String(h.cluster),
          dups: String((h.duplicates || []).length) },
        children: extra,
      });
    });
    $("results").replaceChildren(...cards);
  }

  // ------------------------------------------------------------------ clusters
  async function showClusters() {
    const mine = ++clusterView;
    $("cluster-detail").hidden = true;
    const list = $("cluster-list");
    list.hidden = false;
    const status = $("cluster-status");
    setStatus(status, "Loading clusters…", "busy");
    list.replaceChildren(...Array.from({ length: 4 }, () => el("div", { class: "cluster-card skeleton" },
      el("div", { class: "samples" }, el("div", { class: "thumb" })), el("div", { class: "line" }))));
    try {
      const data = await getJSON("clusters?sample=4");
      if (mine !== clusterView) return;
      const items = data.clusters.map((c) =>
        el("a", { class: "cluster-card", href: `#cluster=${c.id}`, dataset: { cluster: String(c.id) } },
          el("div", { class: "samples" },
            ...c.sample.map((m) => safeImg({ src: m.thumbnail_url, alt: m.image }))),
          el("div", { class: "cluster-name" }, `Cluster ${c.id}`),
          el("div", { class: "cluster-size" }, `${c.size} image${c.size === 1 ? "" : "s"}`)));
      list.replaceChildren(...items);
      setStatus(status, `${data.k} clusters, ${data.images} images. Each shows its most typical photos first.`);
    } catch (err) {
      if (mine !== clusterView) return;
      list.replaceChildren();
      setStatus(status, err.message, "error", err.status);
    }
  }

  async function showCluster(raw, offset) {
    const mine = ++clusterView;
    const c = Number(raw);
    const status = $("cluster-status");
    $("cluster-list").hidden = true;
    const detail = $("cluster-detail");
    const k = info.clusters;
    const badCluster = () => {  // no stale title, pager or members from the cluster shown before
      detail.hidden = true;
      $("members").replaceChildren();
      const range = k ? ` This catalogue has clusters 0 to ${k - 1}.` : "";
      setStatus(status, `There is no cluster ${String(raw).slice(0, 20)}.${range}`, "error", 404);
    };
    if (!Number.isInteger(c) || c < 0 || (k && c >= k)) return badCluster();
    offset = Number.isFinite(offset) && offset > 0 ? offset : 0;
    detail.hidden = false;
    $("cluster-title").textContent = `Cluster ${c}`;
    $("page-info").textContent = "";
    $("members").replaceChildren(...Array.from({ length: 6 }, () =>
      el("li", { class: "card skeleton", "aria-hidden": "true" }, el("div", { class: "thumb" }))));
    setStatus(status, "Loading…", "busy");
    try {
      const data = await getJSON(`clusters/${c}?offset=${offset}&limit=${PAGE}`);
      if (mine !== clusterView) return;
      $("cluster-title").textContent = `Cluster ${data.id} · ${data.size} images`;
      const last = Math.min(data.offset + data.members.length, data.size);
      $("page-info").textContent = data.members.length ? `${data.offset + 1}–${last} of ${data.size}` : "no images here";
      const prev = $("prev");
      const next = $("next");
      prev.disabled = data.prev_offset === null;
      next.disabled = data.next_offset === null;
      prev.onclick = () => { location.hash = `cluster=${c}&offset=${data.prev_offset}`; };
      next.onclick = () => { location.hash = `cluster=${c}&offset=${data.next_offset}`; };
      $("members").replaceChildren(...data.members.map((m) => card(m, {})));
      $("members").dataset.cluster = String(c);
      setStatus(status, "");
    } catch (err) {
      if (mine !== clusterView) return;
      if (err.status === 404) return badCluster();
      detail.hidden = true;
      $("members").replaceChildren();
      setStatus(status, err.message, "error", err.status);
    }
  }

  // ------------------------------------------------------------------ wiring
  function wire() {
    const drop = $("drop");
    const file = $("file");
    file.addEventListener("change", () => {
      if (file.files && file.files[0]) searchFile(file.files[0]);
      file.value = "";  // choosing the same file again still fires "change"
    });
    for (const ev of ["dragenter", "dragover"]) {
      drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
    }
    for (const ev of ["dragleave", "dragend"]) {
      drop.addEventListener(ev, () => drop.classList.remove("over"));
    }
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("over");
      const f = e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files[0];
      if (f) searchFile(f);
      else setStatus($("status"), "Drop an image file (from your computer).", "error");
    });
    // dropping outside the zone must not navigate away from the page
    window.addEventListener("dragover", (e) => e.preventDefault());
    window.addEventListener("drop", (e) => e.preventDefault());
    drop.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); file.click(); }
    });
    document.addEventListener("paste", (e) => {
      const items = (e.clipboardData && e.clipboardData.files) || [];
      for (const f of items) {
        if (f.type.startsWith("image/")) { searchFile(f); break; }
      }
    });
    const opts = $("options");
    opts.addEventListener("change", rerun);  // any option: the current search again
    let typing = null;
    opts.addEventListener("input", (e) => {  // number fields: once the typing pauses
      if (e.target.type !== "number") return;
      clearTimeout(typing);
      typing = setTimeout(rerun, 600);
    });
    opts.addEventListener("submit", (e) => { e.preventDefault(); rerun(); });
    opts.addEventListener("input", (e) => {  // filter text boxes: once the typing pauses
      if (!e.target.dataset || !e.target.dataset.where || e.target.tagName !== "INPUT") return;
      clearTimeout(typing);
      typing = setTimeout(rerun, 600);
    });
    $("feedback-clear").addEventListener("click", () => {
      resetMarks();
      if (current && current.kind === "upload") searchFile(current.file);
      else if (current) searchById(current.id);
    });
    window.addEventListener("hashchange", route);
  }

  async function init() {
    wire();
    try {
      info = await getJSON("healthz");
      const by = info.extractor ? ` · ${info.extractor}` : "";
      $("stats").textContent = `${info.images} images · ${info.clusters} clusters${by}`;
      $("nprobe").max = String(info.clusters);
      $("nprobe").placeholder = `auto (${info.nprobe})`;
      $("nav-catalogue").hidden = !info.report;  // the catalogue report, when the service has one
      $("rerank-control").hidden = !info.rerank_graph;  // k-reciprocal re-ranking, when the model can
      $("colour-weight").title = info.colour_labels  // what "match colour" goes by
        ? `by the catalogue's own colour names (column ${info.colour_labels})`
        : "by the products' colour signatures";
      if (!info.rerank_graph) $("rerank").value = "none";  // a model without the graph: off (not refused)
    } catch (err) {
      $("stats").textContent = "service unavailable";
    }
    try {
      buildFilters((await getJSON("attributes")).columns || []);
    } catch (_) {
      buildFilters([]);  // an older server without /attributes: no filters
    }
    route();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
