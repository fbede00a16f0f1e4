"""The night's numbers: results.tsv summarised, progress.png drawn; the loop's Decide and Log
(program.md); and the morning's Confirm.

    uv run analysis.py [results.tsv ...] [--json] [--no-png]
    uv run analysis.py --run > run.log 2>&1
    uv run analysis.py --decide
    uv run analysis.py --log keep|discard|crash  < description
    uv run analysis.py --confirm [--runs N] [--json] [results.tsv]
    uv run analysis.py --board [--json] [--diff]

The log is tab-separated, `commit val_bpb memory_gb status description`, status keep, discard or
crash (crashes carry val_bpb 0.000000 and memory_gb 0.0). Everything is measured against one
baseline, Decide's (baseline_of): the mean of the first two runs that did not crash (of three when
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

The research record (record.py): Log also records every experiment in git, on the agent's own log
ref, and pushes it to a remote named `hub` when there is one; Board reads every agent's record
(the hub fetched first) and prints the best per setup and device, each agent's progress and the
ideas tried lately. With no log named, the morning summary covers every agent in the record.
"""

import argparse
import glob
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import record
from harness import JUDGE_FILES
from harness.cache import CACHE_DIR, VAL_ROWS_FILE
from harness.results import (BASELINE_AGREE, NOISE_FLOOR, STATUSES, append_row, bar_lowerings, baseline_of,  # noqa: F401
                             baseline_rows, best_of, experiments_begun, parse_row, problem_line, read_log, same_commit)
from harness.run import TIMEOUT, git_out, read_run, run_summary
import harness.run
import harness.runrecord

MAX_LABELS = 20  # at most this many kept runs get a description on the chart


def warn(msg):
    print(f"warning: {msg}", file=sys.stderr)


def error(msg):
    print(f"error: {msg}", file=sys.stderr)
    return 1


def write_atomically(path, text):
    """Write a file whole or not at all: a temporary file beside it, then os.replace. An
    interrupted write must never read back as {} and forget a pending re-run."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_json(path):
    """A JSON file we keep, or None when it is missing or unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, TypeError, ValueError):
        return None


def read_logs(paths):
    """[(path, rows, skipped line numbers)], or None after saying which log could not be read. The
    summary reads what it can: the lines that are not rows are skipped, said in one line per log."""
    logs = []
    for path in paths:
        try:
            rows, problems = read_log(path)
        except OSError as e:
            error(f"cannot read {path}: {e.strerror or e}")
            return None
        if problems:
            warn(f"skipped: {problem_line(path, problems)}")
        logs.append((path, rows, [line for line, _ in problems]))
    return logs


def count(rows):
    return {s: sum(r["status"] == s for r in rows) for s in STATUSES}


def summarize(rows, setup=None):
    """The numbers of the summary, as a plain dict (what --json prints)."""
    base = baseline_of(rows)
    # the baseline's runs, and the crashed attempts at it before its last run, are not experiments
    experiments = [r for r in rows if not base or r["index"] > base["indices"][-1]]
    tried = count(experiments)
    best = best_of(rows)
    kept = [r for r in experiments if r["status"] == "keep"] if base else []
    before = [base and base["val_bpb"]] + [r["val_bpb"] for r in kept]  # each one's previous kept value
    ranked = sorted(({**r, "gain": b - r["val_bpb"]} for r, b in zip(kept, before)), key=lambda r: -r["gain"])
    absolute = base and base["val_bpb"] - best["val_bpb"]
    improvement = base and {"absolute": absolute, "relative": absolute / base["val_bpb"]}
    return {"setup": setup, "total": len(rows), "counts": count(rows), "experiments": tried,
            "keep_rate": tried["keep"] / len(experiments) if experiments else 0.0,
            "baseline": base, "best": best, "improvement": improvement, "ranked": ranked}


