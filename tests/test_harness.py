"""The harness owns what the rule reads: results.tsv that no hand edit corrupts, a run record
written by the runner, the budget clock and the judge (never train.py's wording), Decide's word
when there is no data, and one definition of best for Decide and the Board."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from test_ratchet import decision, fake_run, git, make_repo, results, settle

sys.path.insert(0, str(ROOT))
import analysis  # noqa: E402
from harness import board, record  # noqa: E402
from harness.run import empty_run  # noqa: E402

HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"


def started(agent, tag):
    for label in ("Create the branch", "Make sure git can commit", "Start the log"):
        assert agent(label, tag=tag).returncode == 0
    return git(agent.repo, "rev-parse", "--short=7", "HEAD").strip()


def commit_edit(agent, line):
    (agent.repo / "train.py").write_text((agent.repo / "train.py").read_text() + f"\n# {line}\n")
    assert agent("Commit", description=line).returncode == 0
    return git(agent.repo, "rev-parse", "--short=7", "HEAD").strip()


@pytest.fixture
def fake_agent(tmp_path):
    return make_repo(tmp_path / "repo", str(tmp_path / "no-cache"))


# ---------------------------------------------------------------------------
# results.tsv: the two data-loss cases, with the exact files that lost data before

def test_log_repairs_a_missing_final_newline_instead_of_gluing_its_row_on(fake_agent):
    agent, repo = fake_agent, fake_agent.repo
    base = started(agent, "newline")
    (repo / "results.tsv").write_text(f"{HEADER}{base}\t0.900000\t2.7\tkeep\tbaseline\n"
                                      f"{base}\t0.901000\t2.7\tkeep\tbaseline again")  # an editor dropped the newline
    idea = commit_edit(agent, "idea")
    assert decision(settle(agent, 0.8, 0.9)) == "keep"
    assert agent("Log", status="keep", description="idea").returncode == 0
    _, rows = results(repo)
    assert [r[4] for r in rows] == ["baseline", "baseline again", "idea"] and rows[2][0] == idea


def test_a_malformed_row_stops_decide_and_log_with_one_line_and_moves_no_baseline(fake_agent):
    agent, repo = fake_agent, fake_agent.repo
    base = started(agent, "malformed")
    text = (f"{HEADER}{base}\t0.900000\t2.7\tkeep\tbaseline\n{base}\tabc\t2.7\tkeep\tbaseline again\n"
            f"bbbbbbb\t0.890000\t2.7\tkeep\tidea one\n")
    (repo / "results.tsv").write_text(text)
    commit_edit(agent, "idea two")
    fake_run(repo, 0.85)
    for out in (agent("Decide"), agent("Log", status="keep", description="idea two")):
        assert out.returncode == 1 and decision(out) is None
        assert out.stderr.strip().count("\n") == 0 and "results.tsv:3: val_bpb 'abc'" in out.stderr
        assert "fix that line" in out.stderr
    assert (repo / "results.tsv").read_text() == text  # nothing written, nothing lost
    rows, problems = analysis.read_log(str(repo / "results.tsv"))
    assert [line for line, _ in problems] == [3]
    assert analysis.baseline_of(rows)["commits"] == [base]  # idea one is never averaged into the bar


def test_an_upstream_log_keeps_its_one_baseline_run_and_confirm_finds_the_kept_idea(tmp_path):
    path = tmp_path / "results.tsv"
    path.write_text(f"{HEADER}aaaaaaa\t0.997900\t44.0\tkeep\tbaseline\nbbbbbbb\t0.993200\t44.2\tkeep\tidea one\n"
                    f"ccccccc\t1.005000\t44.0\tdiscard\tidea two\n")
    rows, problems = analysis.read_log(str(path))
    summary = analysis.summarize(rows)
    assert problems == [] and summary["baseline"]["commits"] == ["aaaaaaa"]
    assert summary["baseline"]["val_bpb"] == 0.9979 and summary["best"]["commit"] == "bbbbbbb"
    assert summary["experiments"] == {"keep": 1, "discard": 1, "crash": 0}
    d = analysis.decide(rows, empty_run(sha="x", val_bpb=0.99), "ddddddd", {})
    # no run history beside that log: the kept idea, the incumbent, runs again before anything is judged
    assert d["decision"] == "rerun" and d["state"]["next"] == {"role": "incumbent", "commit": "bbbbbbb"}


@pytest.mark.parametrize("content, expected", [
    ("commit\tval_bpb\tstatus\tdescription\naaaaaaa\t1.0\tkeep\tbaseline\n",
     "results.tsv:1: the header should be the 5 columns commit val_bpb memory_gb status description"),
    (bytes(range(256)) * 200, "results.tsv is not a log: it holds binary data"),
    (f"{HEADER}aaaaaaa\t1.0\t1.0\tKEPT\tbaseline\n", "results.tsv:2: status 'KEPT' is not keep, discard or crash"),
    (f"{HEADER}aaaaaaa\t1.0\tkeep\n", "results.tsv:2: 3 tab-separated fields where a row has 5"),
])
def test_a_bad_header_junk_or_a_short_row_is_one_line_naming_it(fake_agent, content, expected):
    agent, repo = fake_agent, fake_agent.repo
    started(agent, "junk")
    write = (repo / "results.tsv").write_bytes if isinstance(content, bytes) else (repo / "results.tsv").write_text
    write(content)
    before = (repo / "results.tsv").read_bytes()
    fake_run(repo, 1.0)
    out = agent("Log", status="keep", description="baseline")
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and expected in out.stderr, out.stderr
    assert (repo / "results.tsv").read_bytes() == before
    summary = subprocess.run([sys.executable, "analysis.py", "--no-png"], cwd=repo, capture_output=True, text=True)
    assert summary.stderr.count("warning") == 1  # the morning summary reads on, in one warning line


def test_log_quotes_a_status_as_it_was_typed(fake_agent):
    started(fake_agent, "typed")
    fake_run(fake_agent.repo, 1.0)
    out = fake_agent("Log", status="KEPT", description="baseline")
    assert out.returncode == 1 and "status 'KEPT' is not keep, discard or crash" in out.stderr


# ---------------------------------------------------------------------------
# The run record: the judge's number, the clock's seconds, the runner's ending

def run_train(agent, source):
    """Commit `source` as train.py and Run it with program.md's own Run block."""
    (agent.repo / "train.py").write_text(source)
    assert agent("Commit", description="this train.py").returncode == 0
    out = agent("Run")
    return out, (agent.repo / "run.log").read_text()


