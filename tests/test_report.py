"""make_report: a self-contained folder, cached thumbnails, safe ids, atomic replacement."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from varsitysrch import IncompatibleModelError, InvalidArgumentError
from varsitysrch._io import read_csv
from varsitysrch._report import make_report
from varsitysrch._store import FeatureStore, normalize_rows

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Generated catalogue + a byte copy and a mirrored copy of one image, extracted and trained (k=4)."""
    from imagegen import make_synthetic_catalogue
    from varsitysrch import extract_features, train_clusters

    d = tmp_path_factory.mktemp("report")
    root = d / "img"
    make_synthetic_catalogue(root, n_classes=4, per_class=6, size=96, seed=0)
    shutil.copyfile(root / "red_circles" / "img_00.png", root / "red_circles" / "img_00_copy.png")
    ImageOps.mirror(Image.open(root / "blue_stripes" / "img_00.png")).save(
        root / "blue_stripes" / "mirror.png"
    )
    extract_features(root, d / "features", show_progress=False)
    train_clusters(d / "features", d / "model.vsm", d / "clusters.csv", 4, show_progress=False)
    return {
        "root": root,
        "features": d / "features",
        "model": d / "model.vsm",
        "csv": d / "clusters.csv",
        "dir": d,
    }


def _build(t: dict[str, Path], out: Path, **kw: object):  # type: ignore[no-untyped-def]
    kw.setdefault("image_root", t["root"])  # the recorded folder is never read unless named
    return make_report(t["features"], t["model"], t["csv"], out, show_progress=False, **kw)  # type: ignore[arg-type]


def _html(out: Path) -> dict[Path, str]:
    return {p: p.read_text(encoding="utf-8") for p in out.rglob("*.html")}


def test_report_folder_is_complete_and_self_contained(trained: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "report"
    s = _build(trained, out)
    for name in (
        "index.html",
        "duplicates.html",
        "map.html",
        "map.js",
        "map-data.js",
        "style.css",
        "outliers.csv",
        "duplicates.csv",
        "clusters.csv",
        "report.json",
        "figures/cluster-sizes.png",
        "figures/silhouette.png",
    ):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "clusters").iterdir()) == [f"c{c:04d}.html" for c in range(4)]
    assert s.n_images == 26 and s.k == 4 and s.thumbnails_missing == 0 and s.thumbnails_made > 0
    assert s.bytes == sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and p.name != "report.json")
    pages = _html(out)
    for page, text in pages.items():
        refs = re.findall(r'(?:src|href)="([^"]+)"', text)
        assert refs, page
        for ref in refs:
            if ref == "data:,":  # the empty favicon: no request at all
                continue
            assert not re.match(r"[a-z]+:", ref), (page, ref)  # no http(s):, file:, data: ... only relative
            target = (page.parent / ref.split("#")[0]).resolve()
            assert target.is_file(), (page, ref)  # every link, image, script and sheet is in the folder
            assert target.is_relative_to(out.resolve())
    assert not list(tmp_path.glob(".report.*"))  # no temporary folder left


