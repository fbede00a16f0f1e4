"""Summarise an autoresearch run: read results.tsv, print a summary, draw progress.png; and the
two loop commands program.md gives the agent (Decide and Log).

    uv run analysis.py [results.tsv ...] [--json] [--no-png]
    uv run analysis.py --decide
    uv run analysis.py --log keep|discard|crash  < description

The log is tab-separated with the header `commit val_bpb memory_gb status description`,
status keep, discard or crash (crashes carry val_bpb 0.000000 and memory_gb 0.0).

Prints the counts by status and the keep rate (kept / all rows), the baseline (the first
row that did not crash), the best kept val_bpb and the improvement over the baseline, and
the kept experiments ranked by their gain over the previous kept one (gain = previous kept
val_bpb - this val_bpb, so positive is better). `--json` prints the same numbers as one JSON
object on stdout instead. Warnings (a missing file aside, which is an error) go to stderr.

progress.png is written next to the log (so `uv run analysis.py runs/a/results.tsv` writes
runs/a/progress.png), with or without --json; `--no-png` skips it.

Several logs (one per GPU worktree): `uv run analysis.py worktrees/*/results.tsv`, or no argument
at all, which reads results.tsv and every worktrees/*/results.tsv that exist. Each log gets its
summary, then one overall line; one chart, progress.png in the current folder, has a series per
log. `--json` then prints {"logs": [one summary per log], "total", "counts", "best"}.

--decide and --log implement program.md's rule; see decide() below.

    uv run analysis.py --confirm [--runs N] [--json] [results.tsv]

The morning's check that the night's gain is real: the baseline (the first kept row) and the best
kept commit are checked out into temporary git worktrees and trained N times each (default 2),
alternating, with the judge also scoring the test split that the loop never sees. It ends with
`confirm: baseline test_bpb A, best test_bpb B, gain G (val gain V); <verdict>`; both commits are
judged by this checkout's prepare.py. It writes
confirm.json beside the log (progress.png shows it), and never touches HEAD, the work tree or the
log. It takes 2N runs of the loop's length.
"""

import argparse
import csv
import glob
import hashlib
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

HEADER = ["commit", "val_bpb", "memory_gb", "status", "description"]
STATUSES = ("keep", "discard", "crash")
MAX_LABELS = 20  # at most this many kept runs get a description on the chart


def warn(msg):
    print(f"warning: {msg}", file=sys.stderr)


def parse_row(fields):
    """One row of the log as a dict, or raise ValueError saying what is wrong with it."""
    if len(fields) < 4:
        raise ValueError(f"expected 5 tab-separated fields, got {len(fields)}")
    commit, val, mem, status = (f.strip() for f in fields[:4])
    description = " ".join(f.strip() for f in fields[4:])  # a stray tab in the description
    status = status.lower()
    if status not in STATUSES:
        raise ValueError(f"status {status!r} is not keep, discard or crash")
    try:
        val_bpb, memory_gb = float(val), float(mem)
    except ValueError:
        raise ValueError(f"val_bpb {val!r} or memory_gb {mem!r} is not a number") from None
    if not (math.isfinite(val_bpb) and math.isfinite(memory_gb)):
        raise ValueError("val_bpb or memory_gb is not finite")
    if status != "crash" and val_bpb <= 0:
        raise ValueError(f"a {status} row needs a positive val_bpb, got {val!r}")
    return {"commit": commit, "val_bpb": val_bpb, "memory_gb": memory_gb,
            "status": status, "description": description}


def read_log(path):
    """Parsed rows (each with its 1-based experiment `index` and file `line`), and the line
    numbers skipped as malformed. Blank lines and the header are ignored silently."""
    rows, skipped = [], []
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        for lineno, fields in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if not any(field.strip() for field in fields):
                continue
            if lineno == 1 and [x.strip().lower() for x in fields[:5]] == HEADER:
                continue
            try:
                row = parse_row(fields)
            except ValueError as e:
                warn(f"{path}:{lineno}: skipped malformed row ({e})")
                skipped.append(lineno)
                continue
            row["index"] = len(rows) + 1
            rows.append(row)
    return rows, skipped


def summarize(rows):
    """The numbers of the summary, as a plain dict (what --json prints)."""
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    total = len(rows)
    done = [r for r in rows if r["status"] != "crash"]
    baseline = done[0] if done else None
    best, ranked = baseline, []
    if baseline is not None:
        prev = baseline["val_bpb"]
        for r in rows:
            if r["status"] != "keep" or r is baseline:
                continue
            ranked.append({**r, "gain": prev - r["val_bpb"]})
            prev = r["val_bpb"]
            if r["val_bpb"] < best["val_bpb"]:
                best = r
        ranked.sort(key=lambda r: -r["gain"])
    improvement = None
    if baseline is not None:
        absolute = baseline["val_bpb"] - best["val_bpb"]
        improvement = {"absolute": absolute, "relative": absolute / baseline["val_bpb"]}
    return {
        "total": total,
        "counts": counts,
        "keep_rate": counts["keep"] / total if total else 0.0,
        "baseline": baseline,
        "best": best,
        "improvement": improvement,
        "ranked": ranked,
    }


