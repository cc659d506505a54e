// varsitysrch web page: plain JavaScript, no framework, no build step, no network access
// beyond this server.  Views are chosen by the URL hash:
//   #search              upload / drop / paste a photo
//   #id=<image id>       search with a catalogue image
//   #clusters            every cluster with a few samples
//   #cluster=<c>&offset=<n>  a cluster's members, paged
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const PAGE = 24;
  let info = { max_upload_bytes: 20 * 1024 * 1024, search_by_image: true };
  let inflight = null;      // AbortController of the running search
  let previewUrl = null;    // object URL of the uploaded query

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

  function setStatus(node, text, kind) {
    node.textContent = text || "";
    node.className = "status" + (kind ? " " + kind : "");
  }

  async function errorText(resp) {
    let detail = resp.statusText || "request failed";
    try {
      const body = await resp.json();
      if (typeof body.detail === "string") detail = body.detail;
      else if (Array.isArray(body.detail)) {
        detail = body.detail.map((d) => (d.loc ? d.loc.slice(-1)[0] + ": " : "") + d.msg).join("; ");
      }
    } catch (_) { /* not JSON */ }
    return `Error ${resp.status}: ${detail}`;
  }

  async function getJSON(url) {
    const resp = await fetch(url, { headers: { Accept: "application/json" } });
    if (!resp.ok) throw new Error(await errorText(resp));
    return resp.json();
  }

  function fmtBytes(n) {
    if (n >= 1024 * 1024) return (n / 1024 / 1024).toFixed(1) + " MB";
    if (n >= 1024) return (n / 1024).toFixed(0) + " KB";
    return n + " bytes";
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
      showCluster(parseInt(params.get("cluster"), 10), parseInt(params.get("offset") || "0", 10));
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

  // ------------------------------------------------------------------ search
  function options() {
    const p = new URLSearchParams();
    p.set("top_n", $("top-n").value);
    const np = $("nprobe").value.trim();
    if (np) p.set("nprobe", np);
    if ($("exact").checked) p.set("exact", "true");
    return p;
  }

  function beginSearch() {
    if (inflight) inflight.abort();
    inflight = new AbortController();
    return inflight.signal;
  }

  function showQuery(src, caption) {
    $("query").hidden = false;
    $("query-img").src = src;
    $("query-caption").textContent = caption;
  }

  async function searchFile(file) {
    const status = $("status");
    if (!file) return;
    if (file.size > info.max_upload_bytes) {
      setStatus(status, `That file is ${fmtBytes(file.size)}; the limit is ${fmtBytes(info.max_upload_bytes)}.`, "error");
      return;
    }
    if (!info.search_by_image) {
      setStatus(status, "This model cannot embed new photos; click a catalogue image instead.", "error");
      return;
    }
    show("search");
    if (location.hash && location.hash !== "#search") history.pushState(null, "", "#search");
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    showQuery(previewUrl, `${file.name || "pasted image"} · ${fmtBytes(file.size)}`);
    const form = new FormData();
    form.append("image", file, file.name || "upload");
    await runSearch("search?" + options().toString(), { method: "POST", body: form }, "upload:" + (file.name || ""));
  }

  async function searchById(id) {
    if (!id) return;
    showQuery("thumbnails/" + id.split("/").map(encodeURIComponent).join("/"), id);
    const p = options();
    p.set("image_id", id);
    await runSearch("search?" + p.toString(), { method: "GET" }, "id:" + id);
  }

  async function runSearch(url, init, label) {
    const status = $("status");
    const results = $("results");
    const signal = beginSearch();
    setStatus(status, "Searching…", "busy");
    results.setAttribute("aria-busy", "true");
    try {
      const resp = await fetch(url, { ...init, signal, headers: { Accept: "application/json" } });
      if (!resp.ok) {
        setStatus(status, await errorText(resp), "error");
        results.replaceChildren();
        results.dataset.query = "error";
        return;
      }
      const data = await resp.json();
      renderHits(data);
      results.dataset.query = label;
      const scan = data.exact ? "all clusters" : `${data.nprobe} cluster${data.nprobe === 1 ? "" : "s"}`;
      setStatus(status, `${data.hits.length} results in ${Math.round(data.took_ms)} ms (scanned ${scan}).`);
    } catch (err) {
      if (err.name === "AbortError") return;
      setStatus(status, "Search failed: " + err.message, "error");
    } finally {
      results.removeAttribute("aria-busy");
    }
  }

  function card(item, extra) {
    const img = el("img", { src: item.thumbnail_url, alt: item.image, loading: "lazy" });
    const button = el("button", {
      type: "button", class: "thumb", title: "Search with this image",
      onclick: () => goSearchId(item.image),
    }, img);
    const name = el("div", { class: "name", title: item.image }, item.image);
    const open = el("a", { class: "open", href: item.url, target: "_blank", rel: "noopener" }, "full size ↗");
    return el("li", { class: "card", dataset: { id: item.image, ...(extra.dataset || {}) } },
      button, ...(extra.children || []), name, open);
  }

  function renderHits(data) {
    const cards = data.hits.map((h) => {
      const pct = Math.max(0, Math.min(1, h.score)) * 100;
      const meta = el("div", { class: "meta" },
        el("span", { class: "rank" }, "#" + h.rank),
        el("span", { class: "score", title: "cosine similarity" }, h.score.toFixed(3)),
        el("a", { class: "cluster", href: "#cluster=" + h.cluster }, "cluster " + h.cluster));
      const fill = el("span");
      fill.style.width = pct.toFixed(1) + "%";  // CSSOM, allowed by the page's CSP (no inline styles)
      const bar = el("div", { class: "bar" }, fill);
      return card(h, {
        dataset: { rank: String(h.rank), score: String(h.score), cluster: String(h.cluster) },
        children: [meta, bar],
      });
    });
    $("results").replaceChildren(...cards);
  }

  // ------------------------------------------------------------------ clusters
  async function showClusters() {
    $("cluster-detail").hidden = true;
    const list = $("cluster-list");
    list.hidden = false;
    const status = $("cluster-status");
    setStatus(status, "Loading clusters…", "busy");
    try {
      const data = await getJSON("clusters?sample=4");
      const items = data.clusters.map((c) =>
        el("a", { class: "cluster-card", href: `#cluster=${c.id}`, dataset: { cluster: String(c.id) } },
          el("div", { class: "samples" },
            ...c.sample.map((m) => el("img", { src: m.thumbnail_url, alt: m.image, loading: "lazy" }))),
          el("div", { class: "cluster-name" }, `Cluster ${c.id}`),
          el("div", { class: "cluster-size" }, `${c.size} image${c.size === 1 ? "" : "s"}`)));
      list.replaceChildren(...items);
      setStatus(status, `${data.k} clusters, ${data.images} images.`);
    } catch (err) {
      setStatus(status, err.message, "error");
    }
  }

  async function showCluster(c, offset) {
    if (!Number.isFinite(c)) return showClusters();
    offset = Number.isFinite(offset) && offset > 0 ? offset : 0;
    $("cluster-list").hidden = true;
    $("cluster-detail").hidden = false;
    const status = $("cluster-status");
    setStatus(status, "Loading…", "busy");
    try {
      const data = await getJSON(`clusters/${c}?offset=${offset}&limit=${PAGE}`);
      $("cluster-title").textContent = `Cluster ${data.id} · ${data.size} images`;
      const last = Math.min(data.offset + data.members.length, data.size);
      $("page-info").textContent = data.size ? `${data.offset + 1}–${last} of ${data.size}` : "empty";
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
      $("members").replaceChildren();
      setStatus(status, err.message, "error");
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
    window.addEventListener("hashchange", route);
  }

  async function init() {
    wire();
    try {
      info = await getJSON("healthz");
      const by = info.extractor ? ` · ${info.extractor}` : "";
      $("stats").textContent = `${info.images} images · ${info.clusters} clusters${by}`;
    } catch (err) {
      $("stats").textContent = "service unavailable";
    }
    route();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
