"""Run: train.py once under the harness's watchdog, and what the rule reads of it (part of the judge).

    uv run analysis.py --run > run.log 2>&1

The runner checks that train.py is committed and the judge intact, gives the run a record
(harness/runrecord.py), starts train.py in its own process group, kills that whole group after
TIMEOUT seconds or when the runner itself is interrupted (SIGINT, SIGTERM, SIGHUP), and ends
run.log with its own lines, `run ended: exit <code>` last. read_run() then gives Decide and Log
the run as the harness saw it: the judge's val_bpb, the budget clock's seconds, how it ended.
train.py's own prints (its summary, its status line) only serve humans and the traceback: a
run.log that names no record (`uv run train.py > run.log`) is never a result.
"""

import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from harness import JUDGE_FILES, runrecord

TIMEOUT = 540  # seconds: a 300 s budget plus start-up, compile and evaluation, with room to spare
RUNS = "autoresearch-runs"  # the records' folder, in the git directory (one per worktree)
STATE = "autoresearch-state.json"  # Decide's state, beside it: the night's runs, the baseline's paces
KEEP_RECORDS = 50
TRAIN_COMMAND = [sys.executable, "-m", "harness.guard", "train.py"]  # the evaluation rows kept from train.py
SUMMARY_KEYS = ("val_bpb", "peak_vram_mb", "num_steps", "mfu_percent", "total_seconds", "training_seconds",
                "training_wall_seconds")


def git_out(*args, cwd=None):
    r = subprocess.run(["git", *args], capture_output=True, text=True, cwd=cwd)
    return r.stdout.strip() if r.returncode == 0 else None


def records_dir(beside="."):
    """The records' folder of the checkout holding `beside` (a run.log, or the work tree)."""
    folder = os.path.dirname(os.path.abspath(beside)) if os.path.isfile(beside) else beside
    gitdir = git_out("rev-parse", "--absolute-git-dir", cwd=folder)
    return os.path.join(gitdir, RUNS) if gitdir else os.path.join(os.path.abspath(folder), ".autoresearch", RUNS)