def night_setup(log_path):
    """The setup the night ran under, without importing prepare (torch costs seconds): run.log
    beside the log says it (`Setup: full ...`), else the cache's setup.json; None if neither."""
    try:
        text = open(os.path.join(os.path.dirname(os.path.abspath(log_path)), "run.log"), errors="replace").read()
        found = re.findall(r"^setup:\s*(\w+)", text, re.M | re.I)
        if found:
            return found[-1]
    except OSError:
        pass
    cache = os.environ.get("AUTORESEARCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "autoresearch")
    recorded = read_json(os.path.join(cache, "setup.json"))
    return recorded.get("setup") if isinstance(recorded, dict) else None


def shorten(text, width):
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def format_text(summary, path):
    e, total = summary["experiments"], summary["total"]
    n, setup = sum(e.values()), f" (setup {summary['setup']})" if summary["setup"] else ""
    out = [f"{path}{setup}: {total} run{'s' * (total != 1)}: the baseline's {total - n}, then {n} experiment"
           f"{'s' * (n != 1)}: {e['keep']} kept, {e['discard']} discarded, {e['crash']} crashed "
           f"(keep rate {summary['keep_rate']:.0%})"]
    if summary["setup"] == "smoke":
        out.append("smoke is an install check: these numbers only prove that the loop runs")
    base, best = summary["baseline"], summary["best"]
    if base is None:
        out.append("no completed run yet" + (" (only crashes)" if total else ""))
        return "\n".join(out)
    imp, noise = summary["improvement"], base["noise"]
    runs = ",".join(f"#{i}" for i in base["indices"])
    out.append(f"baseline  {base['val_bpb']:.6f}  {runs:<7} {base['commit']:<7}  {base['description']}"
               + (f", noise {noise:.6f}" if noise else ""))
    if best is not base:
        out.append(f"best      {best['val_bpb']:.6f}  #{best['index']:<6} {best['commit']:<7}  {best['description']}")
    out.append(f"improved  {imp['absolute']:.6f}  ({imp['relative']:.2%} lower than the baseline)")
    if not summary["ranked"]:
        out.append("no kept experiments after the baseline yet")
        return "\n".join(out)
    out += ["", "kept experiments, by gain over the previous kept one:",
            f"  {'rank':>4}  {'#':>3}  {'commit':<7}  {'val_bpb':>8}  {'gain':>9}  description"]
    for rank, r in enumerate(summary["ranked"], 1):
        out.append(f"  {rank:>4}  {r['index']:>3}  {r['commit']:<7}  {r['val_bpb']:8.6f}  "
                   f"{r['gain']:+9.6f}  {shorten(r['description'], 70)}")
    return "\n".join(out)


# ---------------------------------------------------------------------------
# progress.png

GREEN, GREY = "#1a9850", "#9a9a9a"


def y_limits(rows, baseline):
    """A y-range that fits every run except outliers far worse than the rest (beyond
    Q3 + 3 IQR), so one diverged run does not flatten the chart."""
    vals = sorted(r["val_bpb"] for r in rows if r["status"] != "crash")
    fence = math.inf
    if len(vals) >= 4:
        q1, _, q3 = statistics.quantiles(vals, n=4)
        fence = q3 + 3 * (q3 - q1)
    top = max([baseline] + [v for v in vals if v <= fence])
    pad = 0.08 * max(top - vals[0], 0.002 * baseline)
    return vals[0] - 1.5 * pad, top + pad


def staircase(rows, base):
    """The running best as step points: the baseline's bar from its first run, each kept run that
    lowered it, and on to just past the last experiment."""
    steps = bar_lowerings(rows, base["val_bpb"])
    xs = [base["indices"][0]] + [r["index"] for r in steps] + [rows[-1]["index"] + 0.5]
    ys = [base["val_bpb"]] + [r["val_bpb"] for r in steps]
    return xs, ys + ys[-1:]


def finish_chart(fig, ax, xlabel, png_path):
    ax.set_xlabel(xlabel, fontsize=12)
    ax.set_ylabel("validation bits per byte (lower is better)", fontsize=12)
    ax.grid(True, color="0.92", linewidth=0.8, zorder=0)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="upper right", fontsize=10, facecolor="white", edgecolor="none", framealpha=0.9)
    fig.tight_layout()
    fig.savefig(png_path, bbox_inches="tight")  # room for labels running past the right edge


def chart_title(summaries):
    e = {s: sum(x["experiments"][s] for x in summaries) for s in STATUSES}
    n, setups = sum(e.values()), {x["setup"] for x in summaries} - {None}
    where = f" in {len(summaries)} logs" if len(summaries) > 1 else ""
    return (f"autoresearch{' (' + ', '.join(sorted(setups)) + ')' if setups else ''}: {n} experiment"
            f"{'s' * (n != 1)}{where}, {e['keep']} kept, {e['discard']} discarded, {e['crash']} crashed")


