"""analysis.py: the summary numbers, the ranking, --json, awkward logs, and progress.png."""

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import analysis  # noqa: E402

HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
ROWS = [
    ("aaaaaaa", 1.000000, 44.0, "keep", "baseline"),
    ("aaaaaaa", 1.000500, 44.0, "discard", "baseline repeat (noise check)"),
    ("bbbbbbb", 0.990000, 44.1, "keep", "raise matrix lr"),
    ("ccccccc", 0.000000, 0.0, "crash", "fp8 matmuls"),
    ("ddddddd", 0.995000, 45.0, "discard", "swiglu"),
    ("eeeeeee", 0.960000, 46.0, "keep", "deeper model"),
    ("fffffff", 0.955000, 46.0, "keep", "longer warmdown"),
    ("1234567", 3.500000, 46.0, "discard", "lr x10 (diverged)"),
]


def write_log(tmp_path, rows=ROWS, extra=""):
    path = tmp_path / "results.tsv"
    body = "".join(f"{c}\t{v:.6f}\t{m:.1f}\t{s}\t{d}\n" for c, v, m, s, d in rows)
    path.write_text(HEADER + body + extra)
    return path


def run(path, *flags):
    return analysis.main([str(path), *flags])


def check_png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert 800 <= width <= 4000 and 400 <= height <= 3000, (width, height)
    assert 5_000 < len(data) < 3_000_000, len(data)


def test_summary_numbers(tmp_path):
    rows, skipped = analysis.read_log(write_log(tmp_path))
    assert skipped == []
    s = analysis.summarize(rows)
    assert s["total"] == 8
    assert s["counts"] == {"keep": 4, "discard": 3, "crash": 1}
    assert s["keep_rate"] == pytest.approx(0.5)
    assert s["baseline"]["val_bpb"] == 1.0 and s["baseline"]["index"] == 1
    assert s["best"]["commit"] == "fffffff" and s["best"]["index"] == 7
    assert s["improvement"]["absolute"] == pytest.approx(0.045)
    assert s["improvement"]["relative"] == pytest.approx(0.045)


def test_ranking_by_gain_over_previous_kept(tmp_path):
    rows, _ = analysis.read_log(write_log(tmp_path))
    ranked = analysis.summarize(rows)["ranked"]
    assert [r["commit"] for r in ranked] == ["eeeeeee", "bbbbbbb", "fffffff"]
    assert [round(r["gain"], 6) for r in ranked] == [0.03, 0.01, 0.005]


def test_text_output(tmp_path, capsys):
    assert run(write_log(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "8 experiments: 4 kept, 3 discarded, 1 crashed (keep rate 50%)" in out
    assert "baseline  1.000000" in out and "best      0.955000" in out
    assert "4.50%" in out
    lines = out.splitlines()
    first = next(i for i, line in enumerate(lines) if "deeper model" in line)
    assert "+0.030000" in lines[first] and "raise matrix lr" in lines[first + 1]
    assert (tmp_path / "progress.png").exists()


def test_json_output(tmp_path, capsys):
    assert run(write_log(tmp_path), "--json") == 0
    data = json.loads(capsys.readouterr().out)  # stdout is pure JSON
    assert data["counts"] == {"keep": 4, "discard": 3, "crash": 1}
    assert data["total"] == 8 and data["keep_rate"] == 0.5
    assert data["baseline"]["val_bpb"] == 1.0
    assert data["best"]["val_bpb"] == 0.955
    assert data["improvement"]["absolute"] == pytest.approx(0.045)
    assert [r["commit"] for r in data["ranked"]] == ["eeeeeee", "bbbbbbb", "fffffff"]
    assert data["skipped_lines"] == []
    assert data["png"] == str(tmp_path / "progress.png")
    check_png(tmp_path / "progress.png")


def test_png_written_next_to_the_log(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    logdir = tmp_path / "run1"
    logdir.mkdir()
    assert run(write_log(logdir)) == 0
    check_png(logdir / "progress.png")
    assert not (tmp_path / "progress.png").exists()


def test_no_png(tmp_path):
    assert run(write_log(tmp_path), "--no-png") == 0
    assert not (tmp_path / "progress.png").exists()


@pytest.mark.parametrize("content", ["", HEADER])
def test_empty_log(tmp_path, capsys, content):
    path = tmp_path / "results.tsv"
    path.write_text(content)
    assert run(path) == 0
    out = capsys.readouterr().out
    assert "0 experiments" in out and "no completed run yet" in out
    check_png(tmp_path / "progress.png")
    assert run(path, "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["total"] == 0 and data["keep_rate"] == 0.0
    assert data["baseline"] is None and data["best"] is None and data["ranked"] == []


def test_only_crashes(tmp_path, capsys):
    rows = [("aaaaaaa", 0, 0, "crash", "typo"), ("bbbbbbb", 0, 0, "crash", "oom")]
    path = write_log(tmp_path, rows)
    assert run(path) == 0
    assert "no completed run yet (only crashes)" in capsys.readouterr().out
    check_png(tmp_path / "progress.png")
    assert run(path, "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["counts"] == {"keep": 0, "discard": 0, "crash": 2}
    assert data["baseline"] is None and data["improvement"] is None


def test_malformed_rows_warned_and_skipped(tmp_path, capsys):
    bad = ("garbage line without tabs\n"                           # line 10
           "ggggggg\tnot-a-number\t44.0\tdiscard\tbad value\n"     # line 11
           "hhhhhhh\t0.950000\t44.0\tmaybe\tbad status\n"          # line 12
           "iiiiiii\t0.000000\t0.0\tkeep\tkeep without a value\n"  # line 13
           "\n"                                                    # blank: ignored
           "jjjjjjj\t0.940000\t44.0\tkeep\tfine again\n")          # line 15
    path = write_log(tmp_path, extra=bad)
    assert run(path, "--json", "--no-png") == 0
    captured = capsys.readouterr()
    warnings = captured.err.strip().splitlines()
    assert len(warnings) == 4
    for lineno, warning in zip((10, 11, 12, 13), warnings):
        assert warning.startswith("warning: ") and f"results.tsv:{lineno}:" in warning
    data = json.loads(captured.out)
    assert data["skipped_lines"] == [10, 11, 12, 13]
    assert data["total"] == 9 and data["best"]["commit"] == "jjjjjjj"


def test_missing_file(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "analysis.py"), str(tmp_path / "nope.tsv")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "nope.tsv" in proc.stderr


def test_y_range_clips_a_diverged_run(tmp_path):
    rows, _ = analysis.read_log(write_log(tmp_path))
    low, high = analysis.y_limits(rows, 1.0)
    assert low < 0.955 and 1.0005 < high < 1.1  # the 3.5 run sits off the chart
