"""Confirm, the morning's check that the night's gain is real: the baseline's commit and the best
kept commit are trained N times each, alternating, in temporary git worktrees, and this checkout's
judge also scores the test split the loop never sees. It never touches HEAD, the work tree or
results.tsv (part of the judge: its verdict is a decision)."""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from harness import runrecord
from harness.cache import TEST_ROWS_FILE, CACHE_DIR, write_json_atomically
from harness.errors import fail
from harness.results import baseline_of, best_of
from harness.run import TIMEOUT, TRAIN_COMMAND, judged_worktree, remove_worktree, run_summary, watch

def confirmation_run(worktree, log_path):
    """train.py once in confirmation mode: ({val_bpb, test_bpb, num_steps}, None) or (None, why),
    the numbers from the judge's record of the run. It runs on this interpreter, the project's
    environment that `uv run analysis.py` set up, so the temporary worktree needs none of its own."""
    run_dir = log_path + ".record"
    os.makedirs(run_dir, exist_ok=True)
    env = dict(os.environ, AUTORESEARCH_CONFIRM="1", **{runrecord.RUN_DIR_ENV: run_dir})
    with open(log_path, "w") as log:
        code, stopped = watch(TRAIN_COMMAND, TIMEOUT, env=env, cwd=worktree, stdout=log,
                              stderr=subprocess.STDOUT, announce=False)
    if stopped and stopped.startswith("KILLED"):
        raise KeyboardInterrupt  # the human stopped Confirm: its caller removes the worktrees
    if stopped:
        return None, f"TIMEOUT after {TIMEOUT} s"
    text = open(log_path, errors="replace").read().replace("\r", "\n")
    judge = runrecord.read_parts(run_dir).get("judge") or {}
    figures = {"val_bpb": judge.get("val_bpb"), "test_bpb": judge.get("test_bpb"),
               "num_steps": run_summary(text, ("num_steps",))["num_steps"]}
    if code != 0 or figures["val_bpb"] is None or figures["test_bpb"] is None:
        last = [line for line in text.splitlines() if line.strip() and not line.startswith("step ")]
        return None, f"crash, exit {code}: {last[-1][:150] if last else 'no output'}"
    return figures, None


def confirmation_verdict(runs, night_noise):
    """The numbers and the verdict: the test gain against the spread of the repeats (or the
    night's noise, if larger); crashed runs are reported, never averaged in."""
    ok = {side: [r for r in rs if r["figures"]] for side, rs in runs.items()}
    out = {key: {side: statistics.mean(r["figures"][key] for r in ok[side]) if ok[side] else None for side in runs}
           for key in ("test_bpb", "val_bpb")}
    out.update(test_gain=None, val_gain=None, spread=None)
    if not ok["baseline"] or not ok["best"]:
        out["verdict"] = "cannot confirm: every run of the " + ("baseline" if not ok["baseline"] else "best commit") + " crashed"
        out["line"] = f"confirm: {out['verdict']}"
        return out
    test = {side: [r["figures"]["test_bpb"] for r in ok[side]] for side in ok}
    spread = max([max(v) - min(v) for v in test.values()] + [night_noise or 0.0])
    gain = out["test_bpb"]["baseline"] - out["test_bpb"]["best"]
    val_gain = out["val_bpb"]["baseline"] - out["val_bpb"]["best"]
    if gain <= 0:
        verdict = "vanishes: on the test split the best commit is no better than the baseline"
    elif gain <= spread:
        verdict = f"shrinks into the noise: the test gain is within the spread of the repeats ({spread:.6f})"
    else:
        verdict = f"holds: the test gain is beyond the spread of the repeats ({spread:.6f})"
        if gain < val_gain / 2:
            verdict += ", though under half the val gain"
    out.update(test_gain=gain, val_gain=val_gain, spread=spread, verdict=verdict,
               line=(f"confirm: baseline test_bpb {out['test_bpb']['baseline']:.6f}, best test_bpb "
                     f"{out['test_bpb']['best']:.6f}, gain {gain:.6f} (val gain {val_gain:.6f}); {verdict}"))
    return out


def confirmation_path(beside):
    return os.path.join(os.path.dirname(os.path.abspath(beside)), "confirm.json")


def confirm_runs(targets, n_runs, tmp, say):
    """Train each target n_runs times in its own worktree, alternating (a slow spell of the machine
    hits both): {side: [{figures, crash}]}. The caller removes the worktrees, even when interrupted."""
    runs, t0 = {side: [] for side in targets}, time.time()
    order = list(targets) * n_runs
    for side, row in targets.items():
        judged_worktree(os.path.join(tmp, side), row["commit"])
    for i, side in enumerate(order, 1):
        elapsed = time.time() - t0
        left = f", about {elapsed / (i - 1) * (len(order) - i + 1) / 60:.0f} min left" if i > 1 else ""
        say(f"[{i}/{len(order)}] {side} {targets[side]['commit']}: training ({elapsed / 60:.0f} min elapsed{left})")
        figures, why = confirmation_run(os.path.join(tmp, side), os.path.join(tmp, f"run{i}.log"))
        runs[side].append({"figures": figures, "crash": why})
        say("    " + (f"val_bpb {figures['val_bpb']:.6f}, test_bpb {figures['test_bpb']:.6f}, "
                     f"{figures['num_steps']:.0f} steps" if figures else f"not counted: {why}"))
    return runs


def confirm(rows, log, n_runs, as_json):
    """The Confirm command, on the log's rows: prints the verdict line (or the JSON) and writes
    confirm.json beside the log."""
    base, best = baseline_of(rows), best_of(rows)
    if base is None or best["commit"] == base["commit"]:
        fail(f"nothing to confirm: {log} has no kept commit better than the baseline")
    # For caches prepared before prepare.py froze a test split (f88fdb4, 2026-11-29): they cannot be
    # confirmed. Remove this check once no cache from before then is in use.
    if not os.path.exists(TEST_ROWS_FILE):
        fail(f"{CACHE_DIR} has no test split (prepared before there were any): prepare a new cache, "
             f"AUTORESEARCH_CACHE=<new folder> uv run prepare.py ..., and run the night there")
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if as_json else (lambda *a: print(*a, flush=True))
    tmp = tempfile.mkdtemp(prefix="autoresearch-confirm-")
    try:
        runs = confirm_runs({"baseline": base, "best": best}, n_runs, tmp, say)
    except KeyboardInterrupt:
        print("interrupted: the temporary worktrees are removed; HEAD, the work tree and the log are as they were",
              file=sys.stderr)
        return 130
    except subprocess.CalledProcessError as e:
        fail(f"git worktree add failed: {e.stderr.decode().strip()}")
    finally:
        for side in ("baseline", "best"):
            remove_worktree(os.path.join(tmp, side))
        shutil.rmtree(tmp, ignore_errors=True)
    result = {**confirmation_verdict(runs, base["noise"]), "runs": runs}
    for side, row in (("baseline", base), ("best", best)):
        result[side] = {"commit": row["commit"], "index": row["index"], "logged_val_bpb": row["val_bpb"],
                        "test_bpb": result["test_bpb"][side], "description": row["description"]}
    write_json_atomically(confirmation_path(log), result)
    print(json.dumps(result, indent=2) if as_json else result["line"])
    return 0