def draw_log(ax, rows, base, high, color, name=None):
    """One log: discarded runs as faint dots (those above the range as markers on the top edge), kept
    ones (and the baseline's) as dots, the running best from Decide's bar as a staircase. `name`:
    one series of several, labelled only by its staircase."""
    from matplotlib.transforms import blended_transform_factory
    one = name is None
    faint = dict(color=GREY if one else color, alpha=0.45 if one else 0.25, linewidths=0, zorder=2, s=22)
    disc = [r for r in rows if r["status"] == "discard" and r["index"] not in base["indices"]]
    inside, above = [r for r in disc if r["val_bpb"] <= high], [r for r in disc if r["val_bpb"] > high]
    ax.scatter([r["index"] for r in inside], [r["val_bpb"] for r in inside], label="discarded" if one else None, **faint)
    if above:  # x in data, y in axes units
        ax.scatter([r["index"] for r in above], [0.985] * len(above), marker="^", clip_on=False, **faint,
                   transform=blended_transform_factory(ax.transData, ax.transAxes),
                   label="discarded, off the chart" if one else None)
    kept = [r for r in rows if r["status"] == "keep" or r["index"] in base["indices"]]
    ax.scatter([r["index"] for r in kept], [r["val_bpb"] for r in kept], s=55, color=color,
               edgecolors="white", linewidths=0.8, zorder=4, label="kept" if one else None)
    xs, ys = staircase(rows, base)
    ax.step(xs, ys, where="post", color=color, linewidth=2.0, alpha=0.85, zorder=3, label=name or "best so far")
    return xs, ys


def draw_details(ax, rows, summary, xs, ys, low, high, png_path):
    """What only a one-log chart shows: crashes, the noise band, Confirm's test_bpb, descriptions."""
    from matplotlib.transforms import blended_transform_factory
    crashes, noise = [r for r in rows if r["status"] == "crash"], summary["baseline"]["noise"]
    if crashes:
        ax.scatter([r["index"] for r in crashes], [0.015] * len(crashes), s=18, marker="x", color="#d73027",
                   transform=blended_transform_factory(ax.transData, ax.transAxes), alpha=0.6, linewidths=1.0,
                   zorder=2, label="crashed")
    if noise is not None:
        ax.fill_between(xs, [y - noise for y in ys], [y + noise for y in ys], step="post", color=GREEN,
                        alpha=0.12, linewidth=0, zorder=1, label=f"± the baseline's noise ({noise:.4f})")
    confirmed = read_json(confirmation_path(png_path)) or {}  # Confirm's test_bpb beside the val_bpb it confirms
    marks = [confirmed[side] for side in ("baseline", "best") if (confirmed.get(side) or {}).get("test_bpb")]
    if marks:  # widen the range to fit them
        pad = 0.04 * (high - low)
        low, high = min([low] + [m["test_bpb"] - pad for m in marks]), max([high] + [m["test_bpb"] + pad for m in marks])
        ax.set_ylim(low, high)
    for i, m in enumerate(marks):
        ax.scatter([m["index"]], [m["test_bpb"]], s=70, marker="D", color="#4575b4", edgecolors="white",
                   zorder=5, label=None if i else "test_bpb (--confirm)")
    draw_labels(ax, rows, summary, low, high)


def draw_labels(ax, rows, summary, low, high):
    """The kept runs' descriptions (on a crowded chart only the baseline's and the biggest gains)."""
    from matplotlib.patheffects import withStroke
    base = summary["baseline"]
    kept = [r for r in rows if r["status"] == "keep" or r["index"] in base["indices"]]
    if len(kept) > MAX_LABELS:
        wanted = set(base["indices"]) | {r["index"] for r in summary["ranked"][: MAX_LABELS - 2]}
        kept = [r for r in kept if r["index"] in wanted]
    for r in kept:
        if low <= r["val_bpb"] <= high:
            ax.annotate(shorten(r["description"] or r["commit"], 38), (r["index"], r["val_bpb"]),
                        xytext=(5, 5), textcoords="offset points", rotation=28, fontsize=8,
                        color="#1b4d2e", ha="left", va="bottom", rotation_mode="anchor", zorder=5,
                        annotation_clip=True, path_effects=[withStroke(linewidth=3, foreground="white")])


def subtitle(summary):
    base, best, imp = summary["baseline"], summary["best"], summary["improvement"]
    text = (f"val_bpb {base['val_bpb']:.4f} (the baseline) → {best['val_bpb']:.4f}  (−{imp['absolute']:.4f}, "
            f"{imp['relative']:.2%} better)" if imp["absolute"] > 0
            else f"val_bpb {base['val_bpb']:.4f} (the baseline), no improvement on it yet")
    return text + ("; smoke: these numbers only prove that the loop runs" if summary["setup"] == "smoke" else "")


