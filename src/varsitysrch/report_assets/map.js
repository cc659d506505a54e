// varsitysrch catalogue map: dots + sampled thumbnails on a canvas; data from map-data.js (window.VS_MAP).
(function () {
  "use strict";
  var D = window.VS_MAP, canvas = document.getElementById("map"), tip = document.getElementById("tip");
  if (!D || !canvas) { return; }
  var ctx = canvas.getContext("2d"), W = canvas.width, H = canvas.height, n = D.x.length;
  var minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity, i;
  for (i = 0; i < n; i++) {
    if (D.x[i] < minX) minX = D.x[i]; if (D.x[i] > maxX) maxX = D.x[i];
    if (D.y[i] < minY) minY = D.y[i]; if (D.y[i] > maxY) maxY = D.y[i];
  }
  var pad = 40, sx = (W - 2 * pad) / ((maxX - minX) || 1), sy = (H - 2 * pad) / ((maxY - minY) || 1);
  var base = Math.min(sx, sy), zoom = 1, TH = 44;
  // centre the map in the canvas (one scale for both axes keeps distances true)
  var ox = (W - 2 * pad - (maxX - minX) * base) / 2, oy = -(H - 2 * pad - (maxY - minY) * base) / 2;
  function px(j) { return pad + ((D.x[j] - minX) * base) * zoom + ox; }
  function py(j) { return H - pad - ((D.y[j] - minY) * base) * zoom + oy; }
  function colour(c) { return "hsl(" + ((c * 137.508) % 360).toFixed(1) + ",65%,48%)"; }
  var images = D.thumbs.map(function (t) {
    var im = new Image();
    im.onload = function () { draw(); };
    im.src = t[1];
    return { row: t[0], img: im };
  });
  function draw() {
    ctx.clearRect(0, 0, W, H);
    var drawn = 0, shown = 0, j;
    for (j = 0; j < n; j++) {
      var x = px(j), y = py(j);
      if (x < -5 || y < -5 || x > W + 5 || y > H + 5) continue;
      ctx.fillStyle = colour(D.c[j]);
      ctx.fillRect(x - 1.5, y - 1.5, 3, 3);
      drawn++;
    }
    images.forEach(function (t) {
      if (!t.img.complete || !t.img.naturalWidth) return;
      var x = px(t.row), y = py(t.row);
      if (x < -TH || y < -TH || x > W + TH || y > H + TH) return;
      ctx.drawImage(t.img, x - TH / 2, y - TH / 2, TH, TH);
      ctx.strokeStyle = colour(D.c[t.row]);
      ctx.lineWidth = 2;
      ctx.strokeRect(x - TH / 2, y - TH / 2, TH, TH);
      shown++;
    });
    canvas.dataset.points = String(drawn);
    canvas.dataset.thumbs = String(shown);
  }
  function toCanvas(ev) {
    var r = canvas.getBoundingClientRect();
    return [(ev.clientX - r.left) * W / r.width, (ev.clientY - r.top) * H / r.height];
  }
  function nearest(p) {
    var best = -1, bd = 100, j;
    for (j = 0; j < n; j++) {
      var dx = px(j) - p[0], dy = py(j) - p[1], d = dx * dx + dy * dy;
      if (d < bd) { bd = d; best = j; }
    }
    return best;
  }
  var dragging = null;
  canvas.addEventListener("mousedown", function (ev) { dragging = [ev.clientX, ev.clientY, ox, oy, false]; });
  window.addEventListener("mouseup", function (ev) {
    if (dragging && !dragging[4]) {
      var j = nearest(toCanvas(ev));
      if (j >= 0) { window.location.href = "clusters/c" + String(D.c[j]).padStart(4, "0") + ".html"; }
    }
    dragging = null;
  });
  canvas.addEventListener("mousemove", function (ev) {
    var r = canvas.getBoundingClientRect();
    if (dragging) {
      var f = W / r.width, dx = (ev.clientX - dragging[0]) * f, dy = (ev.clientY - dragging[1]) * f;
      if (Math.abs(dx) + Math.abs(dy) > 3) dragging[4] = true;
      ox = dragging[2] + dx; oy = dragging[3] + dy; draw(); return;
    }
    var j = nearest(toCanvas(ev));
    if (j < 0) { tip.style.display = "none"; return; }
    tip.textContent = (D.ids.length ? D.ids[j] : "image " + j) + " \u00b7 cluster " + D.c[j];
    tip.style.left = (ev.clientX - r.left + 12) + "px";
    tip.style.top = (ev.clientY - r.top + 12) + "px";
    tip.style.display = "block";
  });
  canvas.addEventListener("mouseleave", function () { tip.style.display = "none"; });
  canvas.addEventListener("wheel", function (ev) {
    ev.preventDefault();
    var p = toCanvas(ev), f = ev.deltaY < 0 ? 1.25 : 0.8;
    // keep the point under the cursor fixed
    ox = p[0] * (1 - f) + f * ox + pad * (f - 1); oy = p[1] * (1 - f) + f * oy + (H - pad) * (f - 1);
    zoom *= f; draw();
  }, { passive: false });
  // canvas position of a drawn point (tests and scripts use it to hover a point)
  window.VS_MAP_VIEW = { pos: function (j) { return [px(j), py(j)]; }, width: W, height: H };
  draw();
})();