def test_duplicates_found_and_exported(trained: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "r"
    s = _build(trained, out)
    header, rows = read_csv(out / "duplicates.csv")
    assert header == ["tier", "group", "group_size", "max_score", "min_score", "image", "cluster"]
    dup = {}
    for r in rows:
        if r[0] == "duplicate":
            dup.setdefault(r[1], set()).add(r[5])
    assert {"red_circles/img_00.png", "red_circles/img_00_copy.png"} in dup.values()
    assert s.n_duplicate_groups == len(dup)
    text = (out / "duplicates.html").read_text(encoding="utf-8")
    assert "0.93" in text and "img_00_copy.png" in text


def test_outliers_and_clusters_csv(trained: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "r"
    _build(trained, out, central=3, outliers=2)
    header, rows = read_csv(out / "outliers.csv")
    assert header[:3] == ["rank", "image", "cluster"]
    _, crow = read_csv(out / "clusters.csv")
    sizes = [int(r[1]) for r in crow]
    assert sum(sizes) == 26
    assert len(rows) == sum(min(2, sz) for sz in sizes if sz > 3)
    ratios = [float(r[5]) for r in rows]
    assert ratios == sorted(ratios, reverse=True)
    sil = [float(r[5]) for r in crow if r[5]]
    assert all(-1 <= v <= 1 for v in sil) and sil


def test_rebuild_reuses_thumbnails(trained: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "r"
    first = _build(trained, out)
    files = sorted(p.relative_to(out) for p in out.rglob("*"))
    second = _build(trained, out)
    assert second.thumbnails_made == 0 and second.thumbnails_reused == first.thumbnails_made > 0
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == files
    # a changed image gets a new thumbnail, the others are reused
    img = trained["root"] / "red_circles" / "img_02.png"
    keep = img.read_bytes()
    try:
        Image.open(img).rotate(90).save(img)
        third = _build(trained, out)
    finally:
        img.write_bytes(keep)
    assert third.thumbnails_made <= 1  # only if that image is shown


def test_interrupted_build_keeps_the_previous_report(
    trained: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import varsitysrch._report as rep

    out = tmp_path / "r"
    _build(trained, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def boom(*a: object, **k: object) -> None:
        raise RuntimeError("interrupted")

    monkeypatch.setattr(rep, "_map_page", boom)
    with pytest.raises(RuntimeError, match="interrupted"):
        _build(trained, out)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_refuses_to_overwrite_other_folders_and_mismatched_files(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    other = tmp_path / "docs"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(InvalidArgumentError, match="not a varsitysrch report"):
        _build(trained, other)
    assert (other / "keep.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidArgumentError, match="not a folder"):
        _build(trained, tmp_path / "file")
    header, rows = read_csv(trained["csv"])
    rows[0][1] = str((int(rows[0][1]) + 1) % 4)
    from varsitysrch._io import write_csv

    bad_csv = tmp_path / "bad.csv"
    write_csv(bad_csv, header, rows)
    with pytest.raises(IncompatibleModelError, match="does not match"):
        make_report(trained["features"], trained["model"], bad_csv, tmp_path / "x", show_progress=False)
    X = np.asarray(FeatureStore.open(trained["features"]).vectors)
    FeatureStore.write(
        tmp_path / "f2", [f"z{k}.png" for k in range(len(X))], X, {"name": "test", "dim": X.shape[1]}
    )
    with pytest.raises(IncompatibleModelError, match="not trained on"):
        make_report(tmp_path / "f2", trained["model"], None, tmp_path / "x", show_progress=False)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"thumb_size": 0}, "thumb_size"),
        ({"central": 0}, "central"),
        ({"duplicate_threshold": 1.5}, "duplicate_threshold"),
        ({"duplicate_threshold": 0.9, "variant_threshold": 0.95}, "variant_threshold"),
        ({"map_points": True}, "map_points"),
    ],
)
def test_bad_arguments(trained: dict[str, Path], tmp_path: Path, kw: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        _build(trained, tmp_path / "r", **kw)


HOSTILE = [
    '<img src=x onerror="alert(1)">.jpg',
    "ok/link.png",
    '=HYPERLINK("http://evil.example","x").png',
    "-1+2.png",
    "a&b\"c'd.png",
    "ok/plain.png",
]


def test_hostile_ids_are_escaped_neutralised_and_never_read_outside(tmp_path: Path) -> None:
    from varsitysrch import train_clusters

    rng = np.random.default_rng(0)
    base = normalize_rows(rng.standard_normal((10, 16)))
    ids = [*HOSTILE, *(f"img/{k:02d}.png" for k in range(14))]
    X = normalize_rows(
        np.concatenate([base[[0, 0, 1, 1, 2, 2]], base[rng.integers(0, 10, 14)]])
        + 0.001 * rng.standard_normal((20, 16))
    )
    FeatureStore.write(tmp_path / "f", ids, X, {"name": "test", "dim": 16})
    train_clusters(tmp_path / "f", tmp_path / "m.vsm", tmp_path / "c.csv", 3, show_progress=False)
    images = tmp_path / "images"
    (images / "ok").mkdir(parents=True)
    Image.new("RGB", (40, 30), "red").save(images / "ok" / "plain.png")
    Image.new("RGB", (40, 30), "blue").save(tmp_path / "outside.png")
    (images / "ok" / "link.png").symlink_to(tmp_path / "outside.png")  # a symlink out of the image root
    out = tmp_path / "r"
    s = make_report(
        tmp_path / "f", tmp_path / "m.vsm", tmp_path / "c.csv", out, image_root=images, show_progress=False
    )
    assert s.thumbnails_made == 1  # only ok/plain.png: the rest are missing or lead outside the image root
    thumbs = list((out / "thumbs").rglob("*.jpg"))
    assert len(thumbs) == 1 and s.thumbnails_missing >= 5
    r, _, b = Image.open(thumbs[0]).convert("RGB").getpixel((80, 80))
    assert r > 200 and b < 60  # the red image inside the root, never the blue one the symlink points at
    for page, text in _html(out).items():
        assert "<img src=x" not in text and 'onerror="alert' not in text, page
        assert '"http://evil' not in text
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;.jpg" in (out / "duplicates.html").read_text()
    raw = (out / "duplicates.csv").read_text(encoding="utf-8")
    assert "'=HYPERLINK" in raw and ",=HYPERLINK" not in raw
    _, rows = read_csv(out / "duplicates.csv")
    assert HOSTILE[2] in {r[5] for r in rows}  # the round trip restores the id
    js = (out / "map-data.js").read_text(encoding="ascii")
    assert "<" not in js and "&" not in js and "\\u003cimg src=x" in js  # markup characters escaped


def test_large_catalogue_path_samples_the_map_and_bounds_the_pages(tmp_path: Path) -> None:
    """3,000 vectors (no images), IVF duplicates, a 500-point map: sizes bounded by the settings."""
    from varsitysrch import train_clusters

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((6, 24))
    X = normalize_rows(centres[rng.integers(0, 6, 3000)] + 0.8 * rng.standard_normal((3000, 24)))
    X[-30:] = normalize_rows(X[:30] + 0.001 * rng.standard_normal((30, 24)))  # 30 planted copies
    ids = [f"shop/{k:05d}.jpg" for k in range(3000)]
    FeatureStore.write(tmp_path / "f", ids, X, {"name": "test", "dim": 24})
    train_clusters(tmp_path / "f", tmp_path / "m.vsm", tmp_path / "c.csv", 6, show_progress=False)
    out = tmp_path / "r"
    s = make_report(
        tmp_path / "f", tmp_path / "m.vsm", tmp_path / "c.csv", out, map_points=500, map_thumbs=50,
        silhouette_sample=400, duplicate_method="ivf", central=4, outliers=4, show_progress=False,
    )  # fmt: skip
    js = (out / "map-data.js").read_text(encoding="ascii")
    import json

    data = json.loads(js[js.index("{") : js.rindex("}") + 1])
    assert len(data["x"]) == len(data["c"]) == len(data["ids"]) == 500 and data["n"] == 3000
    assert "a seeded sample" in (out / "map.html").read_text(encoding="utf-8")
    assert s.n_duplicate_groups >= 30
    assert s.thumbnails_missing <= 6 * 8 + 12 * min(s.n_duplicate_groups, 200) + 50  # only what is shown
    _, rows = read_csv(out / "duplicates.csv")
    dup_pairs = {}
    for r in rows:
        if r[0] == "duplicate":
            dup_pairs.setdefault(r[1], set()).add(r[5])
    for k in range(30):
        assert any({ids[k], ids[2970 + k]} <= g for g in dup_pairs.values()), k


def test_cli_report(trained: dict[str, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from varsitysrch.cli import app

    out = tmp_path / "r"
    args = [
        "report",
        str(trained["features"]),
        "--model",
        str(trained["model"]),
        "--csv",
        str(trained["csv"]),
    ]
    r = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert (out / "index.html").is_file() and "report of 26 images" in r.stdout
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x")
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "mine")])
    assert r.exit_code == 2 and "not a varsitysrch report" in r.output


def test_service_serves_the_report_and_hits_carry_confidence(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from varsitysrch.service import create_app

    out = tmp_path / "r"
    _build(trained, out)
    app = create_app(
        trained["model"], trained["csv"], image_root=trained["root"], report_dir=out,
        cache_dir=tmp_path / "thumbs", reload_interval=0,
    )  # fmt: skip
    with TestClient(app) as c:
        assert c.get("/healthz").json()["report"] is True
        page = c.get("/")
        assert 'id="nav-catalogue"' in page.text and 'href="report/"' in page.text
        r = c.get("/report/")
        assert r.status_code == 200 and "Catalogue report" in r.text
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert c.get("/report").url.path == "/report/"  # redirect to the folder
        thumb = re.search(r'src="\.\./(thumbs/[^"]+)"', (out / "clusters" / "c0000.html").read_text())
        assert thumb is not None
        r = c.get("/report/" + thumb.group(1))
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        assert c.get("/report/map-data.js").status_code == 200
        for bad in ("../model.vsm", "..%2fmodel.vsm", "%2e%2e/%2e%2e/etc/passwd", "nope.html", "thumbs"):
            assert c.get("/report/" + bad).status_code == 404, bad
        hits = c.get("/search", params={"image_id": "red_circles/img_00.png", "top_n": 3}).json()["hits"]
        assert hits[0]["image"] in ("red_circles/img_00.png", "red_circles/img_00_copy.png")
        for h in hits:
            assert 0 <= h["confidence"] <= 1 and h["match"] and isinstance(h["close"], bool)
    plain = create_app(trained["model"], trained["csv"], cache_dir=tmp_path / "thumbs", reload_interval=0)
    with TestClient(plain) as c:
        assert c.get("/healthz").json()["report"] is False
        assert c.get("/report/").status_code == 404
    with pytest.raises(InvalidArgumentError, match="report_dir"):
        create_app(trained["model"], trained["csv"], report_dir=tmp_path, reload_interval=0)


def test_overview_states_what_a_close_match_is(trained: dict[str, Path], tmp_path: Path) -> None:
    from varsitysrch._confidence import ScoreCalibrator
    from varsitysrch._modelfile import load_model

    out = tmp_path / "r"
    _build(trained, out)
    cal = ScoreCalibrator.from_dict(load_model(trained["model"]).config["confidence"])
    text = (out / "index.html").read_text(encoding="utf-8")
    assert f"scoring at least <b>{cal.cutoff_score_:.3f}</b> are marked <em>close matches</em>" in text
    assert f"{100 * (1 - cal.cutoff):g}&nbsp;% of your catalogue photos" in text


def _overview_facts(out: Path) -> str:
    """The overview's facts table as text (the technical settings, collapsed below it, left out)."""
    text = (out / "index.html").read_text(encoding="utf-8")
    m = re.search(r"<table class=facts>(.*?)</table>", text, re.S)
    assert m is not None
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", m.group(1)))


def test_overview_is_in_words_a_shop_owner_reads(trained: dict[str, Path], tmp_path: Path) -> None:
    """Issue 22.5: the overview read "pooling pooled, quantized True", "Search space raw cosine"."""
    out = tmp_path / "r"
    _build(trained, out)
    facts = _overview_facts(out)
    for jargon in ("pooling", "pooled", "quantized", "Search space", "raw cosine", "True", "False", "cosine"):
        assert jargon not in facts, jargon
    for words in ("26 photos", "4 groups of look-alike photos", "How distinct the groups are",
                  "near-identical photos", "look-alike photos get similar numbers"):  # fmt: skip
        assert words in facts, words
    # the labels the browser test reads are kept
    for label in ("Catalogue images", "Clusters (k)", "Extractor", "Model trained", "Duplicate groups"):
        assert label in facts, label
    # the settings stay available to developers, collapsed and labelled as such
    text = (out / "index.html").read_text(encoding="utf-8")
    tech = text[text.index("<details class=tech>") : text.index("</details>")]
    assert "Technical settings (for developers)" in tech and "extractor.pooling" in tech


@pytest.mark.parametrize(
    ("value", "thresholds"),
    [(0.2496, (0.25,)), (0.245, (0.25,)), (0.24999, (0.25, 0.5)), (0.4999, (0.5,)), (-0.0004, (0.0,))],
)
def test_numbers_are_never_rounded_across_the_line_they_are_compared_with(
    value: float, thresholds: tuple[float, ...]
) -> None:
    """Issue 22.3/22.5: "the best silhouette 0.25 is below 0.25" (0.245 rounded)."""
    from varsitysrch._report import _digits_beside, _silhouette_text

    text = _digits_beside(value, thresholds)
    for t in thresholds:
        assert (float(text) < t) == (value < t), text
    if thresholds == (0.25,):
        said = _silhouette_text(value, 10)
        assert "weak structure" in said and f"silhouette {text} " in said


def _png_with_record(path: Path, record: dict[str, object] | None) -> Path:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    if record is not None:
        import json

        info.add_text("varsitysrch-choose-k", json.dumps(record))
    Image.new("RGB", (40, 30), (200, 200, 255)).save(path, pnginfo=info)
    return path


def test_an_old_choose_k_plot_is_labelled_for_what_it_is(trained: dict[str, Path], tmp_path: Path) -> None:
    """Issue 22.5: a choose-k plot recommending k=2 was shown beside a k=10 model without comment."""
    import os

    out = tmp_path / "r"
    # a plot that records nothing, dated before the model was trained
    plain = _png_with_record(tmp_path / "choose-k.png", None)
    os.utime(plain, (946684800, 946684800))  # 2000-01-01
    _build(trained, out, choose_k_plot=plain)
    text = (out / "index.html").read_text(encoding="utf-8")
    assert "class='note stale'" in text
    assert "file dated 2000-01-01 00:00 UTC" in text and "does not record the k values" in text
    assert "This model uses k&nbsp;=&nbsp;4" in text and "older than the model" in text
    assert f"varsitysrch choose-k {trained['features']} --plot {plain}" in text
    # a plot that records its analysis: k = 2..30 on another catalogue size, recommending k = 2
    rec = _png_with_record(
        tmp_path / "old.png", {"ks": list(range(2, 31)), "recommended_k": 2, "n_images": 300}
    )
    _build(trained, out, choose_k_plot=rec)
    text = (out / "index.html").read_text(encoding="utf-8")
    assert (
        "for k&nbsp;=&nbsp;2..30 on 300 images and recommends k&nbsp;=&nbsp;2; "
        "this model uses k&nbsp;=&nbsp;4" in text
    )
    assert "The catalogue has 26 images now" in text and "class='note stale'" in text
    # one made for this catalogue, after the model, covering its k: stated, not flagged
    fresh = _png_with_record(
        tmp_path / "fresh.png", {"ks": [2, 3, 4, 5, 6], "recommended_k": 4, "n_images": 26}
    )
    _build(trained, out, choose_k_plot=fresh)
    text = (out / "index.html").read_text(encoding="utf-8")
    assert "recommends k&nbsp;=&nbsp;4; this model uses k&nbsp;=&nbsp;4." in text
    assert "note stale" not in text and "To redraw it" not in text


def test_central_members_are_the_shared_order(trained: dict[str, Path], tmp_path: Path) -> None:
    """Issue 22.5: the report and the web page show a cluster through one order (most central first)."""
    from varsitysrch._central import central_first
    from varsitysrch._modelfile import load_model

    mf = load_model(trained["model"])
    labels, dists = np.asarray(mf.labels), np.asarray(mf.distances)
    out = tmp_path / "r"
    _build(trained, out, central=3)
    for c in range(mf.k):
        rows = central_first(np.flatnonzero(labels == c), dists)
        assert sorted(rows.tolist()) == np.flatnonzero(labels == c).tolist()
        assert np.all(np.diff(dists[rows]) >= 0)  # nearest the centre first
        np.testing.assert_array_equal(central_first(rows[::-1], dists), rows)  # any input order
        page = (out / "clusters" / f"c{c:04d}.html").read_text(encoding="utf-8")
        sheet = page[page.index("<section id=central>") : page.index("<section id=outliers>")]
        shown = re.findall(r"<div class=id>([^<]+)</div>", sheet)
        assert shown == [mf.ids[int(r)] for r in rows[:3]]


def test_an_unwritable_out_is_named_not_the_temporary_folder(
    trained: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 22.4: `report --out /proc/forbidden` said "No such file or directory:
    '/proc/.forbidden.amlkjypt.tmp'": a name the user never typed."""
    import errno
    import tempfile

    def refuse(prefix: str = "", suffix: str = "", dir: str | None = None) -> str:
        raise PermissionError(errno.EACCES, "Permission denied", f"{dir}/{prefix}abcd1234{suffix}")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    out = tmp_path / "forbidden"
    with pytest.raises(PermissionError) as err:
        _build(trained, out)
    assert (
        err.value.filename == str(out) and ".tmp" not in str(err.value) and "abcd1234" not in str(err.value)
    )
    assert str(tmp_path) in err.value.strerror
    monkeypatch.undo()
    if Path("/proc/self").is_dir():  # Linux: nothing can be created in /proc, not even by root
        with pytest.raises(OSError) as err2:
            _build(trained, Path("/proc/forbidden"))
        assert err2.value.filename == "/proc/forbidden" and ".tmp" not in str(err2.value)
