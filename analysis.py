"""The loop's commands (program.md): Run, Decide and Log, and the rule Decide applies; and the
entry point of the morning's summary (harness/summary.py), Confirm and the Board.

    uv run analysis.py [results.tsv ...] [--json] [--no-png]
    uv run analysis.py --run > run.log 2>&1
    uv run analysis.py --decide
    uv run analysis.py --log keep|discard|crash  < description
    uv run analysis.py --confirm [--runs N] [--json] [results.tsv]
    uv run analysis.py --board [--json] [--diff]

The log is tab-separated, `commit val_bpb memory_gb status description`, status keep, discard or
crash (crashes carry val_bpb 0.000000 and memory_gb 0.0). The summary measures the night against
one baseline, Decide's (baseline_of): the mean of the first two runs that did not crash (of three when
those two disagreed in steps: the two that agree). The summary gives the counts, the keep rate (of
the experiments: the baseline's runs are not experiments), the best and the improvement, and the
kept experiments ranked by their gain over the previous kept one; `--json` prints it as one JSON
object. progress.png goes beside the log unless --no-png.
With no argument it reads results.tsv and every worktrees/*/results.tsv (one per GPU): a summary
each, one overall line and one chart in the current folder.

Confirm checks that the night's gain is real: the baseline's commit and the best kept commit are
trained N times each (default 2), alternating, in temporary git worktrees, and this checkout's
judge also scores the test split the loop never sees. It prints `confirm: baseline test_bpb A,
best test_bpb B, gain G (val gain V); <verdict>`, writes confirm.json beside the log (the chart
shows it), and never touches HEAD, the work tree or the log.

The research record (harness/record.py, harness/board.py): Log also records every experiment in git, on the agent's own log
ref, and pushes it to a remote named `hub` when there is one; Board reads every agent's record
(the hub fetched first) and prints the best per setup and device, each agent's progress and the
ideas tried lately. With no log named, the morning summary covers every agent in the record.
"""

import argparse
import json
import os
import statistics
import sys
import time

from harness import board, keep_rule, record, run as runner
from harness.cache import VAL_ROWS_FILE, CACHE_DIR, read_json, write_json_atomically
from harness.chart import plot, shorten, staircase, y_limits  # noqa: F401 (staircase, y_limits: tests read the chart's numbers)
from harness.confirm import confirm
from harness.errors import fail, warn
from harness.results import (BASELINE_AGREE, NOISE_FLOOR, STATUSES, append_row, bar_lowerings, baseline_of,  # noqa: F401
                             baseline_rows, best_of, experiments_begun, parse_row, problem_line, read_log, same_commit)
from harness.run import STATE, git_out, read_run
from harness.summary import (count, default_logs, format_text, incumbent_runs, night_setup,  # noqa: F401
                             read_logs, report, summarize)


# ---------------------------------------------------------------------------
# The loop's two commands: Decide and Log (program.md states the rule in words)

SPOILED = 0.5         # fewer steps and lower MFU than this fraction of the baseline's: a starved run
# Wall seconds per budgeted second of training above which the machine set the pace. The budget
# clock was measured fair up to ~1.7 (one busy process beside a run on 2 cores: 89-103% of a quiet
# run's steps); past 2, more than half the wall time went to others, which was not measured.
STRETCHED = 2.0
# A run the Run line killed, whose training took more wall seconds per budgeted one than this: the
# machine, not the code, pushed it past the kill (a quiet CPU run stays within a few percent).
STRETCHED_KILLED = 1.2
def crashed(run):
    """No val_bpb from the judge, a kill at the time limit, a diverged or failed train.py, or a
    summary that misreports the judge's number: never a result."""
    return run["val_bpb"] is None or bool(run["timeout"] or run["fail"] or run["mismatch"])


def prepared(run):
    """False when the cache has no prepared data (and the run says so): only the human can fix that."""
    return os.path.exists(VAL_ROWS_FILE) or not (run["val_bpb"] is None and "uv run prepare.py" in run["error"])


def state_file():
    gitdir = git_out("rev-parse", "--git-dir")
    return os.path.join(gitdir, STATE) if gitdir else None


