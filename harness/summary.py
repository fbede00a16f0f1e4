"""The morning summary: results.tsv (one log, or one per GPU worktree) read as far as it can be,
the counts, the keep rate, the baseline, the best and the kept experiments ranked by gain, the
incumbent's re-runs through the night (the machine's drift), as text or JSON, and progress.png
(harness/chart.py). Reporting only: what each row means is harness/results.py's."""

import glob
import json
import os

from harness.cache import read_json
from harness.chart import plot, shorten
from harness.errors import fail, warn
from harness.results import (STATUSES, baseline_of, best_of, problem_line, read_log, same_commit)
from harness.run import STATE, git_out, read_run, recorded_setup


def read_logs(paths):
    """[(path, rows, skipped line numbers)]; a log that cannot be read at all fails. The
    summary reads what it can: the lines that are not rows are skipped, said in one line per log."""
    logs = []
    for path in paths:
        try:
            rows, problems = read_log(path)
        except OSError as e:
            fail(f"cannot read {path}: {e.strerror or e}")
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
    """The setup the night ran under: the record of the run.log beside the log says it, else the
    cache's setup.json; None if neither."""
    run = read_run(os.path.join(os.path.dirname(os.path.abspath(log_path)), "run.log")) or {}
    return run.get("setup") or recorded_setup()


def format_text(summary, path):
    e, total = summary["experiments"], summary["total"]
    n, setup = sum(e.values()), f" (setup {summary['setup']})" if summary["setup"] else ""
    out = [f"{path}{setup}: {total} run{'s' * (total != 1)}: the baseline's {total - n}, then {n} experiment"
           f"{'s' * (n != 1)}: {e['keep']} kept, {e['discard']} discarded, {e['crash']} crashed "
           f"(keep rate {summary['keep_rate']:.0%})"]
    if summary["setup"] == "smoke":
        out.append("smoke is an install check: these numbers only prove that the loop runs")
    again = [v for _, v in summary.get("incumbent_runs") or []]
    if again:
        out.append(f"the incumbent ran again {len(again)} time{'s' * (len(again) != 1)} beside experiments, "
                   f"{min(again):.6f} to {max(again):.6f}: the machine's drift (the chart's x marks)")
    base, best = summary["baseline"], summary["best"]
    if base is None:
        out.append("no completed run yet" + (" (only crashes)" if total else ""))
        return "\n".join(out)
    imp, noise = summary["improvement"], base["noise"]
    runs = ",".join(f"#{i}" for i in base["indices"])
    out.append(f"baseline  {base['val_bpb']:.6f}  {runs:<7} {base['commit']:<7}  {base['description']}"
               + (f", its pair {noise:.6f} apart" if noise else ""))
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


def default_logs():
    found = sorted(glob.glob(os.path.join("worktrees", "*", "results.tsv")))
    return (["results.tsv"] if os.path.exists("results.tsv") or not found else []) + found


def incumbent_runs(rows, log_path):
    """The incumbent's runs beside the experiments, from the night's history beside the log (the
    state in its checkout's git folder): [(x, val_bpb)], x just before the row of the experiment
    each ran beside. [] for a log with no history there (an old log, another agent's series)."""
    gitdir = git_out("-C", os.path.dirname(os.path.abspath(log_path)), "rev-parse", "--absolute-git-dir")
    history = read_json(os.path.join(gitdir, STATE)).get("runs", []) if gitdir and os.path.exists(log_path) else []
    points, x = [], None
    for r in history if isinstance(history, list) else []:
        if r.get("role") == "candidate":
            x = next((row["index"] for row in rows if same_commit(row["commit"], r.get("commit"))), None)
        elif r.get("role") == "incumbent" and x is not None:
            points.append((x - 0.3, r["val_bpb"]))
    return points


def report(logs, args, fleet=()):
    """The summary of one log, or of several (one per GPU or agent) with an overall line, then the
    fleet's lines (fleet_lines); and the chart."""
    logs = [(path, rows, {**summarize(rows, night_setup(path)), "incumbent_runs": incumbent_runs(rows, path)},
             skipped) for path, rows, skipped in logs]
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