def test_a_summary_that_misreports_the_judge_is_a_crash_never_a_result(tmp_path, smoke_cache):
    agent = make_repo(tmp_path / "repo", smoke_cache)
    started(agent, "liar")
    source = (agent.repo / "train.py").read_text()
    assert 'print(f"val_bpb:          {val_bpb:.6f}")' in source
    out, log = run_train(agent, source.replace('{val_bpb:.6f}")', '{val_bpb * 0.9:.6f}")'))
    assert out.returncode == 0 and re.search(r"^harness: val_bpb \d\.\d{6} \(the judge's, [\d,]+ tokens\)", log, re.M)
    decided = agent("Decide")
    for _ in range(2):  # a run a busy machine spoiled is run again, as program.md says
        if decision(decided) == "rerun":
            assert agent("Run").returncode == 0
            decided = agent("Decide")
    assert decision(decided) == "crash" and "train.py's summary says val_bpb" in decided.stdout
    assert "the judge measured" in decided.stdout
    assert agent("Log", status="keep", description="baseline").returncode == 0
    assert results(agent.repo)[1][-1][1:4] == ["0.000000", "0.0", "crash"]


SUMMARY_KEYS = "val_bpb|training_seconds|training_wall_seconds|num_steps|peak_vram_mb|mfu_percent|setup|device"


def reworded(source):
    """train.py with its status line and summary as another agent might have written them."""
    status = "remaining: {remaining:.0f}s"
    assert status in source
    source = source.replace(status, "left {remaining:.0f}")
    source, n = re.subn(rf'print\(f"({SUMMARY_KEYS}):', r'print(f"\1 =', source)
    assert n == 8, n
    return source


def test_rewording_train_py_s_status_and_summary_changes_no_decision(tmp_path, smoke_cache):
    agent = make_repo(tmp_path / "repo", smoke_cache)
    started(agent, "words")
    source = (agent.repo / "train.py").read_text()
    out, log = run_train(agent, reworded(source))  # a train.py whose every line the rule once read is reworded
    assert out.returncode == 0 and "remaining:" not in log and "\nval_bpb:" not in log
    run = analysis.read_run(str(agent.repo / "run.log"))
    for key in ("val_bpb", "training_seconds", "training_wall_seconds", "train_tokens", "setup", "device",
                "peak_vram_mb"):
        assert run[key] is not None, key
    assert run["setup"] == "smoke" and run["device"].startswith("CPU") and run["trained"] is not None
    decided = agent("Decide")
    for _ in range(2):  # a run a busy machine spoiled is run again, as program.md says
        if decision(decided) == "rerun":
            assert agent("Run").returncode == 0
            log, run = (agent.repo / "run.log").read_text(), analysis.read_run(str(agent.repo / "run.log"))
            decided = agent("Decide")
    assert decision(decided) == "keep" and f"val_bpb {run['val_bpb']:.6f}" in decided.stdout
    # the same run.log with the words the rule once read put back: every decision is the same
    plain = analysis.read_run(str(agent.repo / "run.log"))
    original = re.sub(r"left (\d+)", r"remaining: \1s", log)
    (agent.repo / "run.log").write_text(re.sub(rf"^({SUMMARY_KEYS}) =", r"\1:", original, flags=re.M))
    states = [{}, {"baseline_runs": {"a": [run["train_tokens"] * 3, 40.0]}},
              {"pending": {"commit": run["commit"], "val_bpb": 2.0, "sha": "other"}}]
    rows = [{"commit": "0000000", "val_bpb": 9.0, "memory_gb": 1.0, "status": "keep", "description": "baseline",
             "index": 1}, {"commit": "0000000", "val_bpb": 9.1, "memory_gb": 1.0, "status": "keep",
                           "description": "baseline run 2", "index": 2}]
    for log_rows in ([], rows):
        for state in states:
            a = analysis.decide(log_rows, plain, run["commit"], state)
            b = analysis.decide(log_rows, analysis.read_run(str(agent.repo / "run.log")), run["commit"], state)
            assert (a["decision"], a["step"], a["value"]) == (b["decision"], b["step"], b["value"])