def load_state():
    path = state_file()
    state = read_json(path) if path else {}
    return state if isinstance(state, dict) else {}


def save_state(state):
    path = state_file()
    if path:
        write_json_atomically(path, state)


def shorter_by(since, commit):
    """Lines of code (not comments, not blank lines) train.py lost from the commit `since` to
    `commit`: deleted minus added; 0 when unknown."""
    diff = since and commit and git_out("diff", since, commit, "--", "train.py")
    added, deleted = keep_rule.code_lines_changed(diff or "")
    return deleted - added


LOG_BASELINE_CRASH = "Log it as crash, description `baseline` (a crash never becomes the bar)"

# What to do next, for each step of the rule (the presentation; decide() says which step).
NEXT = {
    "no run": "there is no run.log: Run first.",
    "refused": "Run did not start train.py (why: says what to do); do that, then Run.",
    "unrecorded": ("this run.log was not written by Run (a plain `uv run train.py` is for trying, never a result): "
                   "don't log it. Run, then Decide."),
    "no data": ("the cache has no prepared data, which only the human can provide: stop and tell the human "
                "(don't run prepare.py yourself: it picks a setup and downloads)."),
    "lost": "don't log it. Run again (same commit), then Decide.",
    "mismatch": ("Log it as crash (never a result). Make train.py print evaluate_bpb's val_bpb unchanged, Amend, "
                 "Run again."),
    "logged": ("this run.log is already logged in results.tsv: nothing to decide. Go on with the loop "
               "(after a keep the commit stays; after anything else Discard, if not done yet)."),
    "killed": ("don't log it. Run again, with your tool's timeout at 10 minutes (600000 ms), "
               "or with Run in the background and Poll."),
    "running": ("run.log has no result and no end line yet: the run is still going (Poll until it "
                "prints `run ended`), or it was cut off from outside (then Run it again)."),
    "baseline timeout": (f"the baseline ran out of time: {LOG_BASELINE_CRASH}, then Run it again unchanged: a "
                         "first run also compiles from a cold cache. If it times out again, halve "
                         "DEVICE_BATCH_SIZE for this setup in train.py, Commit, Run, Decide."),
    "baseline busy": (f"{LOG_BASELINE_CRASH}, then Run it again unchanged, and so after each such kill: the "
                      "machine was too busy for the run to end within the kill, which no change to train.py "
                      "fixes; a run ends once the machine is quieter."),
    "baseline crash": (f"the baseline crashed: {LOG_BASELINE_CRASH}, then make it run: out of memory, lower "
                       "DEVICE_BATCH_SIZE for this setup in train.py (halve it); anything else, fix what the "
                       "traceback says. Commit, Run, Decide."),
    "crash": ("Log it as crash. A trivial mistake (typo, import, shape): fix it, Amend, "
              "Run again (at most 2 fixes per idea). Otherwise Discard."),
    "baseline 1": "Log it as keep, description `baseline`; then Run again (no edit, no commit) and Decide.",
    "baseline 2": "Log it as keep, description `baseline run 2`; then start the loop.",
    "baseline disagree": ("Log it as keep, description `baseline run 2`; then Run again (no edit, no commit) "
                          "and Decide: a third run settles which two set the bar."),
    "baseline 3": "Log it as keep, description `baseline run 3`; then start the loop.",
    "stretched": ("don't log it. Run again (same commit), then Decide. (If this commit is killed again, "
                  "Decide calls it a crash.)"),
    "no change": "run.log ran the last kept commit: it measured no change. Edit train.py and Commit before you Run.",
    "spoiled": ("don't log it. Run again (same commit), then Decide. (If this commit is that slow again, "
                "Decide judges it as it is.)"),
    "rerun": "don't log it. Run again (no edit, no commit), then Decide: the keep rule needs another run of it.",
    "incumbent": ("don't log it. Run again (no edit, no commit), then Decide: this time Run trains the incumbent "
                  "(the last kept commit) in a temporary worktree, beside your candidate."),
    "incumbent failed": "don't log it. Run again (no edit, no commit), then Decide: the incumbent's run failed.",
    "keep": "Log it as keep. The commit stays: the branch has advanced.",
    "discard": "Log it as discard, then Discard.",
}