def recorded_setup():
    """The setup the cache was prepared for, read from the cache without importing torch."""
    cache = os.environ.get("AUTORESEARCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "autoresearch")
    try:
        with open(os.path.join(cache, "setup.json")) as f:
            return json.load(f).get("setup")
    except (OSError, ValueError, AttributeError):
        return None


def refusal(baseline_commit):
    """Why this work tree must not be run, or None: a train.py that differs from HEAD (the result
    would be logged under a commit that is not what ran), or judge files that differ from the
    baseline's commit (its numbers would not compare with the night's)."""
    if git_out("rev-parse", "--verify", "--quiet", "HEAD") is None:
        return "there is no commit to run: Commit train.py first"
    if git_out("diff", "--name-only", "HEAD", "--", "train.py"):
        return "train.py has changes that are not committed: Commit them (or git checkout train.py), then Run"
    if baseline_commit:
        changed = git_out("diff", "--name-only", baseline_commit, "--", *JUDGE_FILES)
        if changed:
            files = " ".join(changed.split())
            return (f"the judge was modified since the baseline ({files}): run git checkout {baseline_commit} -- "
                    f"{files}, then Amend, then Run")
    return None


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def judged_worktree(path, commit):
    """A temporary checkout of `commit` judged by this checkout's judge: its JUDGE_FILES and the
    harness they import, copied over the commit's own (an old commit has neither the test split's
    scoring nor the run record), and a machinery.py for a train.py that still imports one
    (harness/compat_machinery.py: today's budget clock under the old name). The caller removes it (remove_worktree), however it ends."""
    subprocess.run(["git", "worktree", "add", "--quiet", "--detach", path, commit], check=True, capture_output=True)
    for name in JUDGE_FILES:
        if os.path.exists(os.path.join(ROOT, name)):
            os.makedirs(os.path.dirname(os.path.join(path, name)), exist_ok=True)
            shutil.copy(os.path.join(ROOT, name), os.path.join(path, name))
    shutil.copytree(os.path.join(ROOT, "harness"), os.path.join(path, "harness"), dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(ROOT, "harness", "compat_machinery.py"), os.path.join(path, "machinery.py"))


def remove_worktree(path):
    subprocess.run(["git", "worktree", "remove", "--force", path], capture_output=True)
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run(["git", "worktree", "prune"], capture_output=True)


def new_record(commit, baseline_commit, role):
    """A fresh record folder for this run, its run.json written; old records beyond KEEP_RECORDS go."""
    base = records_dir()
    os.makedirs(base, exist_ok=True)
    for old in sorted(os.listdir(base))[:-KEEP_RECORDS]:
        shutil.rmtree(os.path.join(base, old), ignore_errors=True)
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    run_dir = os.path.join(base, run_id)
    os.makedirs(run_dir)
    started = {"id": run_id, "commit": commit, "role": role, "setup": recorded_setup(), "started": time.time(),
               "timeout": TIMEOUT, "baseline_commit": baseline_commit, "judge_files": list(JUDGE_FILES)}
    runrecord.note("run", started, run_dir)
    return run_id, run_dir, started


def say(text, stream=sys.stdout):
    print(text, file=stream, flush=True)


def watch(command, timeout, env=None, cwd=None, stdout=None, stderr=None, announce=True):
    """The one process-group runner, for every command that may have to kill what it started (Run,
    Confirm, the hub's git): `command` in its own process group, the whole group killed after
    `timeout` seconds or when we get SIGINT, SIGTERM or SIGHUP (compile workers and ssh children
    included; a signal already ignored, as under nohup or `&`, stays ignored, and our own handlers
    are restored after). Returns (exit code, how it was stopped or None); with `announce`, the
    stop is also said on stderr, on a line of its own. The handlers are ours before the command
    starts: a signal in between would kill us and leave the command running on, unwatched."""
    stopped, started = [], []

    def stop(why):
        stopped.append(why)
        if announce:
            say(f"\n{why}", sys.stderr)
        try:
            if started:
                os.killpg(started[0].pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    for sig, handler in before.items():
        if handler != signal.SIG_IGN:
            signal.signal(sig, lambda num, _: stop(f"KILLED: by {signal.Signals(num).name}"))
    try:
        proc = subprocess.Popen(command, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                start_new_session=True)
        started.append(proc)
        if stopped:  # a signal came while it started
            os.killpg(proc.pid, signal.SIGKILL)
        deadline = time.time() + timeout
        while proc.poll() is None:
            try:
                proc.wait(timeout=max(0.1, min(1.0, deadline - time.time())))
            except subprocess.TimeoutExpired:
                if time.time() >= deadline and not stopped:
                    stop(f"TIMEOUT: killed after {timeout:g} s")
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    code = proc.returncode
    return (128 - code if code < 0 else code), (stopped[0] if stopped else None)


def run(baseline_commit=None, incumbent=None, command=None, timeout=TIMEOUT):
    """The Run command: train.py once, its record kept, run.log's last line `run ended: exit <code>`.
    With `incumbent` (the keep rule asked for it), the last kept commit's train.py runs instead, in
    a temporary worktree, so that the machine as it is now measures it beside the candidate."""
    commit = git_out("rev-parse", incumbent or "HEAD") or ""
    say(f"commit: {commit[:7] or '?'}")
    run_id, run_dir, record = new_record(commit, baseline_commit, "incumbent" if incumbent else "candidate")
    say(f"run: {run_id}")
    if incumbent:
        say(f"role: incumbent (the last kept commit, {commit[:7]}, run again beside the candidate)")
    why = refusal(baseline_commit)
    if why:
        runrecord.note("run", {**record, "refused": why, "exit": 2, "ended": time.time()}, run_dir)
        say(f"error: {why}", sys.stderr)
        say("run ended: exit 2", sys.stderr)
        return 2
    worktree = os.path.join(tempfile.mkdtemp(prefix="autoresearch-incumbent-"), "incumbent") if incumbent else None
    try:
        if worktree:
            judged_worktree(worktree, commit)
        code, stopped = watch(command or TRAIN_COMMAND, timeout, cwd=worktree,
                              env=dict(os.environ, **{runrecord.RUN_DIR_ENV: run_dir}))
    finally:
        if worktree:
            remove_worktree(worktree)
            shutil.rmtree(os.path.dirname(worktree), ignore_errors=True)
    record.update(exit=code, stopped=stopped, ended=time.time())
    record["wall_seconds"] = round(record["ended"] - record["started"], 1)
    runrecord.note("run", record, run_dir)
    say(harness_line(read_record(run_id)), sys.stderr)
    say(f"run ended: exit {code}", sys.stderr)
    return code


def harness_line(rec):
    """The harness's one line in run.log, for the human reading it."""
    judge = rec.get("judge") or {}
    clock = judge.get("clock") or rec.get("clock") or {}  # the judge's note of it is the final one
    parts = [f"val_bpb {judge['val_bpb']:.6f} (the judge's, {judge['tokens']:,} tokens)"
             if judge.get("val_bpb") is not None else "no val_bpb from the judge"]
    if clock.get("budget_seconds") is not None:
        parts.append(f"{clock['budget_seconds']:.1f} s of budget in {clock['wall_seconds']:.1f} s of wall time")
    parts.append(f"{rec['run'].get('wall_seconds', 0):.0f} s in all")
    return "harness: " + ", ".join(parts)


def read_record(run_id, beside="."):
    """The record of run `run_id`: {run, clock, judge} (those present), or None if it is gone."""
    parts = runrecord.read_parts(os.path.join(records_dir(beside), os.path.basename(run_id)))
    return parts if "run" in parts else None


def run_summary(text, keys=SUMMARY_KEYS):
    """The numbers of train.py's closing summary (`val_bpb:  0.99`, `num_steps: 953`, ...): the last
    of each in the text; None where missing or not a finite number (a diverged run's nan)."""
    figures = {}
    for key in keys:
        found = re.findall(rf"^{key}:\s+(\S+)\s*$", text, re.M)
        try:
            value = float(found[-1]) if found else None
        except ValueError:
            value = None
        figures[key] = value if value is not None and math.isfinite(value) else None
    return figures


def empty_run(**values):
    """A run with every field read_run gives, unknown (None) but for `values`."""
    keys = ("sha", "commit", "setup", "device", "record", "refused", "exit", "timeout", "killed", "fail", "finished",
            "mismatch", "trained", "scored_tokens", "train_tokens", "printed_val_bpb", *SUMMARY_KEYS)
    return {**dict.fromkeys(keys), "lost": False, "ended": True, "role": "candidate", "traceback": False, "oom": False, "error": "",
            **values}


def read_run(path="run.log"):
    """What Decide and Log know of the run in run.log, or None when there is none: what its record
    says (run.log names it). A run.log that names no record was not written by Run (`uv run
    train.py > run.log`): it is `unrecorded`, never a result, whatever train.py printed."""
    try:
        data = open(path, "rb").read()
    except OSError:
        return None
    text = data.decode("utf-8", "replace").replace("\r", "\n")
    run = {"sha": hashlib.sha1(data).hexdigest(), **run_summary(text), "printed_val_bpb": None}
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    run["traceback"] = "Traceback (most recent call last)" in text
    run["oom"] = "out of memory" in text.lower()
    errors = [l for l in lines if not l.startswith(("step ", "run ended", "commit: ", "run: ", "role: ", "harness: "))]
    run["error"] = errors[-1][:200] if errors else ""
    run["fail"] = next((l for l in lines if l.startswith("FAIL")), None)  # train.py's own verdict: diverged
    run_id = re.search(r"^run: (\S+)\s*$", text, re.M)
    if run_id:
        return from_record(run, read_record(run_id.group(1), path), run_id.group(1))
    return {**empty_run(sha=run["sha"]), "unrecorded": True}


def from_record(run, rec, run_id):
    """The run as its record says: the judge's val_bpb, the clock's seconds, the runner's ending."""
    run.update(record=run_id, lost=rec is None, refused=None, mismatch=None)
    if rec is None:
        return {**run, "val_bpb": None, "commit": None, "setup": None, "device": None, "timeout": None,
                "killed": None, "ended": True, "trained": None, "exit": None, "role": "candidate", "finished": None}
    started, judge, clock = rec["run"], rec.get("judge") or {}, rec.get("clock") or {}
    clock = judge.get("clock") or clock  # the judge notes the clock's span as training ended
    stopped = started.get("stopped") or ""
    printed = run["val_bpb"]
    run.update(commit=(started.get("commit") or "")[:7] or None, setup=started.get("setup"),
               role=started.get("role") or "candidate", finished=started.get("ended"),
               device=judge.get("device"), refused=started.get("refused"), exit=started.get("exit"),
               ended="exit" in started, timeout=stopped if stopped.startswith("TIMEOUT") else None,
               killed=stopped if stopped.startswith("KILLED") else None, printed_val_bpb=printed,
               val_bpb=judge.get("val_bpb"), scored_tokens=judge.get("tokens"),
               train_tokens=judge.get("train_tokens"), peak_vram_mb=judge.get("peak_memory_mb"),
               training_seconds=clock.get("budget_seconds"), training_wall_seconds=clock.get("wall_seconds"),
               total_seconds=started.get("wall_seconds"))
    run["trained"] = (clock["budget_seconds"], clock["wall_seconds"]) if clock.get("wall_seconds") else None
    if printed is not None and run["val_bpb"] is not None and abs(printed - run["val_bpb"]) > 1e-6:
        run["mismatch"] = (f"train.py's summary says val_bpb {printed:.6f}, the judge measured "
                           f"{run['val_bpb']:.6f}: train.py must print evaluate_bpb's number unchanged")
    if judge.get("broke"):  # the judge's own verdict on the budget, whatever train.py printed
        run["fail"] = f"FAIL: {judge['broke']}"
    if run["exit"] not in (None, 0) and not (run["timeout"] or run["killed"] or run["fail"]):
        run["fail"] = f"train.py exited with code {run['exit']}" + (f": {run['error']}" if run["error"] else "")
    return run
