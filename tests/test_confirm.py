"""`uv run analysis.py --confirm`: the night's best against its baseline, on the test split.

A throwaway repository holds a handicapped baseline (learning rates cut tenfold) and a kept fix
that restores them, as the end-to-end test's night would; confirm must find the fix better on the
test rows and leave the repository exactly as it found it, also when interrupted."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from test_ratchet import make_repo, set_learning_rates


def night(tmp_path, smoke_cache):
    run = make_repo(tmp_path / "repo", smoke_cache)
    repo = run.repo
    base = subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    set_learning_rates(repo / "train.py", 1.0)
    subprocess.run("git -c user.name=t -c user.email=t@t commit -qam 'restore the learning rates'", shell=True,
                   cwd=repo, check=True, env=run.env)
    fix = subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    (repo / "results.tsv").write_text("commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
                                      f"{base}\t3.100000\t0.5\tkeep\tbaseline\n"
                                      f"{base}\t3.110000\t0.5\tkeep\tbaseline run 2\n"
                                      f"{fix}\t2.900000\t0.5\tkeep\trestore the learning rates\n")
    (repo / "train.py").write_text((repo / "train.py").read_text() + "\n# an edit in progress\n")
    env = dict(run.env, TMPDIR=str(tmp_path / "tmp"))
    os.makedirs(env["TMPDIR"])
    return repo, env


def snapshot(repo):
    def out(*args):
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True).stdout
    return (out("rev-parse", "HEAD"), out("status", "--porcelain"), (repo / "train.py").read_text(),
            (repo / "results.tsv").read_text(), out("worktree", "list").count("\n"))


def test_confirm_finds_the_fix_better_on_test_and_leaves_everything_as_it_was(tmp_path, smoke_cache):
    repo, env = night(tmp_path, smoke_cache)
    before = snapshot(repo)
    result = subprocess.run([sys.executable, "analysis.py", "--confirm", "--runs", "1"], cwd=repo, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[1/2] baseline" in result.stdout and "[2/2] best" in result.stdout
    line = result.stdout.strip().splitlines()[-1]
    found = re.fullmatch(r"confirm: baseline test_bpb (\S+), best test_bpb (\S+), gain (\S+) \(val gain (\S+)\); (.+)", line)
    assert found, line
    assert abs(float(found[1]) - float(found[2]) - float(found[3])) < 2e-6
    assert float(found[3]) > 0, line  # the fix is better on the test split
    assert snapshot(repo) == before and os.listdir(env["TMPDIR"]) == []
    assert (repo / "confirm.json").exists()


def test_an_interrupted_confirm_removes_its_worktrees(tmp_path, smoke_cache):
    repo, env = night(tmp_path, smoke_cache)
    before = snapshot(repo)
    # Ctrl-C's default restored: a runner that started the suite in the background (nohup ... &)
    # passes SIGINT down ignored, and Python keeps it so
    proc = subprocess.Popen([sys.executable, "analysis.py", "--confirm"], cwd=repo, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert "[1/4] baseline" in proc.stdout.readline()  # training has started in a worktree
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "interrupted" in err
    assert snapshot(repo) == before and os.listdir(env["TMPDIR"]) == []


def test_confirm_runs_a_train_py_committed_before_the_run_record(tmp_path, smoke_cache):
    """A night's baseline from before harness/ existed (its train.py imports machinery's clock and
    prints the old summary) is retrained and scored by this checkout's judge."""
    repo, env = night(tmp_path, smoke_cache)
    old = subprocess.run(["git", "show", "4ff24ef:train.py"], cwd=ROOT, capture_output=True, text=True)
    if old.returncode != 0:
        pytest.skip("a shallow clone without commit 4ff24ef")
    (repo / "train.py").write_text(old.stdout)
    subprocess.run("git -c user.name=t -c user.email=t@t commit --allow-empty -qam 'an old train.py'", shell=True, cwd=repo,
                   check=True, env=env)
    sha = subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], cwd=repo, capture_output=True,
                         text=True).stdout.strip()
    log = (repo / "results.tsv").read_text()
    (repo / "results.tsv").write_text(log + f"{sha}\t2.800000\t0.5\tkeep\tan old train.py\n")
    result = subprocess.run([sys.executable, "analysis.py", "--confirm", "--runs", "1", "--json"], cwd=repo,
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    confirmed = json.loads(result.stdout)
    assert [r["crash"] for side in ("baseline", "best") for r in confirmed["runs"][side]] == [None, None], confirmed
    assert confirmed["best"]["test_bpb"] > 0