def plot(logs, png_path):
    """progress.png for [(path, rows, summary)], a series per log; one log also gets its details."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(14, 7), dpi=120)
    ax.set_title(chart_title([s for _, _, s in logs]), fontsize=15, loc="left", pad=24)
    drawn = [(p, r, s) for p, r, s in logs if s["baseline"]]
    if not drawn:
        ax.text(0.5, 0.5, "no completed runs yet", transform=ax.transAxes, ha="center", va="center",
                fontsize=18, color="0.4")
        ax.axis("off")
        fig.savefig(png_path, bbox_inches="tight")
        return plt.close(fig)
    vals = [r for _, rows, _ in drawn for r in rows if r["status"] != "crash"]
    low, high = y_limits(vals, max(s["baseline"]["val_bpb"] for _, _, s in drawn))
    n = max(rows[-1]["index"] for _, rows, _ in drawn)
    ax.set_xlim(0.3, n + 0.7 + 0.02 * n)
    ax.set_ylim(low, high)
    colors = plt.get_cmap("tab10").colors
    for i, (path, rows, summary) in enumerate(logs):
        name = os.path.basename(os.path.dirname(os.path.abspath(path))) or path
        base, color = summary["baseline"], GREEN if len(logs) == 1 else colors[i % len(colors)]
        if base is None:
            ax.plot([], [], color=color, label=f"{name}: no completed run")
        elif len(logs) > 1:
            draw_log(ax, rows, base, high, color, f"{name}: {base['val_bpb']:.4f} → {summary['best']['val_bpb']:.4f}")
        else:
            draw_details(ax, rows, summary, *draw_log(ax, rows, base, high, color), low, high, png_path)
            ax.text(0, 1.015, subtitle(summary), transform=ax.transAxes, fontsize=11, color="0.3", va="bottom")
    finish_chart(fig, ax, "experiment #" + (" (per log)" if len(logs) > 1 else ""), png_path)
    plt.close(fig)


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
STATE = "autoresearch-state.json"  # in the git folder (per worktree): baseline steps, a pending re-run
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
    state = read_json(path) if path else None
    return state if isinstance(state, dict) else {}


def save_state(state):
    path = state_file()
    if path:
        write_atomically(path, json.dumps(state, indent=1))


def lines_changed(since):
    """(added, deleted) lines of train.py from the commit `since` to HEAD, or None."""
    out = since and git_out("diff", "--numstat", since, "HEAD", "--", "train.py")
    if not out:
        return None if out is None else (0, 0)
    added, deleted = out.split()[:2]
    return (int(added), int(deleted)) if added.isdigit() and deleted.isdigit() else None


LOG_BASELINE_CRASH = "Log it as crash, description `baseline` (a crash never becomes the bar)"

# What to do next, for each step of the rule (the presentation; decide() says which step).
NEXT = {
    "no run": "there is no run.log: Run first.",
    "refused": "Run did not start train.py (why: says what to do); do that, then Run.",
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
    "rerun": "don't log it. Run again (no edit, no commit), then Decide: the mean of both runs decides.",
    "keep": "Log it as keep. The commit stays: the branch has advanced.",
    "discard": "Log it as discard, then Discard.",
}


def decide(rows, run, head, state, changed=None):
    """program.md's rule, applied to the log so far and this run.log (`head`: the commit it ran).
    Pure: returns a dict with `decision` (keep, discard, rerun, crash; None when there is nothing
    to decide), `step` (which case of the rule: NEXT says what to do), `why`, the numbers, `value`
    (what Log writes: the mean of a re-run pair) and the state to save."""
    state = json.loads(json.dumps(state))  # a copy: Log judges without saving
    d = {"decision": None, "step": None, "best": None, "noise": None, "gain": None, "value": None,
         "pair": None, "why": "", "state": state, "head": head}
    if run is None or run["sha"] in state.get("logged", []):
        return {**d, "step": "no run" if run is None else "logged"}
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
    if crashed(run):
        step = ("mismatch" if run["mismatch"] else "crash" if not in_baseline else "baseline busy"
                if stretched(run) else "baseline timeout" if run["timeout"] else "baseline crash")
        return {**d, "decision": "crash", "step": step, "why": run["mismatch"] or run["timeout"] or run["fail"] or (
            "out of memory" if run["oom"] else run["error"] or "no val_bpb in run.log")}
    d["value"] = run["val_bpb"]
    if not in_baseline:
        base = baseline_of(rows)
        steps = bar_lowerings(rows, base["val_bpb"])
        d.update(noise=base["noise"] or NOISE_FLOOR, best=steps[-1]["val_bpb"] if steps else base["val_bpb"],
                 best_row=steps[-1] if steps else None, noise_runs=base["runs"])
        kept = [r["commit"] for r in rows if r["status"] == "keep"]
        if kept and same_commit(head, kept[-1]):
            return {**d, "step": "no change"}
    why = spoiled(run, head, state, paced=bool(runs))  # the baseline's too: a starved run sets no bar
    if why:
        state["spoiled"] = {"commit": head, "sha": run["sha"]}
        return {**d, "decision": "rerun", "step": "spoiled", "why": why}
    if in_baseline:
        return {**d, **judge_baseline(runs, run, state)}
    pending = state.get("pending") or {}
    if pending.get("commit") == head and pending.get("sha") != run["sha"]:
        d["pair"] = (pending["val_bpb"], run["val_bpb"])
        d["value"] = (pending["val_bpb"] + run["val_bpb"]) / 2
    d["gain"] = d["best"] - d["value"]
    d["decision"], d["why"] = judge_gain(d["gain"], d["noise"], d["pair"], changed)
    if d["decision"] == "rerun":
        state["pending"] = {"commit": head, "val_bpb": run["val_bpb"], "sha": run["sha"]}
    return {**d, "step": d["decision"]}


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
    """How much a run trained in its budget: the tokens the judge's dataloader served it (a run.log
    from before run records: the steps train.py printed)."""
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


def judge_gain(gain, noise, pair, changed):
    """(decision, why) for a finished run that is not the baseline's."""
    if gain > noise:
        return "keep", "gain above the noise"
    if changed is not None and changed[1] > changed[0] and gain >= -noise:
        return "keep", f"simpler: train.py is {changed[1] - changed[0]} lines shorter, and the loss is within the noise"
    if pair:
        return ("keep" if gain > 0 else "discard"), f"the mean of the two runs {'beats' if gain > 0 else 'does not beat'} the best"
    if gain > 0:
        return "rerun", "a gain within the noise: it needs a second run"
    return "discard", "no gain"