def decide(rows, run, head, state, shorter_by=0):
    """program.md's rule, applied to the log so far and this run.log (`head`: the commit it ran).
    Pure: returns a dict with `decision` (keep, discard, rerun, crash; None when there is nothing
    to decide), `step` (which case of the rule: NEXT says what to do), `why`, the numbers, `value`
    and `commit` (what Log writes: the candidate's mean, under the candidate's commit) and the
    state to save. `shorter_by`: lines of code train.py lost against the incumbent."""
    state = json.loads(json.dumps(state))  # a copy: Log judges without saving
    d = {"decision": None, "step": None, "best": None, "noise": None, "gain": None, "value": None,
         "why": "", "state": state, "head": head, "commit": head}
    if run is None or run["sha"] in state.get("logged", []):
        return {**d, "step": "no run" if run is None else "logged"}
    if run.get("unrecorded"):
        return {**d, "step": "unrecorded", "why": "run.log names no run record: the harness did not run it"}
    if run["refused"]:
        return {**d, "step": "refused", "why": run["refused"]}
    if not prepared(run):
        return {**d, "step": "no data", "why": f"no prepared data in {CACHE_DIR}"}
    if run["lost"]:
        return {**d, "decision": "rerun", "step": "lost", "why": f"the record of run {run['record']} is gone"}
    if run["killed"] and run["val_bpb"] is None:
        return {**d, "decision": "rerun", "step": "killed",
                "why": f"the run was stopped from outside ({run['killed']}): not the code's fault"}
    if run["val_bpb"] is None and not (run["ended"] or run["timeout"] or run["fail"] or run["traceback"]):
        return {**d, "step": "running"}
    why = stretched_past_kill(run, head, state)
    if why:
        state["spoiled"] = {"commit": head, "sha": run["sha"]}
        return {**d, "decision": "rerun", "step": "stretched", "why": why}
    runs = baseline_rows(rows)
    in_baseline = not runs or (not experiments_begun(rows, runs) and same_commit(head, runs[0]["commit"])
                               and (len(runs) < 2 or (len(runs) == 2 and disagreeing(state))))
    beside = run["role"] == "incumbent"  # the keep rule asked for the last kept commit's run
    if crashed(run):
        if beside:  # it ran before: the machine's fault, or the harness's, never the candidate's
            return {**d, "decision": "rerun", "step": "incumbent failed", "why": run["timeout"] or run["error"]}
        step = ("mismatch" if run["mismatch"] else "crash" if not in_baseline else "baseline busy"
                if stretched(run) else "baseline timeout" if run["timeout"] else "baseline crash")
        return {**d, "decision": "crash", "step": step, "why": run["mismatch"] or run["timeout"] or run["fail"] or (
            "out of memory" if run["oom"] else run["error"] or "no val_bpb in run.log")}
    d["value"] = run["val_bpb"]
    if not in_baseline and not beside and same_commit(head, kept_commit(rows)):
        return {**d, "step": "no change"}
    why = spoiled(run, head, state, paced=bool(runs))  # the baseline's too: a starved run sets no bar
    if why:
        state["spoiled"] = {"commit": head, "sha": run["sha"]}
        return {**d, "decision": "rerun", "step": "spoiled", "why": why}
    if in_baseline:
        note_run(state, run, head, "baseline")
        return {**d, **judge_baseline(runs, run, state)}
    d.update(judge_experiment(rows, run, head, state, shorter_by))
    if d["decision"] and (state.get("spoiled") or {}).get("commit") == d["commit"]:
        d["why"] = f"a run of this commit was spoiled, the others are judged as they are: {d['why']}"
    return d


def kept_commit(rows):
    """The incumbent: the last kept commit, the one Discard returns to (None before any run)."""
    kept = [r["commit"] for r in rows if r["status"] == "keep"]
    return kept[-1] if kept else None


