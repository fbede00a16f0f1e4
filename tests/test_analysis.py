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
from harness.run import empty_run  # noqa: E402

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


@pytest.fixture(autouse=True)
def no_recorded_setup(tmp_path_factory, monkeypatch):
    """The summary names the setup from the cache's setup.json: point it at an empty cache."""
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path_factory.mktemp("empty-cache")))


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
    assert s["experiments"] == {"keep": 3, "discard": 2, "crash": 1}  # rows 1-2 are the baseline's
    assert s["keep_rate"] == pytest.approx(0.5)
    # Decide's baseline: the mean of the first two runs that did not crash (a keep and a discard here)
    assert s["baseline"]["val_bpb"] == pytest.approx(1.00025) and s["baseline"]["indices"] == [1, 2]
    assert s["baseline"]["noise"] == pytest.approx(0.0005) and s["baseline"]["commits"] == ["aaaaaaa"] * 2
    assert s["best"]["commit"] == "fffffff" and s["best"]["index"] == 7
    assert s["improvement"]["absolute"] == pytest.approx(0.04525)
    assert s["improvement"]["relative"] == pytest.approx(0.04525 / 1.00025)


def test_ranking_by_gain_over_previous_kept(tmp_path):
    rows, _ = analysis.read_log(write_log(tmp_path))
    ranked = analysis.summarize(rows)["ranked"]
    assert [r["commit"] for r in ranked] == ["eeeeeee", "bbbbbbb", "fffffff"]
    assert [round(r["gain"], 6) for r in ranked] == [0.03, 0.01025, 0.005]  # the first from the baseline's mean