def loop_inputs(log):
    """The log, run.log, the commit run.log ran (its first line says; else HEAD), the state, and
    train.py's line changes since the last kept commit. Raises ValueError (one line to print) for
    a log that cannot be read unambiguously: the rule never decides from a guess at it."""
    rows, problems = read_log(log) if os.path.exists(log) else ([], [])
    if problems:
        raise ValueError(problem_line(log, problems))
    run = read_run()
    head = (run and run["commit"]) or git_out("rev-parse", "--short=7", "HEAD")
    kept = [r["commit"] for r in rows if r["status"] == "keep"]
    return rows, run, head, load_state(), lines_changed(kept[-1] if kept else None)


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
    if d["pair"]:
        print(f"pair:     mean of {d['pair'][0]:.6f} and {d['pair'][1]:.6f} = {d['value']:.6f}")
    if d["best"] is not None:
        where = (f"commit {d['best_row']['commit']}" if d.get("best_row") else "the baseline's mean")
        print(f"best:     {d['best']:.6f} ({where})")
    if d["noise"] is not None:
        print(f"noise:    {d['noise']:.6f}" + (" (the floor: the baseline ran once)" if d.get("noise_runs") == 1 else ""))
    if d["gain"] is not None:
        print(f"gain:     {d['gain']:+.6f} (best - this run; above the noise keeps)")
    if d["decision"]:
        print(f"decision: {d['decision']}")
    if d["why"]:
        print(f"why:      {d['why']}")
    print(f"next:     {NEXT[d['step']]}")


def cmd_decide(log):
    try:
        rows, run, head, state, changed = loop_inputs(log)
    except ValueError as e:
        return error(str(e))
    d = decide(rows, run, head, state, changed)
    show_decision(d, run)
    save_state(d["state"])
    return 0 if d["decision"] else 1


def cmd_run(log):
    """program.md's Run: train.py once under the harness's watchdog (harness/run.py), refused where
    the judge differs from the baseline's commit (the log's first row)."""
    rows = read_log(log)[0] if os.path.exists(log) else []
    runs = baseline_rows(rows)
    return harness.run.run(baseline_commit=(runs or rows or [{"commit": None}])[0]["commit"])