def note_run(state, run, head, role):
    """This run into the night's history of valid runs (state["runs"], what the keep rule reads):
    once per run.log, however many times Decide reads it."""
    night = state.setdefault("runs", [])
    if not any(r["sha"] == run["sha"] for r in night):
        night.append({"commit": head, "role": role, "val_bpb": run["val_bpb"], "steps": pace_of(run),
                      "time": run["finished"] or time.time(), "sha": run["sha"],
                      "memory_gb": (run["peak_vram_mb"] or 0.0) / 1024})
    return next(r for r in night if r["sha"] == run["sha"])


def judge_experiment(rows, run, head, state, shorter_by):
    """An experiment's run, or the incumbent's run beside it, judged by the keep rule
    (harness/keep_rule.py) against the night's history: keep, discard, or another run and whose.
    The verdict is about the candidate, the commit Log writes."""
    this = note_run(state, run, head, run["role"])
    night = [r for r in state["runs"] if r is not this]
    if not any(r["role"] == "candidate" for r in state["runs"]):
        return {"step": "no change"}  # an incumbent's run with no candidate to judge
    v = keep_rule.decide(night, this, kept_commit(rows), shorter_by)
    state.pop("next", None)
    candidate = keep_rule.pending_candidate(state["runs"])
    out = {"why": v["reason"], "noise": v["noise"], "repeats": v["repeats"], "gain": v["gain"],
           "needed": v["needed"], "verdict": v, "value": logged_value(v, state["runs"], candidate),
           "commit": candidate}
    if v["decision"] != "run":
        return {**out, "decision": v["decision"], "step": v["decision"]}
    if v["who"] == "incumbent":
        state["next"] = {"role": "incumbent", "commit": kept_commit(rows)}
    return {**out, "decision": "rerun", "step": "incumbent" if v["who"] == "incumbent" else "rerun"}


def logged_value(verdict, night, candidate):
    """What Log writes under the candidate: the mean its verdict rests on; for a verdict that rests
    on none (no verdict: the machine kept changing speed), the mean of its runs after the first,
    else its first run. Never the run.log's value, which may be the incumbent's."""
    if verdict["candidate_mean"] is not None:
        return verdict["candidate_mean"]
    mine = [r["val_bpb"] for r in night if r["role"] == "candidate" and same_commit(r["commit"], candidate)]
    return statistics.fmean(mine[1:] or mine)


def judge_baseline(done, run, state):
    """A baseline run: always kept. The second sets the bar (the mean of both) and the noise, unless
    the two disagree in steps: then a third run, and the two whose steps agree set them."""
    pace = {run["sha"]: [pace_of(run), run["mfu_percent"]]}  # a first run forgets any earlier baseline's
    state["baseline_runs"] = {**state.get("baseline_runs", {}), **pace} if done else pace
    if not done:
        return {"decision": "keep", "why": "baseline, run 1 of 2", "step": "baseline 1"}
    if len(done) == 1 and disagreeing(state):
        a, b = (x[0] for x in state["baseline_runs"].values())
        return {"decision": "keep", "step": "baseline disagree",
                "why": f"baseline, run 2: {a:,.0f} and {b:,.0f} {pace_unit(run)} disagree by more than "
                       f"{BASELINE_AGREE:.0%}, so the machine was not the same for both: a third run"}
    pair = agreeing_pair(state) if len(done) == 2 else (1, 2)
    vals = [r["val_bpb"] for r in done] + [run["val_bpb"]]
    rows = [{"status": "keep", "val_bpb": v, "commit": "baseline", "description": "", "index": i}
            for i, v in enumerate(vals, 1)]
    base = baseline_of([rows[pair[0] - 1], rows[pair[1] - 1]])
    if len(done) == 1:
        return {"decision": "keep", "why": "baseline, run 2 of 2: the bar is the mean of both runs",
                "step": "baseline 2", "best": base["val_bpb"], "noise": base["noise"]}
    steps = [x[0] for x in state["baseline_runs"].values()]
    return {"decision": "keep", "step": "baseline 3", "best": base["val_bpb"], "noise": base["noise"],
            "baseline_pair": pair,
            "why": f"baseline, run 3 ({', '.join(f'{s:,.0f}' for s in steps)} {pace_unit(run)}): the bar is the mean of "
                   f"runs {pair[0]} and {pair[1]}, whose paces agree best"}