def test_with_no_prepared_data_decide_says_stop_and_tell_the_human(fake_agent):
    started(fake_agent, "nodata")
    out = fake_agent("Run")
    assert out.returncode != 0 and "no prepared data" in (fake_agent.repo / "run.log").read_text()
    decided = fake_agent("Decide")
    assert decision(decided) is None and "stop and tell the human" in decided.stdout
    assert "prepare.py yourself" in decided.stdout
    assert fake_agent("Log", status="crash", description="baseline").returncode == 1


def test_run_refuses_a_train_py_that_is_not_committed(fake_agent):
    started(fake_agent, "dirty")
    (fake_agent.repo / "train.py").write_text((fake_agent.repo / "train.py").read_text() + "\n# uncommitted\n")
    assert fake_agent("Run").returncode == 2
    assert "not committed" in (fake_agent.repo / "run.log").read_text()
    assert "Commit them" in fake_agent("Decide").stdout


def test_ctrl_c_kills_train_py_s_whole_process_group_and_says_so(fake_agent):
    agent, repo = fake_agent, fake_agent.repo
    started(agent, "ctrlc")
    worker = f"compile-worker-{os.getpid()}-{time.time_ns()}"  # a child of train.py's, as inductor's are
    (repo / "train.py").write_text("import subprocess, sys, time\n"
                                   f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)', '{worker}'])\n"
                                   "print('training', flush=True)\ntime.sleep(300)\n")
    assert agent("Commit", description="slow").returncode == 0
    proc = subprocess.Popen(agent.command("Run"), shell=True, executable="/bin/bash", cwd=repo, env=agent.env,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while time.time() < deadline and not ((repo / "run.log").exists() and "training" in (repo / "run.log").read_text()):
        time.sleep(0.2)
    record_dir = max((repo / ".git" / "autoresearch-runs").iterdir())
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does to the foreground group
    proc.wait(timeout=60)
    deadline = time.time() + 20
    while time.time() < deadline and "run ended" not in (repo / "run.log").read_text():
        time.sleep(0.2)
    log = (repo / "run.log").read_text()
    assert "KILLED: by SIGINT" in log and log.rstrip().endswith("run ended: exit 137")
    assert json.loads((record_dir / "run.json").read_text())["stopped"] == "KILLED: by SIGINT"
    left = subprocess.run(["pgrep", "-f", worker], capture_output=True, text=True).stdout.split()
    assert left == [], "the kill left train.py's children running"
    out = agent("Decide")
    assert decision(out) == "rerun" and "stopped from outside" in out.stdout


# ---------------------------------------------------------------------------
# One definition of best and of an experiment, for Decide, the summary and the Board

def test_board_and_decide_agree_on_best_and_count_no_baseline_run_as_an_experiment():
    judge = "judge 0123456789ab"

    def entry(commit, val, status="keep", description="x", t=0):
        return record.validate({"commit": commit * 40, "val_bpb": val, "memory_gb": 1.0, "status": status,
                                "description": description, "agent": "solo", "setup": "small", "device": "CPU",
                                "judge": judge, "time": 1e9 + t}, "solo")

    entries = [entry("a", 1.329993, description="baseline"), entry("a", 1.331332, description="baseline run 2", t=1),
               entry("b", 1.3303, status="discard", t=2)]
    b = board.board(entries, judge, "small", "CPU")
    rows = list(board.fleet_logs(entries).values())[0]
    assert b["best"][0]["val_bpb"] == pytest.approx(analysis.best_of(rows)["val_bpb"]) == pytest.approx(1.3306625)
    assert b["agents"]["solo"]["experiments"] == 1 and b["agents"]["solo"]["keeps"] == 0
    text = board.format_board(b)
    assert text.startswith("board: 1 experiment by 1 agent\n")


def test_a_run_log_that_run_did_not_write_is_refused_and_logs_nothing(fake_agent):
    """Upstream's `uv run train.py > run.log 2>&1` leaves a summary the harness never recorded: it
    is no result, whatever it prints (a train.py printing val_bpb * 0.9 was once logged at it)."""
    agent, repo = fake_agent, fake_agent.repo
    started(agent, "plain")
    before = (repo / "results.tsv").read_bytes()
    (repo / "run.log").write_text("Device: CPU\nstep 00099 (100.0%) | loss: 5.0\n---\nval_bpb:          0.500000\n"
                                  "training_seconds: 5.1\nnum_steps:        100\n")
    out = agent("Decide")
    assert out.returncode == 1 and decision(out) is None and "not written by Run" in out.stdout, out.stdout
    for status in ("keep", "discard", "crash"):
        assert agent("Log", status=status, description="plain").returncode == 1
    assert (repo / "results.tsv").read_bytes() == before