def cmd_log(log, typed, description):
    status = typed.strip().lower()
    if status == "rerun":
        return error("a rerun is not logged: Run again, then Decide")
    if status not in STATUSES:
        return error(f"status {typed.strip()!r} is not keep, discard or crash")
    description = " ".join(description.replace("\t", " ").split()) or "(no description)"
    try:
        rows, run, head, state, changed = loop_inputs(log)
    except ValueError as e:
        return error(f"nothing logged: {e}")
    d = decide(rows, run, head, state, changed)
    if d["step"] in ("no run", "logged", "refused", "no data"):
        return error({"no run": "there is no run.log to log: Run first",
                      "logged": "this run.log is already logged in results.tsv: go on with the loop",
                      "refused": f"Run did not start train.py: {d['why']}",
                      "no data": f"{d['why']}: stop and tell the human"}[d["step"]])
    if d["decision"] == "rerun":  # killed, spoiled or stretched runs included: no row, whatever was typed
        return error(f"Decide says rerun for this run.log ({d['why']}): don't log it; Run again, then Decide")
    if not crashed(run) and status != d["decision"]:  # the row says what the rule decided, nothing else
        return error(f"Decide says {d['decision']} for this run.log ({d['why']}), not {status}: "
                     f"Log it as {d['decision']}" if d["decision"] else f"nothing to log: {NEXT[d['step']]}")
    if crashed(run) or status == "crash":
        if status != "crash":
            print(f"note: this run is a crash ({d['why'] or 'no val_bpb'}): logged as crash, not {status}")
        status, value, memory = "crash", 0.0, 0.0
    else:
        value = round(d["value"] if d["value"] is not None else run["val_bpb"], 6)  # as results.tsv holds it
        memory = (run["peak_vram_mb"] or 0.0) / 1024
        if d["pair"]:
            description += f" (mean of 2 runs: {d['pair'][0]:.6f} {d['pair'][1]:.6f})"
        if d.get("baseline_pair"):  # baseline_of reads the bar's two runs from here
            description = "baseline run 3 (the bar: runs {} and {})".format(*d["baseline_pair"])
    print(append_row(log, {"commit": head, "val_bpb": value, "memory_gb": memory, "status": status,
                            "description": description}))
    state = load_state()
    if d["step"] in ("baseline 1", "baseline 2", "baseline disagree", "baseline 3"):
        state["baseline_runs"] = d["state"]["baseline_runs"]
    state["logged"] = (state.get("logged", []) + [run["sha"]])[-50:]
    if (state.get("pending") or {}).get("commit") == head:
        state.pop("pending")
    save_state(state)
    share(run, head, value, memory, status, description)
    return 0


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


# ---------------------------------------------------------------------------
# Several logs, one per GPU worktree

def default_logs():
    found = sorted(glob.glob(os.path.join("worktrees", "*", "results.tsv")))
    return (["results.tsv"] if os.path.exists("results.tsv") or not found else []) + found


def report(logs, args, fleet=()):
    """The summary of one log, or of several (one per GPU or agent) with an overall line, then the
    fleet's lines (fleet_lines); and the chart."""
    logs = [(path, rows, summarize(rows, night_setup(path)), skipped) for path, rows, skipped in logs]
    png = None  # beside the log; for several, in the current folder
    if not args.no_png:
        png = os.path.abspath(os.path.join(os.path.dirname(logs[0][0]) if len(logs) == 1 else "", "progress.png"))
        plot([(p, r, s) for p, r, s, _ in logs], png)
    each = [{**s, "log": p, "png": png, "skipped_lines": k} for p, _, s, k in logs]
    counts = {s: sum(x["counts"][s] for x in each) for s in STATUSES}
    best = min((x for x in each if x["best"]), key=lambda x: x["best"]["val_bpb"], default=None)
    if args.json:
        print(json.dumps(each[0] if len(each) == 1 else {
            "logs": each, "total": sum(counts.values()), "counts": counts,
            "best": best and {**best["best"], "log": best["log"]}, "png": png, "fleet": list(fleet)}, indent=2))
        return 0
    print("\n\n".join(format_text(x, x["log"]) for x in each))
    if len(each) > 1:
        line = (f"overall: {sum(sum(x['experiments'].values()) for x in each)} experiments in {len(each)} logs, "
                f"{sum(x['experiments']['keep'] for x in each)} kept")
        if best:
            b = best["best"]
            line += f"; best {b['val_bpb']:.6f} in {best['log']} ({b['commit']}, {b['description']})"
        print("\n" + line)
    if fleet:
        print("\n" + "\n".join(fleet))
    if png:
        print(f"\nwrote {png}")
    return 0


# ---------------------------------------------------------------------------
# Board and the fleet: every agent's git record (record.py), the hub fetched first

BOARD_FETCH_TIMEOUT = 30  # seconds: a first fetch of 10,000 experiments takes a few on a disk


def fleet_record():
    """Every agent's entries in the git record (after fetching the hub, if there is one), each
    warning printed in one line. [] outside a git repository."""
    if git_out("rev-parse", "--git-dir") is None:
        return []
    fetched = record.fetch(".", timeout=BOARD_FETCH_TIMEOUT)
    entries, warnings = record.read_record(".", own=record.agent_tag("."))
    for line in filter(None, [fetched, *warnings]):
        print(line, file=sys.stderr)
    return entries


def reader(entries):
    """The judge, setup and device results must share to compete with this agent's: its own latest
    entry says the setup and device; before it has one, run.log or the cache does."""
    tag = record.agent_tag(".")
    own = [e for e in entries if e["agent"] == tag and e["device"]]  # a crash has none
    run = read_run() or {}
    setup = (own[-1]["setup"] if own else "") or run.get("setup") or night_setup("results.tsv")
    device = (own[-1]["device"] if own else "") or run.get("device")
    return record.judge_identity("."), setup, device