def shorten(text, width):
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def format_text(summary, path):
    c, total = summary["counts"], summary["total"]
    out = [f"{path}: {total} experiment{'s' * (total != 1)}: {c['keep']} kept, "
           f"{c['discard']} discarded, {c['crash']} crashed (keep rate {summary['keep_rate']:.0%})"]
    base, best = summary["baseline"], summary["best"]
    if base is None:
        out.append("no completed run yet" + (" (only crashes)" if total else ""))
        return "\n".join(out)
    imp = summary["improvement"]
    out.append(f"baseline  {base['val_bpb']:.6f}  #{base['index']:<3} {base['commit']:<7}  "
               f"{base['description']}")
    out.append(f"best      {best['val_bpb']:.6f}  #{best['index']:<3} {best['commit']:<7}  "
               f"{best['description']}")
    out.append(f"improved  {imp['absolute']:.6f}  ({imp['relative']:.2%} lower than the baseline)")
    if not summary["ranked"]:
        out.append("no kept experiments after the baseline yet")
        return "\n".join(out)
    out.append("")
    out.append("kept experiments, by gain over the previous kept one:")
    out.append(f"  {'rank':>4}  {'#':>3}  {'commit':<7}  {'val_bpb':>8}  {'gain':>9}  description")
    for rank, r in enumerate(summary["ranked"], 1):
        out.append(f"  {rank:>4}  {r['index']:>3}  {r['commit']:<7}  {r['val_bpb']:8.6f}  "
                   f"{r['gain']:+9.6f}  {shorten(r['description'], 70)}")
    return "\n".join(out)


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