def test_text_output(tmp_path, capsys):
    assert run(write_log(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "8 runs: the baseline's 2, then 6 experiments: 3 kept, 2 discarded, 1 crashed (keep rate 50%)" in out
    assert "baseline  1.000250" in out and "best      0.955000" in out
    assert "4.52%" in out
    lines = out.splitlines()
    first = next(i for i, line in enumerate(lines) if "deeper model" in line)
    assert "+0.030000" in lines[first] and "raise matrix lr" in lines[first + 1]
    assert (tmp_path / "progress.png").exists()


def test_json_output(tmp_path, capsys):
    assert run(write_log(tmp_path), "--json") == 0
    data = json.loads(capsys.readouterr().out)  # stdout is pure JSON
    assert data["counts"] == {"keep": 4, "discard": 3, "crash": 1}
    assert data["total"] == 8 and data["keep_rate"] == 0.5
    assert data["baseline"]["val_bpb"] == pytest.approx(1.00025)
    assert data["baseline"]["commits"] == ["aaaaaaa", "aaaaaaa"] and data["baseline"]["noise"] == pytest.approx(0.0005)
    assert data["best"]["val_bpb"] == 0.955
    assert data["improvement"]["absolute"] == pytest.approx(0.04525)
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


def test_malformed_rows_are_skipped_by_the_summary_in_one_warning_line(tmp_path, capsys):
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
    assert len(warnings) == 1 and warnings[0].startswith("warning: skipped: ")
    assert "results.tsv:10:" in warnings[0] and "3 more lines" in warnings[0] and "fix that line" in warnings[0]
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


def test_several_logs_one_summary_and_one_chart(tmp_path, monkeypatch, capsys):
    # one log per GPU worktree; with no argument analysis.py finds them itself
    for i, shift in enumerate((0.0, -0.02)):
        folder = tmp_path / "worktrees" / f"gpu{i}"
        folder.mkdir(parents=True)
        write_log(folder, [(c, v + shift if v else v, m, s, d) for c, v, m, s, d in ROWS])
    monkeypatch.chdir(tmp_path)
    assert analysis.main(["--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [x["log"] for x in data["logs"]] == ["worktrees/gpu0/results.tsv", "worktrees/gpu1/results.tsv"]
    assert data["total"] == 16 and data["counts"] == {"keep": 8, "discard": 6, "crash": 2}
    assert data["best"]["log"] == "worktrees/gpu1/results.tsv"
    assert data["best"]["val_bpb"] == pytest.approx(0.935)
    assert data["logs"][0]["best"]["val_bpb"] == 0.955
    check_png(tmp_path / "progress.png")

    assert analysis.main(["worktrees/gpu0/results.tsv", "worktrees/gpu1/results.tsv", "--no-png"]) == 0
    out = capsys.readouterr().out
    assert out.count("8 runs: the baseline's 2, then 6 experiments: 3 kept") == 2
    assert "overall: 12 experiments in 2 logs, 6 kept; best 0.935000 in worktrees/gpu1/results.tsv" in out


def test_one_log_found_by_default(tmp_path, monkeypatch, capsys):
    write_log(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert analysis.main(["--no-png"]) == 0
    assert "results.tsv: 8 runs" in capsys.readouterr().out


def test_decide_rule_edges():
    """The rule in program.md, without git: the baseline, the noise floor, a crashed baseline, and
    an experiment's first run, which never passes alone (harness/keep_rule.py decides from there)."""
    def row(v, status, commit="aaaaaaa"):
        return {"commit": commit, "val_bpb": v, "memory_gb": 1.0, "status": status, "description": ""}

    def run(v, steps=100, sha="x"):
        return empty_run(sha=sha, val_bpb=v, num_steps=steps, mfu_percent=40.0)

    assert analysis.decide([], run(1.0), "aaaaaaa", {})["decision"] == "keep"
    crashed = [row(0.0, "crash")]
    d = analysis.decide(crashed, run(1.0), "aaaaaaa", {})
    assert d["decision"] == "keep" and "run 1 of 2" in d["why"]  # the crash is not a baseline run
    second = analysis.decide(crashed + [row(1.0, "keep")], run(1.0, sha="y"), "aaaaaaa", d["state"])
    assert second["noise"] == analysis.NOISE_FLOOR and second["best"] == 1.0
    base = crashed + [row(1.0, "keep"), row(1.0, "keep")]
    d = analysis.decide(base, run(0.5, sha="z"), "bbbbbbb", second["state"])
    assert d["decision"] == "rerun" and d["step"] == "incumbent"  # a lucky-looking first run is never kept alone
    assert d["state"]["next"] == {"role": "incumbent", "commit": "aaaaaaa"}
    assert [r["role"] for r in d["state"]["runs"]] == ["baseline", "baseline", "candidate"]
    assert analysis.decide(base, run(None), "bbbbbbb", {})["decision"] == "crash"
    assert analysis.decide(base, run(1.0), "aaaaaaa", {})["step"] == "no change"


def test_a_no_verdict_discard_logs_the_candidate_s_value_not_the_incumbent_s():
    """A machine whose pace keeps flipping: the experiment ends, discarded with no verdict, on the
    incumbent's run. Log writes under the candidate its runs after the first (1.25), never the
    run.log's value (the incumbent's 1.3), which would put the old commit's result in its row."""
    def night_run(commit, role, v, minute, steps, sha):
        return {"commit": commit, "role": role, "val_bpb": v, "steps": steps, "time": minute * 60, "sha": sha}

    rows = [{"commit": "aaaaaaa", "val_bpb": v, "memory_gb": 1.0, "status": "keep", "description": ""}
            for v in (1.400, 1.404)]
    night = [night_run("aaaaaaa", role, v, m, 200, f"s{m}") for role, v, m in  # a steady pace, then flips
             (("baseline", 1.400, -30), ("baseline", 1.404, -24), *(("incumbent", 1.402, m) for m in (-18, -12, -6, 0)),
              ("incumbent", 1.400, 6), ("incumbent", 1.404, 12), ("incumbent", 1.400, 18), ("incumbent", 1.404, 24))]
    night.append(night_run("bbbbbbb", "candidate", 1.2, 30, 200, "s30"))
    for i in range(5):  # candidate, incumbent, ... each pair at another pace
        mine = i % 2 == 0
        night.append(night_run("bbbbbbb" if mine else "aaaaaaa", "candidate" if mine else "incumbent",
                               1.25 if mine else 1.3, 36 + 6 * i, (170, 240)[i // 2 % 2], f"t{i}"))
    last = empty_run(sha="last", val_bpb=1.3, num_steps=170, mfu_percent=40.0, role="incumbent", finished=66 * 60)
    d = analysis.decide(rows, last, "aaaaaaa", {"runs": night})
    assert d["decision"] == "discard" and "no verdict" in d["why"], d["why"]
    assert (d["commit"], d["value"]) == ("bbbbbbb", pytest.approx(1.25))


def test_a_run_the_machine_stretched_is_rerun_the_baselines_too():
    """Spoiled is what the machine did (wall seconds per budgeted second), not the run's own pace."""
    def run(v, sha, wall=60.0, steps=100, device="CPU x (2 cores)"):
        return empty_run(sha=sha, val_bpb=v, num_steps=steps, mfu_percent=40.0, training_seconds=60.0,
                         training_wall_seconds=wall, device=device)

    def row(v, commit="aaaaaaa"):
        return {"commit": commit, "val_bpb": v, "memory_gb": 1.0, "status": "keep", "description": ""}

    d = analysis.decide([], run(2.4, "s1", wall=130.0), "aaaaaaa", {})  # a busy neighbour: no bar from it
    assert d["decision"] == "rerun" and d["step"] == "spoiled" and "130 s of wall time" in d["why"]
    again = analysis.decide([], run(2.3, "s2", wall=125.0), "aaaaaaa", d["state"])
    assert again["decision"] == "keep" and again["step"] == "baseline 1"  # spoiled twice: judged as it is
    d = analysis.decide([row(2.2)], run(2.4, "s3", wall=125.0), "aaaaaaa", {})
    assert analysis.decide([row(2.2)], run(2.4, "s3", wall=100.0), "aaaaaaa", {})["decision"] == "keep"
    assert d["decision"] == "rerun", "the baseline's second run is tested too"
    base = [row(2.2), row(2.21)]
    state = {"baseline_runs": {"s1": [100, 40.0], "s2": [100, 40.0]}}
    slow = run(2.5, "s4", steps=30)
    slow["mfu_percent"] = 10.0  # slow code lowers both, as a starved run does
    assert analysis.decide(base, slow, "bbbbbbb", state)["step"] != "spoiled", \
        "a slow commit on a quiet CPU is judged, not re-run"
    on_gpu = analysis.decide(base, run(2.5, "s5", steps=30, device="NVIDIA H100"), "bbbbbbb",
                             {**state, "baseline_runs": {"s1": [100, 40.0]}})
    assert on_gpu["step"] != "spoiled"  # MFU unchanged: the code, not the machine
    starved = run(2.5, "s6", steps=30, device="NVIDIA H100")
    starved["mfu_percent"] = 10.0
    assert analysis.decide(base, starved, "bbbbbbb", state)["step"] == "spoiled"  # a GPU's clock is the wall's


# The baseline's two runs differ, and a kept run beats their mean but not the first run alone:
# a summary measuring from the first run would see no improvement at all.
TWO_BASELINES = [
    ("aaaaaaa", 0.000000, 0.0, "crash", "baseline (out of memory)"),
    ("bbbbbbb", 1.000000, 44.0, "keep", "baseline"),
    ("bbbbbbb", 1.020000, 44.0, "keep", "baseline run 2"),
    ("ccccccc", 1.005000, 44.0, "keep", "tweak"),
    ("ddddddd", 1.030000, 44.0, "discard", "worse"),
]


def test_summary_json_chart_and_decide_share_decides_baseline(tmp_path, capsys):
    path = write_log(tmp_path, TWO_BASELINES)
    rows, _ = analysis.read_log(path)
    assert analysis.best_of(rows)["val_bpb"] == pytest.approx(1.005)
    summary = analysis.summarize(rows)
    base = summary["baseline"]
    assert base["val_bpb"] == pytest.approx(1.01) and base["noise"] == pytest.approx(0.02)
    assert base["commits"] == ["bbbbbbb", "bbbbbbb"] and base["commit"] == "bbbbbbb"  # what Confirm retrains
    assert summary["best"]["val_bpb"] == pytest.approx(1.005) and summary["best"]["commit"] == "ccccccc"
    assert summary["improvement"]["absolute"] == pytest.approx(0.005)
    xs, ys = analysis.staircase(rows, base)  # the chart's running best starts at Decide's bar
    assert xs[:2] == [2, 4] and ys == pytest.approx([1.01, 1.005, 1.005])
    assert run(path, "--json", "--no-png") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["baseline"]["val_bpb"] == pytest.approx(1.01) and data["baseline"]["noise"] == pytest.approx(0.02)
    assert data["best"]["commit"] == "ccccccc" and data["improvement"]["absolute"] == pytest.approx(0.005)
    assert run(path, "--no-png") == 0
    out = capsys.readouterr().out
    assert "baseline  1.010000" in out and "best      1.005000" in out and "improved  0.005000" in out


def test_keep_rate_counts_experiments_not_the_baselines_runs(tmp_path, capsys):
    rows = [("9999999", 0.0, 0.0, "crash", "baseline"),  # attempts at the baseline are no experiments
            ("aaaaaaa", 1.0, 44.0, "keep", "baseline"), ("aaaaaaa", 1.001, 44.0, "keep", "baseline run 2"),
            ("bbbbbbb", 0.99, 44.0, "keep", "better"), ("ccccccc", 0.995, 44.0, "discard", "worse")]
    assert run(write_log(tmp_path, rows), "--json", "--no-png") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["keep_rate"] == 0.5 and data["experiments"] == {"keep": 1, "discard": 1, "crash": 0}
    assert data["counts"] == {"keep": 3, "discard": 1, "crash": 1}  # every row, as before
    assert [r["commit"] for r in data["ranked"]] == ["bbbbbbb"]  # "baseline run 2" is no kept experiment


def test_summary_names_the_setup_and_smoke_proves_only_the_loop(tmp_path, monkeypatch, capsys):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "setup.json").write_text('{"setup": "smoke", "source": "x", "constants": {}}')
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    path = write_log(tmp_path)
    assert run(path, "--no-png") == 0
    out = capsys.readouterr().out
    assert "results.tsv (setup smoke): 8 runs" in out and "only prove that the loop runs" in out
    from harness import runrecord
    record = tmp_path / ".autoresearch" / "autoresearch-runs" / "r1"  # no git here: the records' folder beside
    record.mkdir(parents=True)
    runrecord.note("run", {"id": "r1", "commit": "abcdef1", "setup": "full"}, str(record))
    (tmp_path / "run.log").write_text("commit: abcdef1\nrun: r1\n")
    assert run(path, "--no-png") == 0  # the record of run.log beside the log says which setup the night ran
    out = capsys.readouterr().out
    assert "(setup full)" in out and "only prove" not in out


@pytest.mark.parametrize("interruption", ["mid-write", "before the rename"])
def test_an_interrupted_state_write_keeps_the_pending_rerun(tmp_path, monkeypatch, interruption):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.chdir(tmp_path)
    pending = {"commit": "bbbbbbb", "val_bpb": 0.9996, "sha": "x"}
    analysis.save_state({"pending": pending})
    if interruption == "mid-write":  # json cannot encode the new state halfway through: as a crash there
        new_state = {"pending": pending, "logged": ["y"], "later": object()}
    else:
        new_state = {"logged": ["y"]}
        monkeypatch.setattr(analysis.os, "replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises((TypeError, KeyboardInterrupt)):
        analysis.save_state(new_state)
    assert analysis.load_state() == {"pending": pending}  # the previous state, whole
    assert sorted(p.name for p in (tmp_path / ".git").iterdir() if "state" in p.name) == [analysis.STATE]


def test_a_run_is_what_its_record_says_never_what_run_log_prints(tmp_path):
    from harness import runrecord
    record = tmp_path / ".autoresearch" / "autoresearch-runs" / "r1"  # no git here: the records' folder beside
    record.mkdir(parents=True)
    runrecord.note("run", {"id": "r1", "commit": "1a2b3c4d5e", "setup": "smoke", "exit": 1}, str(record))
    (tmp_path / "run.log").write_text("commit: 1a2b3c4\nrun: r1\nTraceback (most recent call last):\n"
                                      "ValueError: bad\nrun ended: exit 1\n")
    run_ = analysis.read_run(str(tmp_path / "run.log"))
    assert run_["commit"] == "1a2b3c4" and run_["val_bpb"] is None
    assert run_["fail"] == "train.py exited with code 1: ValueError: bad"  # the crash's own last line
    (tmp_path / "run.log").write_text("commit: 1a2b3c4\nval_bpb:          2.000000\n\nrun ended: exit 0\n")
    run_ = analysis.read_run(str(tmp_path / "run.log"))  # no record named: printed, never recorded
    assert run_["unrecorded"] and run_["val_bpb"] is None and run_["commit"] is None