def best_diff(b, entries):
    """`git diff` of train.py from the best comparable agent's baseline to its best commit."""
    best = next((x for x in b["best"] if (x["setup"], x["device"]) == (b["setup"], b["device"])),
                b["best"][0] if b["best"] else None)
    if best is None:
        return "diff: no kept result under your judge yet"
    base = next(e["commit"] for e in entries if e["agent"] == best["agent"])
    diff = git_out("diff", "--stat", "--patch", base, best["commit"], "--", "train.py")
    if diff is None:
        return f"diff: commit {best['commit'][:7]} or {base[:7]} is not here; run `git fetch hub` and try again"
    return f"diff: agent {best['agent']}'s baseline {base[:7]} -> its best {best['commit'][:7]}\n{diff}"


def cmd_board(as_json, diff):
    entries = fleet_record()
    b = record.board(entries, *reader(entries))
    if as_json:
        print(json.dumps(b, indent=1))
        return 0
    print(record.format_board(b))
    if diff:
        print("\n" + best_diff(b, entries))
    return 0


def with_fleet(logs):
    """The local logs plus a series for every agent of the git record that no local log is (other
    clones through the hub, other worktrees), and the record's entries."""
    entries = fleet_record()
    local = {record.agent_tag(os.path.dirname(os.path.abspath(path))) for path, _, _ in logs}
    others = sorted((tag, rows) for tag, rows in record.fleet_logs(entries).items() if tag not in local)
    return logs + [(f"agent {tag}", rows, []) for tag, rows in others], entries


def shared_ideas(entries, limit=10):
    """Descriptions tried by more than one agent, with each one's outcome: the same idea, twice.
    An agent's baseline (the commit of its first entry, which every agent starts from) is no idea."""
    first, by_idea = {}, {}
    for e in entries:
        first.setdefault(e["agent"], e["commit"])
    baselines = set(first.values())
    for e in entries:
        if e["commit"] not in baselines:
            by_idea.setdefault(" ".join(e["description"].lower().split()), []).append(e)
    shared = [tried for tried in by_idea.values() if len({e["agent"] for e in tried}) > 1]
    return [f"{tried[0]['description'][:60]!r}: " + ", ".join(
        f"{e['agent']} {e['status']} {e['val_bpb']:.4f}" for e in tried) for tried in shared[-limit:]]


def fleet_lines(entries):
    """The fleet's part of the morning summary: the best per setup and device under this judge,
    and the ideas tried by several agents."""
    if len({e["agent"] for e in entries}) < 2:
        return []
    b = record.board(entries, *reader(entries))
    lines = ["fleet: best per setup and device, judged by this checkout's judge:"]
    lines += [f"  {x['setup']} on {x['device']}: {x['val_bpb']:.6f} by {x['agent']} ({x['commit'][:7]}, "
              f"{shorten(x['description'], 60)})" for x in b["best"]] or ["  none yet"]
    ideas = shared_ideas(entries)
    return lines + (["tried by several agents:"] + [f"  {line}" for line in ideas] if ideas else [])


# ---------------------------------------------------------------------------
# Confirm: were the night's gains real? Scored on the test split, which the loop never sees.

def confirmation_run(worktree, log_path):
    """train.py once in confirmation mode: ({val_bpb, test_bpb, num_steps}, None) or (None, why),
    the numbers from the judge's record of the run. It runs on this interpreter, the project's
    environment that `uv run analysis.py` set up, so the temporary worktree needs none of its own."""
    run_dir = log_path + ".record"
    os.makedirs(run_dir, exist_ok=True)
    env = dict(os.environ, AUTORESEARCH_CONFIRM="1", **{harness.runrecord.RUN_DIR_ENV: run_dir})
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "train.py"], cwd=worktree, stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
        try:
            proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            return None, f"TIMEOUT after {TIMEOUT} s"
        finally:
            if proc.poll() is None:  # timed out, or interrupted: end train.py and its compile workers
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    text = open(log_path, errors="replace").read().replace("\r", "\n")
    judge = harness.runrecord.read_parts(run_dir).get("judge") or {}
    figures = {"val_bpb": judge.get("val_bpb"), "test_bpb": judge.get("test_bpb"),
               "num_steps": run_summary(text, ("num_steps",))["num_steps"]}
    if proc.returncode != 0 or figures["val_bpb"] is None or figures["test_bpb"] is None:
        last = [line for line in text.splitlines() if line.strip() and not line.startswith("step ")]
        return None, f"crash, exit {proc.returncode}: {last[-1][:150] if last else 'no output'}"
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