def plot(rows, summary, png_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patheffects import withStroke
    from matplotlib.transforms import blended_transform_factory

    c, total = summary["counts"], summary["total"]
    fig, ax = plt.subplots(figsize=(14, 7), dpi=120)
    title = (f"autoresearch: {total} experiment{'s' * (total != 1)}, {c['keep']} kept, "
             f"{c['discard']} discarded, {c['crash']} crashed")
    base, best = summary["baseline"], summary["best"]
    if base is None:
        ax.set_title(title, fontsize=15, loc="left")
        ax.text(0.5, 0.5, "no completed runs yet", transform=ax.transAxes,
                ha="center", va="center", fontsize=18, color="0.4")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        fig.savefig(png_path, bbox_inches="tight")
        plt.close(fig)
        return

    green, grey = "#1a9850", "#9a9a9a"
    low, high = y_limits(rows, base["val_bpb"])
    n = rows[-1]["index"]
    ax.set_xlim(0.3, n + 0.7 + 0.02 * n)
    ax.set_ylim(low, high)
    edge = blended_transform_factory(ax.transData, ax.transAxes)  # x in data, y in axes units

    # discarded runs: faint grey; those above the clipped range as small markers on the top edge
    disc = [r for r in rows if r["status"] == "discard"]
    inside = [r for r in disc if r["val_bpb"] <= high]
    above = [r for r in disc if r["val_bpb"] > high]
    ax.scatter([r["index"] for r in inside], [r["val_bpb"] for r in inside], s=22,
               color=grey, alpha=0.45, linewidths=0, zorder=2, label="discarded")
    if above:
        ax.scatter([r["index"] for r in above], [0.985] * len(above), transform=edge, s=22,
                   marker="^", color=grey, alpha=0.45, linewidths=0, zorder=2, clip_on=False,
                   label="discarded, off the chart")

    # crashes: small red crosses along the bottom edge
    crashes = [r for r in rows if r["status"] == "crash"]
    if crashes:
        ax.scatter([r["index"] for r in crashes], [0.015] * len(crashes), transform=edge,
                   s=18, marker="x", color="#d73027", alpha=0.6, linewidths=1.0, zorder=2,
                   label="crashed")

    # the running best, as a staircase from the baseline to the last experiment
    xs, ys = [base["index"]], [base["val_bpb"]]
    for r in rows:
        if r["status"] == "keep" and r["index"] > base["index"] and r["val_bpb"] < ys[-1]:
            xs.append(r["index"])
            ys.append(r["val_bpb"])
    xs.append(n + 0.5)
    ys.append(ys[-1])
    ax.step(xs, ys, where="post", color=green, linewidth=2.0, alpha=0.85, zorder=3,
            label="best so far")
    noise = night_noise(rows)
    if noise is not None:
        ax.fill_between(xs, [y - noise for y in ys], [y + noise for y in ys], step="post", color=green,
                        alpha=0.12, linewidth=0, zorder=1, label=f"± the baseline's noise ({noise:.4f})")
    confirmed = read_confirmation(png_path)
    if confirmed:  # the test split's verdict beside the val_bpb it was meant to confirm
        marks = [confirmed[side]["test_bpb"] for side in ("baseline", "best") if confirmed[side]["test_bpb"]]
        if marks:
            pad = 0.04 * (high - low)
            low, high = min(low, min(marks) - pad), max(high, max(marks) + pad)
            ax.set_ylim(low, high)
        for side in ("baseline", "best"):
            if confirmed[side]["test_bpb"] is not None:
                ax.scatter([confirmed[side]["index"]], [confirmed[side]["test_bpb"]], s=70, marker="D",
                           color="#4575b4", edgecolors="white", zorder=5,
                           label="test_bpb (--confirm)" if side == "baseline" else None)

    # kept runs: green dots, labelled with their descriptions
    kept = [r for r in rows if r["status"] == "keep"]
    if base["status"] != "keep":
        kept = [base] + kept
    ax.scatter([r["index"] for r in kept], [r["val_bpb"] for r in kept], s=55, color=green,
               edgecolors="white", linewidths=0.8, zorder=4, label="kept")
    labelled = kept
    if len(kept) > MAX_LABELS:  # a crowded chart: label the baseline and the biggest gains
        gains = summary["ranked"][: MAX_LABELS - 1]  # already sorted by gain
        wanted = {base["index"]} | {r["index"] for r in gains}
        labelled = [r for r in kept if r["index"] in wanted]
    for r in labelled:
        if not low <= r["val_bpb"] <= high:
            continue
        ax.annotate(shorten(r["description"] or r["commit"], 38), (r["index"], r["val_bpb"]),
                    xytext=(5, 5), textcoords="offset points", rotation=28, fontsize=8,
                    color="#1b4d2e", ha="left", va="bottom", rotation_mode="anchor", zorder=5,
                    annotation_clip=True,
                    path_effects=[withStroke(linewidth=3, foreground="white")])

    imp = summary["improvement"]
    ax.set_title(title, fontsize=15, loc="left", pad=24)
    if imp["absolute"] > 0:
        subtitle = (f"val_bpb {base['val_bpb']:.4f} → {best['val_bpb']:.4f}  "
                    f"(−{imp['absolute']:.4f}, {imp['relative']:.2%} better)")
    else:
        subtitle = f"val_bpb {base['val_bpb']:.4f}, no improvement on the baseline yet"
    ax.text(0, 1.015, subtitle, transform=ax.transAxes, fontsize=11, color="0.3", va="bottom")
    finish_chart(fig, ax, "experiment #", png_path)
    plt.close(fig)


def night_noise(rows):
    """The baseline's noise: the difference between the first two runs that did not crash."""
    done = [r for r in rows if r["status"] != "crash"][:2]
    return max(abs(done[0]["val_bpb"] - done[1]["val_bpb"]), NOISE_FLOOR) if len(done) == 2 else None


# ---------------------------------------------------------------------------
# The loop's two commands: Decide and Log (program.md states the rule in words)

NOISE_FLOOR = 0.0005  # the noise is never taken below this
SPOILED = 0.5         # fewer steps and lower MFU than this fraction of the baseline's: a starved run
STATE = "autoresearch-state.json"  # in the git folder (per worktree): baseline steps, a pending re-run


def read_run(path="run.log"):
    """What run.log says: the summary numbers, and how the run ended. None when there is no run.log."""
    try:
        data = open(path, "rb").read()
    except OSError:
        return None
    text = data.decode("utf-8", "replace").replace("\r", "\n")
    run = {"sha": hashlib.sha1(data).hexdigest()}
    for key in ("val_bpb", "peak_vram_mb", "num_steps", "mfu_percent", "total_seconds", "training_seconds"):
        found = re.findall(rf"^{key}:\s+([-+0-9.eE]+|nan|inf)\s*$", text, re.M)
        run[key] = float(found[-1]) if found else None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    run["timeout"] = next((l for l in lines if l.startswith("TIMEOUT")), None)
    run["killed"] = next((l for l in lines if l.startswith("KILLED")), None)
    run["fail"] = next((l for l in lines if l.startswith("FAIL")), None)
    run["ended"] = any(l.startswith("run ended") for l in lines)
    run["traceback"] = "Traceback (most recent call last)" in text
    run["oom"] = "out of memory" in text.lower()
    errors = [l for l in lines if not l.startswith(("step ", "run ended"))]
    run["error"] = errors[-1][:200] if errors else ""
    if run["val_bpb"] is not None and not math.isfinite(run["val_bpb"]):
        run["val_bpb"] = None
    return run


def crashed(run):
    return run["val_bpb"] is None or bool(run["timeout"] or run["fail"])


def git_out(*args):
    r = subprocess.run(["git", *args], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None


def state_file():
    gitdir = git_out("rev-parse", "--git-dir")
    return os.path.join(gitdir, STATE) if gitdir else None


def load_state():
    try:
        with open(state_file()) as f:
            return json.load(f)
    except (OSError, TypeError, ValueError):
        return {}


def save_state(state):
    path = state_file()
    if path:
        with open(path, "w") as f:
            json.dump(state, f, indent=1)


def lines_changed(since):
    """(added, deleted) lines of train.py from the commit `since` to HEAD, or None."""
    out = since and git_out("diff", "--numstat", since, "HEAD", "--", "train.py")
    if not out:
        return None if out is None else (0, 0)
    added, deleted = out.split()[:2]
    return (int(added), int(deleted)) if added.isdigit() and deleted.isdigit() else None


def decide(rows, run, head, state, changed=None):
    """program.md's rule, applied to the log so far and this run.log. Returns a dict with
    `decision` (keep, discard, rerun, crash; None when there is nothing to decide), the numbers,
    `value` (what Log writes: the mean of a re-run pair), `next` (what to do) and the state to save."""
    state = json.loads(json.dumps(state))  # a copy: Log judges without saving
    d = {"decision": None, "best": None, "noise": None, "gain": None, "value": None, "pair": None,
         "why": "", "next": "", "state": state, "head": head}
    if run is None:
        d["next"] = "there is no run.log: Run first."
        return d
    if run["sha"] in state.get("logged", []):
        d["next"] = ("this run.log is already logged in results.tsv: nothing to decide. Go on with the loop "
                     "(after a keep the commit stays; after anything else Discard, if not done yet).")
        return d
    done = [r for r in rows if r["status"] != "crash"]
    baseline = len(done) < 2
    if run["killed"] and run["val_bpb"] is None:
        d["decision"] = "rerun"
        d["why"] = f"the run was stopped from outside ({run['killed']}): not the code's fault"
        d["next"] = ("don't log it. Run again, with your tool's timeout at 10 minutes (600000 ms), "
                     "or with Run in the background and Poll.")
        return d
    if run["val_bpb"] is None and not (run["ended"] or run["timeout"] or run["fail"] or run["traceback"]):
        d["next"] = ("run.log has no result and no end line yet: the run is still going (Poll until it "
                     "prints `run ended`), or it was cut off from outside (then Run it again).")
        return d
    if crashed(run):
        d["decision"] = "crash"
        d["why"] = (run["timeout"] or run["fail"] or
                    ("out of memory" if run["oom"] else run["error"] or "no val_bpb in run.log"))
        if baseline and run["timeout"]:
            d["next"] = ("the baseline ran out of time: Log it as crash (it never becomes the bar), then Run it "
                         "again unchanged: a first run also compiles from a cold cache. If it times out again, "
                         "halve DEVICE_BATCH_SIZE for this setup in train.py, Commit, Run, Decide.")
        elif baseline:
            d["next"] = ("the baseline crashed: Log it as crash (it never becomes the bar), then make it run: "
                         "out of memory, lower DEVICE_BATCH_SIZE for this setup in train.py (halve it); "
                         "anything else, fix what the traceback says. Commit, Run, Decide.")
        else:
            d["next"] = ("Log it as crash. A trivial mistake (typo, import, shape): fix it, Amend, "
                         "Run again (at most 2 fixes per idea). Otherwise Discard.")
        return d
    value = run["val_bpb"]
    d["value"] = value
    if baseline:
        d["decision"] = "keep"
        if not done:
            d["why"] = "baseline, run 1 of 2"
            d["next"] = "Log it as keep, description `baseline`; then Run again (no edit, no commit) and Decide."
            state["baseline_runs"] = {run["sha"]: [run["num_steps"], run["mfu_percent"]]}
        else:
            d["noise"] = max(abs(done[0]["val_bpb"] - value), NOISE_FLOOR)
            d["best"] = (done[0]["val_bpb"] + value) / 2
            d["why"] = "baseline, run 2 of 2: the bar is the mean of both runs"
            d["next"] = "Log it as keep, description `baseline run 2`; then start the loop."
            state.setdefault("baseline_runs", {})[run["sha"]] = [run["num_steps"], run["mfu_percent"]]
        return d

    b1, b2 = done[0]["val_bpb"], done[1]["val_bpb"]
    d["noise"] = noise = max(abs(b1 - b2), NOISE_FLOOR)
    best, best_row = (b1 + b2) / 2, None
    after = rows[rows.index(done[1]) + 1:]
    for r in after:
        if r["status"] == "keep" and r["val_bpb"] < best:
            best, best_row = r["val_bpb"], r
    d["best"], d["best_row"] = best, best_row
    kept = [r for r in rows if r["status"] == "keep"]
    last_kept = kept[-1]["commit"] if kept else None
    if head and last_kept and (head.startswith(last_kept) or last_kept.startswith(head)):
        d["next"] = ("HEAD is the last kept commit: this run measured no change. Edit train.py and Commit "
                     "before you Run.")
        return d

    ref = list((state.get("baseline_runs") or {}).values())
    ref_steps = [x[0] for x in ref if x[0]]
    ref_mfu = [x[1] for x in ref if x[1]]
    spoiled = state.get("spoiled") or {}
    if (ref_steps and run["num_steps"] is not None
            and run["num_steps"] < SPOILED * statistics.mean(ref_steps)
            and (not ref_mfu or run["mfu_percent"] is None or run["mfu_percent"] < SPOILED * statistics.mean(ref_mfu))
            and (spoiled.get("commit") != head or spoiled.get("sha") == run["sha"])):
        d["decision"] = "rerun"
        d["why"] = (f"spoiled: {run['num_steps']:.0f} steps against the baseline's {statistics.mean(ref_steps):.0f} "
                    f"(and a lower MFU): something else slowed the machine")
        d["next"] = ("don't log it. Run again (same commit), then Decide. (If this commit is that slow again, "
                     "Decide judges it as it is.)")
        state["spoiled"] = {"commit": head, "sha": run["sha"]}
        return d

    pending = state.get("pending") or {}
    if pending.get("commit") == head and pending.get("sha") != run["sha"]:
        d["pair"] = (pending["val_bpb"], value)
        value = d["value"] = (pending["val_bpb"] + value) / 2
    d["gain"] = gain = best - value
    simpler = changed is not None and changed[1] > changed[0]
    if gain > noise:
        d["decision"], d["why"] = "keep", "gain above the noise"
    elif simpler and gain >= -noise:
        d["decision"] = "keep"
        d["why"] = f"simpler: train.py is {changed[1] - changed[0]} lines shorter, and the loss is within the noise"
    elif d["pair"]:
        d["decision"] = "keep" if gain > 0 else "discard"
        d["why"] = f"the mean of the two runs {'beats' if gain > 0 else 'does not beat'} the best"
    elif gain > 0:
        d["decision"], d["why"] = "rerun", "a gain within the noise: it needs a second run"
        d["next"] = "don't log it. Run again (no edit, no commit), then Decide: the mean of both runs decides."
        state["pending"] = {"commit": head, "val_bpb": run["val_bpb"], "sha": run["sha"]}
        return d
    else:
        d["decision"], d["why"] = "discard", "no gain"
    if d["decision"] == "keep":
        d["next"] = "Log it as keep. The commit stays: the branch has advanced."
    else:
        d["next"] = "Log it as discard, then Discard."
    return d


def loop_inputs(log):
    rows = read_log(log)[0] if os.path.exists(log) else []
    head = git_out("rev-parse", "--short=7", "HEAD")
    kept = [r["commit"] for r in rows if r["status"] == "keep"]
    return rows, read_run(), head, load_state(), lines_changed(kept[-1] if kept else None)


def cmd_decide(log):
    rows, run, head, state, changed = loop_inputs(log)
    d = decide(rows, run, head, state, changed)
    if run is not None and (run["val_bpb"] is not None or d["decision"]):
        parts = [f"val_bpb {run['val_bpb']:.6f}" if run["val_bpb"] is not None else "no val_bpb"]
        if run["num_steps"] is not None:
            parts.append(f"{run['num_steps']:.0f} steps")
        if run["peak_vram_mb"] is not None:
            parts.append(f"{run['peak_vram_mb'] / 1024:.1f} GB")
        if run["mfu_percent"] is not None:
            parts.append(f"MFU {run['mfu_percent']:.1f}%")
        if run["total_seconds"] is not None:
            parts.append(f"{run['training_seconds'] or 0:.0f} s of training, {run['total_seconds']:.0f} s in all")
        print(f"run:      {', '.join(parts)} (commit {head})")
    if d["pair"]:
        print(f"pair:     mean of {d['pair'][0]:.6f} and {d['pair'][1]:.6f} = {d['value']:.6f}")
    if d["best"] is not None:
        where = (f"commit {d['best_row']['commit']}" if d.get("best_row") else "the mean of the baseline's two runs")
        print(f"best:     {d['best']:.6f} ({where})")
    if d["noise"] is not None:
        print(f"noise:    {d['noise']:.6f}")
    if d["gain"] is not None:
        print(f"gain:     {d['gain']:+.6f} (best - this run; above the noise keeps)")
    if d["decision"]:
        print(f"decision: {d['decision']}")
        print(f"why:      {d['why']}")
    print(f"next:     {d['next']}")
    save_state(d["state"])
    return 0 if d["decision"] else 1


def cmd_log(log, status, description):
    status = status.strip().lower()
    if status == "rerun":
        print("error: a rerun is not logged: Run again, then Decide", file=sys.stderr)
        return 1
    if status not in STATUSES:
        print(f"error: status {status!r} is not keep, discard or crash", file=sys.stderr)
        return 1
    description = " ".join(description.replace("\t", " ").split()) or "(no description)"
    rows, run, head, state, changed = loop_inputs(log)
    if run is None:
        print("error: there is no run.log to log", file=sys.stderr)
        return 1
    if run["sha"] in state.get("logged", []):
        print("error: this run.log is already logged in results.tsv", file=sys.stderr)
        return 1
    d = decide(rows, run, head, state, changed)
    if crashed(run) or status == "crash":
        if status != "crash":
            print(f"note: run.log has no val_bpb ({d['why'] or 'crash'}): logged as crash, not {status}")
        status, value, memory = "crash", 0.0, 0.0
    else:
        value = d["value"] if d["value"] is not None else run["val_bpb"]
        memory = (run["peak_vram_mb"] or 0.0) / 1024
        if d["pair"]:
            description += f" (mean of 2 runs: {d['pair'][0]:.6f} {d['pair'][1]:.6f})"
    if not os.path.exists(log) or os.path.getsize(log) == 0:
        with open(log, "w") as f:
            f.write("\t".join(HEADER) + "\n")
    row = f"{head}\t{value:.6f}\t{memory:.1f}\t{status}\t{description}"
    with open(log, "a") as f:
        f.write(row + "\n")
    print(row)
    state = load_state()
    if d["why"].startswith("baseline"):
        state["baseline_runs"] = d["state"]["baseline_runs"]
    state["logged"] = (state.get("logged", []) + [run["sha"]])[-50:]
    if (state.get("pending") or {}).get("commit") == head:
        state.pop("pending")
    save_state(state)
    return 0


# ---------------------------------------------------------------------------
# Several logs, one per GPU worktree

def default_logs():
    found = sorted(glob.glob(os.path.join("worktrees", "*", "results.tsv")))
    return (["results.tsv"] if os.path.exists("results.tsv") or not found else []) + found


def series_name(path):
    parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return parent or path


def plot_many(logs, png_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(14, 7), dpi=120)
    colors = plt.get_cmap("tab10").colors
    total = kept = 0
    vals = []
    for i, (path, rows, summary) in enumerate(logs):
        color, name = colors[i % len(colors)], series_name(path)
        total += summary["total"]
        kept += summary["counts"]["keep"]
        base = summary["baseline"]
        if base is None:
            ax.plot([], [], color=color, label=f"{name}: no completed run")
            continue
        disc = [r for r in rows if r["status"] == "discard"]
        ax.scatter([r["index"] for r in disc], [r["val_bpb"] for r in disc], s=16, color=color,
                   alpha=0.25, linewidths=0, zorder=2)
        good = [r for r in rows if r["status"] == "keep"]
        ax.scatter([r["index"] for r in good], [r["val_bpb"] for r in good], s=40, color=color,
                   edgecolors="white", linewidths=0.8, zorder=4)
        xs, ys = [base["index"]], [base["val_bpb"]]
        for r in good:
            if r["index"] > base["index"] and r["val_bpb"] < ys[-1]:
                xs.append(r["index"])
                ys.append(r["val_bpb"])
        xs.append(rows[-1]["index"] + 0.5)
        ys.append(ys[-1])
        ax.step(xs, ys, where="post", color=color, linewidth=2.0, zorder=3,
                label=f"{name}: {base['val_bpb']:.4f} → {summary['best']['val_bpb']:.4f}")
        vals += [r for r in rows if r["status"] != "crash"]
    if vals:
        baseline = max(s["baseline"]["val_bpb"] for _, _, s in logs if s["baseline"])
        ax.set_ylim(*y_limits(vals, baseline))
    ax.set_title(f"autoresearch: {len(logs)} logs, {total} experiments, {kept} kept", fontsize=15, loc="left")
    finish_chart(fig, ax, "experiment # (per log)", png_path)
    plt.close(fig)


def main_many(paths, args):
    logs = []
    for path in paths:
        try:
            rows, skipped = read_log(path)
        except OSError as e:
            print(f"error: cannot read {path}: {e.strerror or e}", file=sys.stderr)
            return 1
        logs.append((path, rows, summarize(rows), skipped))
    counts = {s: sum(x[2]["counts"][s] for x in logs) for s in STATUSES}
    bests = [(x[2]["best"], x[0]) for x in logs if x[2]["best"]]
    best = min(bests, key=lambda b: b[0]["val_bpb"]) if bests else None
    png = None
    if not args.no_png:
        png = os.path.abspath("progress.png")
        plot_many([(p, r, s) for p, r, s, _ in logs], png)
    if args.json:
        out = {"logs": [{**s, "log": p, "skipped_lines": k} for p, _, s, k in logs],
               "total": sum(counts.values()), "counts": counts,
               "best": best and {**best[0], "log": best[1]}, "png": png}
        print(json.dumps(out, indent=2))
        return 0
    for path, _, summary, _ in logs:
        print(format_text(summary, path) + "\n")
    line = f"overall: {sum(counts.values())} experiments in {len(logs)} logs, {counts['keep']} kept"
    if best:
        line += (f"; best {best[0]['val_bpb']:.6f} in {best[1]} ({best[0]['commit']}, "
                 f"{best[0]['description']})")
    print(line)
    if png:
        print(f"\nwrote {png}")
    return 0


# ---------------------------------------------------------------------------
# Confirm: were the night's gains real? Scored on the test split, which the loop never sees.

CONFIRM_TIMEOUT = 540  # seconds, as program.md's Run


def confirm_targets(rows):
    """The baseline (the first kept row) and the best kept row of a log."""
    kept = [r for r in rows if r["status"] == "keep"]
    return (kept[0], min(kept, key=lambda r: r["val_bpb"])) if kept else (None, None)


def confirmation_run(worktree, log_path):
    """train.py once in confirmation mode: ({val_bpb, test_bpb, num_steps}, None) or (None, why).
    It runs on this interpreter, the project's environment that `uv run analysis.py` set up, so
    the temporary worktree needs no environment of its own."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "train.py"], cwd=worktree, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, AUTORESEARCH_CONFIRM="1"), start_new_session=True)
        try:
            proc.wait(timeout=CONFIRM_TIMEOUT)
        except subprocess.TimeoutExpired:
            return None, f"TIMEOUT after {CONFIRM_TIMEOUT} s"
        finally:
            if proc.poll() is None:  # timed out, or interrupted: end train.py and its compile workers
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    text = open(log_path, errors="replace").read().replace("\r", "\n")
    figures = {}
    for key in ("val_bpb", "test_bpb", "num_steps"):
        found = re.findall(rf"^{key}:\s+(\S+)\s*$", text, re.M)
        figures[key] = float(found[-1]) if found else None
    if None in figures.values():
        last = [line for line in text.splitlines() if line.strip() and not line.startswith("step ")]
        return None, f"crash, exit {proc.returncode}: {last[-1][:150] if last else 'no output'}"
    return figures, None


def confirmation_verdict(runs, night_noise_):
    """The numbers and the verdict: the test gain against the spread of the repeats (or the
    night's noise, if larger); crashed runs are reported, never averaged in."""
    ok = {side: [r for r in rs if r["figures"]] for side, rs in runs.items()}
    out = {"test_bpb": {}, "val_bpb": {}, "test_gain": None, "val_gain": None, "spread": None}
    for side in runs:
        for key in ("test_bpb", "val_bpb"):
            out[key][side] = statistics.mean(r["figures"][key] for r in ok[side]) if ok[side] else None
    if not ok["baseline"] or not ok["best"]:
        out["verdict"] = "cannot confirm: every run of the " + ("baseline" if not ok["baseline"] else "best commit") + " crashed"
        out["line"] = f"confirm: {out['verdict']}"
        return out
    test = {side: [r["figures"]["test_bpb"] for r in ok[side]] for side in ok}
    spread = max([max(v) - min(v) for v in test.values()] + [night_noise_ or 0.0])
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


def read_confirmation(beside):
    try:
        with open(confirmation_path(beside)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def cmd_confirm(log, n_runs, as_json):
    try:
        rows, _ = read_log(log)
    except OSError as e:
        print(f"error: cannot read {log}: {e.strerror or e}", file=sys.stderr)
        return 1
    base, best = confirm_targets(rows)
    if base is None or best["commit"] == base["commit"]:
        print(f"error: nothing to confirm: {log} has no kept commit better than the baseline", file=sys.stderr)
        return 1
    import prepare  # the cache this night ran against: its test split must exist
    if not os.path.exists(prepare.TEST_ROWS_FILE):
        print(f"error: {prepare.CACHE_DIR} has no test split (prepared before there were any): prepare a new "
              f"cache, AUTORESEARCH_CACHE=<new folder> uv run prepare.py ..., and run the night there", file=sys.stderr)
        return 1
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if as_json else (lambda *a: print(*a, flush=True))
    tmp = tempfile.mkdtemp(prefix="autoresearch-confirm-")
    trees, runs, t0 = {}, {"baseline": [], "best": []}, time.time()
    order = ["baseline", "best"] * n_runs  # alternating: a slow spell of the machine hits both
    try:
        for side, row in (("baseline", base), ("best", best)):
            trees[side] = os.path.join(tmp, side)
            subprocess.run(["git", "worktree", "add", "--quiet", "--detach", trees[side], row["commit"]],
                           check=True, capture_output=True)
            # one judge for both: this checkout's, which scores the test split (the night's commits
            # carry the same prepare.py, unless they predate its confirmation mode)
            shutil.copy(os.path.join(os.path.dirname(os.path.abspath(__file__)), "prepare.py"), trees[side])
        for i, side in enumerate(order, 1):
            row, elapsed = (base if side == "baseline" else best), time.time() - t0
            left = f", about {elapsed / (i - 1) * (len(order) - i + 1) / 60:.0f} min left" if i > 1 else ""
            say(f"[{i}/{len(order)}] {side} {row['commit']}: training ({elapsed / 60:.0f} min elapsed{left})")
            figures, why = confirmation_run(trees[side], os.path.join(tmp, f"run{i}.log"))
            runs[side].append({"figures": figures, "crash": why})
            say("    " + (f"val_bpb {figures['val_bpb']:.6f}, test_bpb {figures['test_bpb']:.6f}, "
                         f"{figures['num_steps']:.0f} steps" if figures else f"not counted: {why}"))
    except KeyboardInterrupt:
        print("interrupted: the temporary worktrees are removed; HEAD, the work tree and the log are as they were",
              file=sys.stderr)
        return 130
    except subprocess.CalledProcessError as e:
        print(f"error: git worktree add failed: {e.stderr.decode().strip()}", file=sys.stderr)
        return 1
    finally:
        for path in trees.values():
            subprocess.run(["git", "worktree", "remove", "--force", path], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(["git", "worktree", "prune"], capture_output=True)
    result = confirmation_verdict(runs, night_noise(rows))
    result["runs"] = runs
    for side, row in (("baseline", base), ("best", best)):
        result[side] = {"commit": row["commit"], "index": row["index"], "logged_val_bpb": row["val_bpb"],
                        "test_bpb": result["test_bpb"][side], "description": row["description"]}
    with open(confirmation_path(log), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2) if as_json else result["line"])
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("logs", nargs="*", metavar="log",
                    help="the log(s) (default: results.tsv and every worktrees/*/results.tsv)")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    ap.add_argument("--no-png", action="store_true", help="don't write progress.png")
    ap.add_argument("--decide", action="store_true", help="program.md's Decide: judge run.log")
    ap.add_argument("--log", metavar="STATUS", help="program.md's Log: append run.log's row, "
                    "the description read from stdin")
    ap.add_argument("--confirm", action="store_true", help="retrain the baseline and the best kept commit "
                    "and score both on the test split")
    ap.add_argument("--runs", type=int, default=2, help="--confirm: runs of each commit (default 2)")
    args = ap.parse_args(argv)

    if args.confirm:
        return cmd_confirm(args.logs[0] if args.logs else "results.tsv", max(1, args.runs), args.json)

    if args.decide or args.log:
        log = args.logs[0] if args.logs else "results.tsv"
        if args.log:
            return cmd_log(log, args.log, sys.stdin.read())
        return cmd_decide(log)
    paths = args.logs or default_logs()
    if len(paths) > 1:
        return main_many(paths, args)
    path = paths[0]
    try:
        rows, skipped = read_log(path)
    except OSError as e:
        print(f"error: cannot read {path}: {e.strerror or e}", file=sys.stderr)
        return 1
    summary = summarize(rows)
    png = None
    if not args.no_png:
        png = os.path.join(os.path.dirname(os.path.abspath(path)), "progress.png")
        plot(rows, summary, png)
    if args.json:
        out = {**summary, "log": path, "png": png, "skipped_lines": skipped}
        print(json.dumps(out, indent=2))
    else:
        print(format_text(summary, path))
        if png:
            print(f"\nwrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