def pace_of(run):
    """How much a run trained in its budget: the tokens the judge's dataloader served it (a record
    without them: the steps train.py printed)."""
    return run.get("train_tokens") or run["num_steps"]


def pace_unit(run):
    return "tokens trained" if run.get("train_tokens") else "steps"


def step_gap(a, b):
    return abs(a - b) / max(a, b) if a and b else 0.0


def disagreeing(state):
    """Whether the baseline's first two runs differ in steps by more than BASELINE_AGREE."""
    runs = list((state.get("baseline_runs") or {}).values())
    return len(runs) >= 2 and step_gap(runs[0][0], runs[1][0]) > BASELINE_AGREE


def agreeing_pair(state):
    """The 1-based numbers of the two baseline runs (of three) whose steps are closest."""
    steps = [x[0] for x in state["baseline_runs"].values()]
    return min(((1, 2), (1, 3), (2, 3)), key=lambda p: step_gap(steps[p[0] - 1], steps[p[1] - 1]))


def spoiled(run, head, state, paced=True):
    """Why something else spoiled the run, or None. What the machine did decides, not the run's own
    pace, which a slow commit lowers too: off CUDA the budget counts this run's own compute, so
    wall seconds per budgeted second over STRETCHED say others took the cores; on a GPU, whose
    clock is the wall's, under half the baseline's steps and MFU say it (once a baseline run has
    set that pace: `paced`). A commit spoiled twice (another run.log) is judged as it is."""
    if rerun_once_already(run, head, state):
        return None
    wall, budget = run.get("training_wall_seconds"), run.get("training_seconds")
    if wall and budget and wall > STRETCHED * budget:
        return (f"spoiled: {budget:.0f} s of training took {wall:.0f} s of wall time: something else used "
                f"the machine")
    own_clock = (run.get("device") or "").startswith("CPU")  # its budget counts its own compute: no pace rule
    ref = list((state.get("baseline_runs") or {}).values()) if paced and not own_clock else []
    paces, mfu, pace = [x[0] for x in ref if x[0]], [x[1] for x in ref if x[1]], pace_of(run)
    if (paces and pace is not None and pace < SPOILED * statistics.mean(paces)
            and (not mfu or run["mfu_percent"] is None or run["mfu_percent"] < SPOILED * statistics.mean(mfu))):
        return (f"spoiled: {pace:,.0f} {pace_unit(run)} against the baseline's {statistics.mean(paces):,.0f} "
                f"(and a lower MFU): something else slowed the machine")
    return None


def rerun_once_already(run, head, state):
    """Whether this commit was already sent back once as spoiled or stretched (another run.log):
    a commit gets one rerun for what the machine did; the second run is judged as it is."""
    last = state.get("spoiled") or {}
    return last.get("commit") == head and last.get("sha") != run["sha"]


def stretched_past_kill(run, head, state):
    """Why a run the Run line killed was the machine's doing, or None (a crash). Its last status
    line says how much of the budget it trained in how much wall time: over STRETCHED_KILLED wall
    seconds per budgeted one, others took the cores long enough to push it past the kill. A commit
    killed so twice (another run.log) is a crash."""
    if rerun_once_already(run, head, state):
        return None
    return stretched(run)


def stretched(run):
    trained, wall = run.get("trained") or (None, None)
    if run["timeout"] and trained and wall and wall > STRETCHED_KILLED * trained:
        return (f"stretched: killed with {trained:.0f} s of training done in {wall:.0f} s of wall time: "
                f"something else used the machine")
    return None


def loop_inputs(log):
    """The log, run.log, the commit run.log ran (its first line says; else HEAD), the state, and
    the lines of code train.py lost since the last kept commit (at HEAD). Raises ValueError (one line to print) for
    a log that cannot be read unambiguously: the rule never decides from a guess at it."""
    rows, problems = read_log(log) if os.path.exists(log) else ([], [])
    if problems:
        raise ValueError(problem_line(log, problems))
    run = read_run()
    head = (run and run["commit"]) or git_out("rev-parse", "--short=7", "HEAD")
    return rows, run, head, load_state(), shorter_by(kept_commit(rows), "HEAD")


