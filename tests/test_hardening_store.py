"""Issue 9, store and ingestion half: nothing lost, nothing let in.

Each test names the defect it covers; the ones marked "failed on d95ed08" were run
against the code before the fix and failed there.
"""

from __future__ import annotations

import csv

import pytest

from varsitysrch._io import neutralise_cell, read_csv, restore_cell, write_csv, write_json

HOSTILE_CELLS = [
    '=HYPERLINK("http://evil","click")',
    "+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(A1)",
    "\tx",
    "\rx",
    "'quoted",
    "''",
    "a\nb\rc.jpg",
    "caf\udcff.jpg",  # not valid UTF-8 on disk
    "plain.jpg",
    "",
]


# ---------------------------------------------------------------- CSV injection (failed on d95ed08)
def test_csv_cells_spreadsheets_would_evaluate_are_neutralised(tmp_path):
    p = tmp_path / "x.csv"
    write_csv(p, ["id", "n"], [(c, i) for i, c in enumerate(HOSTILE_CELLS)])
    with open(p, encoding="utf-8", errors="surrogateescape", newline="") as f:
        raw = list(csv.reader(f))[1:]
    for cell, _ in raw:
        assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
    header, rows = read_csv(p)
    assert header == ["id", "n"]
    assert [r[0] for r in rows] == HOSTILE_CELLS  # recoverable, exactly
    assert [int(r[1]) for r in rows] == list(range(len(HOSTILE_CELLS)))


@pytest.mark.parametrize("cell", [*HOSTILE_CELLS, "'", "'''=x", "=", "-", "x'"])
def test_neutralise_is_a_bijection(cell):
    assert restore_cell(neutralise_cell(cell)) == cell


def test_numbers_are_never_touched(tmp_path):
    p = tmp_path / "n.csv"
    write_csv(p, ["a", "b", "c"], [(-1, -2.5, "-0.25"), (3, 1e-9, "+4")])
    text = p.read_text()
    assert "'" not in text
    assert read_csv(p)[1] == [["-1", "-2.5", "-0.25"], ["3", "1e-09", "+4"]]


def test_neutralise_false_writes_cells_verbatim(tmp_path):
    p = tmp_path / "v.csv"
    write_csv(p, ["id"], [["=1+1"]], neutralise=False)
    assert read_csv(p, neutralised=False)[1] == [["=1+1"]]


def test_non_utf8_names_round_trip_through_csv_and_json(tmp_path):
    import json

    name = "caf\udcff\udce9.jpg"
    write_csv(tmp_path / "a.csv", ["id"], [[name]])
    assert b"caf\xff\xe9.jpg" in (tmp_path / "a.csv").read_bytes()
    assert read_csv(tmp_path / "a.csv")[1] == [[name]]
    write_json(tmp_path / "a.json", {"id": name})
    raw = (tmp_path / "a.json").read_bytes()
    raw.decode("utf-8")  # JSON stays valid UTF-8
    assert json.loads(raw) == {"id": name}