def add_worktree(path, commit):
    """A temporary checkout of `commit`, judged by this checkout's judge: its JUDGE_FILES, and the
    harness and machinery.py they import (old commits have neither the test split's scoring nor
    the run record; their train.py imports machinery.py, whose budget_clock is now harness's)."""
    subprocess.run(["git", "worktree", "add", "--quiet", "--detach", path, commit], check=True, capture_output=True)
    here = os.path.dirname(os.path.abspath(__file__))
    for name in JUDGE_FILES + ("machinery.py",):
        if os.path.exists(os.path.join(here, name)):
            os.makedirs(os.path.dirname(os.path.join(path, name)), exist_ok=True)
            shutil.copy(os.path.join(here, name), os.path.join(path, name))
    shutil.copytree(os.path.join(here, "harness"), os.path.join(path, "harness"), dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))


def confirm_runs(targets, n_runs, tmp, say):
    """Train each target n_runs times in its own worktree, alternating (a slow spell of the machine
    hits both): {side: [{figures, crash}]}. The caller removes the worktrees, even when interrupted."""
    runs, t0 = {side: [] for side in targets}, time.time()
    order = list(targets) * n_runs
    for side, row in targets.items():
        add_worktree(os.path.join(tmp, side), row["commit"])
    for i, side in enumerate(order, 1):
        elapsed = time.time() - t0
        left = f", about {elapsed / (i - 1) * (len(order) - i + 1) / 60:.0f} min left" if i > 1 else ""
        say(f"[{i}/{len(order)}] {side} {targets[side]['commit']}: training ({elapsed / 60:.0f} min elapsed{left})")
        figures, why = confirmation_run(os.path.join(tmp, side), os.path.join(tmp, f"run{i}.log"))
        runs[side].append({"figures": figures, "crash": why})
        say("    " + (f"val_bpb {figures['val_bpb']:.6f}, test_bpb {figures['test_bpb']:.6f}, "
                     f"{figures['num_steps']:.0f} steps" if figures else f"not counted: {why}"))
    return runs


def cmd_confirm(log, n_runs, as_json):
    logs = read_logs([log])
    if logs is None:
        return 1
    summary = summarize(logs[0][1])
    base, best = summary["baseline"], summary["best"]
    if base is None or best["commit"] == base["commit"]:
        return error(f"nothing to confirm: {log} has no kept commit better than the baseline")
    import prepare  # the cache this night ran against: its test split must exist
    # For caches prepared before prepare.py froze a test split (f88fdb4, 2026-11-29): they cannot be
    # confirmed. Remove this check once no cache from before then is in use.
    if not os.path.exists(prepare.TEST_ROWS_FILE):
        return error(f"{prepare.CACHE_DIR} has no test split (prepared before there were any): prepare a new "
                     f"cache, AUTORESEARCH_CACHE=<new folder> uv run prepare.py ..., and run the night there")
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if as_json else (lambda *a: print(*a, flush=True))
    tmp = tempfile.mkdtemp(prefix="autoresearch-confirm-")
    try:
        runs = confirm_runs({"baseline": base, "best": best}, n_runs, tmp, say)
    except KeyboardInterrupt:
        print("interrupted: the temporary worktrees are removed; HEAD, the work tree and the log are as they were",
              file=sys.stderr)
        return 130
    except subprocess.CalledProcessError as e:
        return error(f"git worktree add failed: {e.stderr.decode().strip()}")
    finally:
        for side in ("baseline", "best"):
            subprocess.run(["git", "worktree", "remove", "--force", os.path.join(tmp, side)], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(["git", "worktree", "prune"], capture_output=True)
    result = {**confirmation_verdict(runs, base["noise"]), "runs": runs}
    for side, row in (("baseline", base), ("best", best)):
        result[side] = {"commit": row["commit"], "index": row["index"], "logged_val_bpb": row["val_bpb"],
                        "test_bpb": result["test_bpb"][side], "description": row["description"]}
    write_atomically(confirmation_path(log), json.dumps(result, indent=2))
    print(json.dumps(result, indent=2) if as_json else result["line"])
    return 0


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
        return cmd_confirm(log, max(1, args.runs), args.json)
    if args.log:
        return cmd_log(log, args.log, sys.stdin.read())
    if args.run:
        return cmd_run(log)
    if args.decide:
        return cmd_decide(log)
    if args.board:
        return cmd_board(args.json, args.diff)
    logs = read_logs(args.logs or default_logs())
    if logs is None:
        return 1
    logs, entries = with_fleet(logs) if not args.logs else (logs, [])
    return report(logs, args, fleet_lines(entries))


if __name__ == "__main__":
    sys.exit(main())