def show_decision(d, run):
    """What Decide prints: the run, the numbers, the decision, and what to do next."""
    if run is not None:
        parts = [f"val_bpb {run['val_bpb']:.6f}" if run["val_bpb"] is not None else "no val_bpb"]
        for key, fmt, scale in (("num_steps", "{:.0f} steps", 1), ("peak_vram_mb", "{:.1f} GB", 1 / 1024),
                                ("mfu_percent", "MFU {:.1f}%", 1), ("training_seconds", "{:.0f} s of training", 1),
                                ("total_seconds", "{:.0f} s in all", 1)):
            if run[key] is not None:
                parts.append(fmt.format(run[key] * scale))
        ran = f"ran commit {d['head']}" if run["commit"] else f"commit {d['head']} is HEAD: run.log does not name its commit"
        print(f"run.log:  {', '.join(parts)} ({ran})")
    if d["best"] is not None:
        print(f"best:     {d['best']:.6f} (the baseline's mean)")
    v = d.get("verdict")
    if v and v["candidate_mean"] is not None:
        print(f"runs:     candidate {d['commit']} {v['candidate_mean']:.6f} ({keep_rule.plural(v['candidate_runs'], 'run')}), "
              f"incumbent {v['incumbent_mean']:.6f} ({keep_rule.plural(v['incumbent_runs'], 'run')} beside it)")
    if d["noise"] is not None:
        print(f"noise:    {d['noise']:.6f}" + (f" (one run's, pooled from {keep_rule.plural(d['repeats'], 'repeat')} "
                                               f"of the night)" if v else ""))
    if d["gain"] is not None:
        credit = f" + {v['credit']:.6f} credited to a shorter train.py" if v and v["credit"] else ""
        print(f"gain:     {d['gain']:+.6f} (the incumbent's mean - the candidate's{credit}; a keep needs more than "
              f"{d['needed']:.6f})")
    if d["decision"]:
        print(f"decision: {d['decision']}")
    if d["why"]:
        print(f"why:      {d['why']}")
    print(f"next:     {NEXT[d['step']]}")


def cmd_decide(log):
    try:
        rows, run, head, state, shorter = loop_inputs(log)
    except ValueError as e:
        fail(str(e))
    d = decide(rows, run, head, state, shorter)
    show_decision(d, run)
    save_state(d["state"])
    return 0 if d["decision"] else 1


def cmd_run(log):
    """program.md's Run: train.py once under the harness's watchdog (harness/run.py), refused where
    the judge differs from the baseline's commit (the log's first row); the incumbent's train.py
    instead when the keep rule asked for it (Decide left that in the state)."""
    rows = read_log(log)[0] if os.path.exists(log) else []
    runs = baseline_rows(rows)
    beside = load_state().get("next") or {}
    return runner.run(baseline_commit=(runs or rows or [{"commit": None}])[0]["commit"],
                      incumbent=beside.get("commit") if beside.get("role") == "incumbent" else None)


def cmd_log(log, typed, description):
    status = typed.strip().lower()
    if status == "rerun":
        fail("a rerun is not logged: Run again, then Decide")
    if status not in STATUSES:
        fail(f"status {typed.strip()!r} is not keep, discard or crash")
    description = " ".join(description.replace("\t", " ").split()) or "(no description)"
    try:
        rows, run, head, state, shorter = loop_inputs(log)
    except ValueError as e:
        fail(f"nothing logged: {e}")
    d = decide(rows, run, head, state, shorter)
    if d["step"] in ("no run", "unrecorded", "logged", "refused", "no data"):
        fail({"no run": "there is no run.log to log: Run first",
                      "unrecorded": "this run.log was not written by Run, so it is no result: Run, then Decide",
                      "logged": "this run.log is already logged in results.tsv: go on with the loop",
                      "refused": f"Run did not start train.py: {d['why']}",
                      "no data": f"{d['why']}: stop and tell the human"}[d["step"]])
    if d["decision"] == "rerun":  # killed, spoiled or stretched runs included: no row, whatever was typed
        fail(f"Decide says rerun for this run.log ({d['why']}): don't log it; Run again, then Decide")
    if not crashed(run) and status != d["decision"]:  # the row says what the rule decided, nothing else
        fail(f"Decide says {d['decision']} for this run.log ({d['why']}), not {status}: "
                     f"Log it as {d['decision']}" if d["decision"] else f"nothing to log: {NEXT[d['step']]}")
    if crashed(run) or status == "crash":
        if status != "crash":
            print(f"note: this run is a crash ({d['why'] or 'no val_bpb'}): logged as crash, not {status}")
        status, value, memory = "crash", 0.0, 0.0
    else:
        value = round(d["value"] if d["value"] is not None else run["val_bpb"], 6)  # as results.tsv holds it
        memory = candidate_memory(d["state"], d["commit"] or head, run)
        if d.get("baseline_pair"):  # baseline_of reads the bar's two runs from here
            description = "baseline run 3 (the bar: runs {} and {})".format(*d["baseline_pair"])
    commit = d["commit"] or head  # an incumbent's run decides the candidate's row
    print(append_row(log, {"commit": commit, "val_bpb": value, "memory_gb": memory, "status": status,
                            "description": description}))
    state = d["state"]  # what Decide would have saved, and this run.log logged
    state["logged"] = (state.get("logged", []) + [run["sha"]])[-50:]
    state.pop("next", None)
    save_state(state)
    share(run, commit, value, memory, status, description)
    return 0


def candidate_memory(state, commit, run):
    """The candidate's peak memory (GB), from its latest run: the run Log reads may be the incumbent's."""
    mine = [r for r in state.get("runs", []) if r["role"] != "incumbent" and same_commit(r["commit"], commit)]
    return mine[-1].get("memory_gb", 0.0) if mine else (run["peak_vram_mb"] or 0.0) / 1024


def share(run, commit, value, memory, status, description):
    """Log's second half: the experiment and its result into git's research record, pushed to the
    hub if there is one. The row in results.tsv is already written: the night never stops for
    this, so whatever fails is one warning line."""
    if record.agent_tag(".") is None:
        return warn("not on a branch autoresearch/<tag>: logged in results.tsv only, not in the git record")
    try:
        record.record(".", commit, value, memory, status, description, setup=run["setup"] or "",
                      device=run["device"] or "", num_steps=run["num_steps"], training_seconds=run["training_seconds"])
    except (ValueError, RuntimeError) as e:
        return warn(f"not recorded in git ({e}); results.tsv has the row")
    pushed = record.push(".")
    if pushed:
        print(pushed, file=sys.stderr)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("logs", nargs="*", metavar="log",
                    help="the log(s) (default: results.tsv and every worktrees/*/results.tsv)")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    ap.add_argument("--no-png", action="store_true", help="don't write progress.png")
    ap.add_argument("--run", action="store_true", help="program.md's Run: train.py once, under the watchdog")
    ap.add_argument("--decide", action="store_true", help="program.md's Decide: judge run.log")
    ap.add_argument("--log", metavar="STATUS", help="program.md's Log: append run.log's row (description on stdin)")
    ap.add_argument("--confirm", action="store_true", help="retrain the baseline and the best, score the test split")
    ap.add_argument("--runs", type=int, default=2, help="--confirm: runs of each commit (default 2)")
    ap.add_argument("--board", action="store_true", help="every agent's record: best, progress, recent ideas")
    ap.add_argument("--diff", action="store_true", help="--board: the best's train.py against its baseline")
    args = ap.parse_args(argv)
    log = args.logs[0] if args.logs else "results.tsv"
    if args.confirm:
        return confirm(read_logs([log])[0][1], log, max(1, args.runs), args.json)
    if args.log:
        return cmd_log(log, args.log, sys.stdin.read())
    if args.run:
        return cmd_run(log)
    if args.decide:
        return cmd_decide(log)
    if args.board:
        return board.show_board(args.json, args.diff)
    logs = read_logs(args.logs or default_logs())
    logs, entries = board.with_fleet(logs) if not args.logs else (logs, [])
    return report(logs, args, board.fleet_lines(entries))


if __name__ == "__main__":
    sys.exit(main())
