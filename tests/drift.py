"""Does this machine drift over a night? (issue 22, item 1) Not a test: a measurement, ~90 s a run.

Runs the work tree's train.py, unchanged, again and again for --hours (the `small` setup with
TIME_BUDGET cut to 60 s, as tests/fairness.py prepares it). Before each run it times two fixed
reference computations (512x512 matmuls on 2 threads; a 256 MB memory copy); every 10 s it samples
the load average, /proc/stat's steal time and /proc/cpuinfo's clock. The report prints the series
(tokens trained and val_bpb against time) and whether anything tracks it: the pace's trend per
hour, the von Neumann ratio (mean squared successive difference over the variance: about 2 for
independent noise, well under 2 when the machine drifts, i.e. when adjacent runs agree better than
the night's runs do), and each signal's correlation with the pace.

    .venv/bin/python tests/drift.py --hours 2 --work /tmp/drift     # run, then report
    .venv/bin/python tests/drift.py --report --work /tmp/drift      # report an earlier series
    .venv/bin/python tests/drift.py --report --export tests/drift_series.tsv   # what CI replays

Layout under --work: runs/NNN/ (the run's record: judge.json, clock.json; out.log, probe.json,
times.json) and machine.tsv (epoch s, load 1 min, steal jiffies, total jiffies, mean MHz).
"""
import argparse
import glob
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from fairness import prepare  # noqa: E402  the same `small` cache, budget 60 s
sys.path.insert(0, ROOT)
WINDOW_S = 15 * 60  # the report's means per quarter of an hour


def probe():
    """The speed of fixed work, independent of the model: matmul GFLOP/s and copy GB/s."""
    import numpy as np
    import torch
    torch.set_num_threads(2)
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    for _ in range(20):
        a @ b
    t, n = time.perf_counter(), 400
    for _ in range(n):
        a @ b
    matmul = 2 * 512 ** 3 * n / (time.perf_counter() - t) / 1e9
    x = np.ones(32 * 2 ** 20)
    y = np.empty_like(x)
    np.copyto(y, x)
    t = time.perf_counter()
    for _ in range(10):
        np.copyto(y, x)
    copy = 2 * x.nbytes * 10 / (time.perf_counter() - t) / 1e9
    return {"t": time.time(), "matmul_gflops": round(matmul, 2), "copy_gbps": round(copy, 2)}


def sample_machine(path, stop):
    with open(path, "a") as out:
        while not stop.is_set():
            fields = open("/proc/stat").readline().split()[1:9]
            mhz = [float(line.split(":")[1]) for line in open("/proc/cpuinfo") if line.startswith("cpu MHz")]
            out.write(f"{time.time():.0f}\t{os.getloadavg()[0]:.2f}\t{fields[7]}\t{sum(map(int, fields))}\t"
                      f"{statistics.mean(mhz) if mhz else 'na'}\n")
            out.flush()
            stop.wait(10)


def record(work, hours):
    cache = prepare(work)
    stop = threading.Event()
    threading.Thread(target=sample_machine, args=(os.path.join(work, "machine.tsv"), stop), daemon=True).start()
    end, i = time.time() + hours * 3600, len(glob.glob(os.path.join(work, "runs", "*")))
    while time.time() < end:
        i += 1
        folder = os.path.join(work, "runs", f"{i:03d}")
        os.makedirs(folder)
        json.dump(probe(), open(os.path.join(folder, "probe.json"), "w"))
        start = time.time()
        with open(os.path.join(folder, "out.log"), "w") as log:
            rc = subprocess.run([sys.executable, "train.py"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, AUTORESEARCH_CACHE=cache, AUTORESEARCH_RUN_DIR=folder)).returncode
        json.dump({"start": start, "end": time.time(), "rc": rc}, open(os.path.join(folder, "times.json"), "w"))
    stop.set()


def load_series(work):
    runs = []
    for folder in sorted(glob.glob(os.path.join(work, "runs", "*"))):
        try:
            judge = json.load(open(os.path.join(folder, "judge.json")))
            times = json.load(open(os.path.join(folder, "times.json")))
            probed = json.load(open(next(iter(glob.glob(os.path.join(folder, "probe*.json"))))))
        except (OSError, ValueError, StopIteration):
            continue  # a run still going, or one that crashed: no point in the series
        runs.append({"start": times["start"], "end": times["end"], "tokens": judge["train_tokens"],
                     "val_bpb": judge["val_bpb"], "budget_s": judge["clock"]["budget_seconds"],
                     "wall_s": judge["clock"]["wall_seconds"], **probed})
    machine = [line.split("\t") for line in open(os.path.join(work, "machine.tsv")) if line.strip()]
    for r in runs:
        inside = [m for m in machine if r["start"] <= float(m[0]) <= r["end"]]
        if len(inside) >= 2:
            steal, total = (int(inside[-1][k]) - int(inside[0][k]) for k in (2, 3))
            r["steal_pct"] = 100 * steal / total if total else 0.0
            r["load"] = statistics.mean(float(m[1]) for m in inside)
            mhz = [m[4].strip() for m in inside]
            r["mhz"] = None if "na" in mhz else statistics.mean(map(float, mhz))
    return runs


def von_neumann(xs):
    """Mean squared successive difference over the variance: ~2 for independent runs, <2 for drift."""
    return statistics.mean((b - a) ** 2 for a, b in zip(xs, xs[1:])) / statistics.variance(xs)


def robust_sd(xs):
    median = statistics.median(xs)
    return 1.4826 * statistics.median(abs(x - median) for x in xs)


def slope_per_hour(ts, xs):
    return statistics.linear_regression(ts, xs).slope * 3600


def replay_keep_rule(runs, gain=0.0, start=0):
    """The keep rule (harness/keep_rule.py) replayed on the series from run `start` on: two runs
    are the baseline, then each next run is whatever the rule asks for, or a new candidate once it
    has decided. Every run is the same code, so a candidate is a no-op; with `gain`, each
    candidate's runs are made that much better than its incumbent's. Returns (decided, kept)."""
    from harness import keep_rule
    series = runs[start:]
    night = [dict(commit="base000", role="baseline", val_bpb=r["val_bpb"], steps=r["tokens"], time=r["end"])
             for r in series[:2]]
    offset, incumbent, n, decided, kept, due = {"base000": 0.0}, "base000", 0, 0, 0, None
    for r in series[2:]:
        if due is None:  # the last experiment is decided: a new candidate, built on the incumbent
            n += 1
            offset[f"c{n:06d}"] = offset[incumbent] - gain  # 7 characters, as git abbreviates: the rule compares commits by that prefix
        commit = incumbent if due == "incumbent" else f"c{n:06d}"
        run = dict(commit=commit, role=due or "candidate", val_bpb=r["val_bpb"] + offset[commit],
                   steps=r["tokens"], time=r["end"])
        v = keep_rule.decide(night, run, incumbent)
        night.append(run)
        due = v["who"] if v["decision"] == "run" else None
        if due is None:
            decided += 1
            if v["decision"] == "keep":
                kept, incumbent = kept + 1, f"c{n:06d}"  # the verdict may come on the incumbent's run
    return decided, kept


def report(work):
    runs = load_series(work)
    if len(runs) < 3:
        sys.exit(f"drift: {len(runs)} finished runs under {work}/runs, too few to report; run it longer")
    t0 = runs[0]["start"]
    print(f"{'min':>5} {'tokens':>9} {'val_bpb':>9} {'budget s':>8} {'matmul GF/s':>11} {'copy GB/s':>9} "
          f"{'steal %':>7} {'load':>5}")
    for r in runs:
        print(f"{(r['start'] - t0) / 60:5.0f} {r['tokens']:9,d} {r['val_bpb']:9.6f} {r['budget_s']:8.1f} "
              f"{r['matmul_gflops']:11.1f} {r['copy_gbps']:9.1f} {r.get('steal_pct', math.nan):7.3f} "
              f"{r.get('load', math.nan):5.2f}")
    print(f"\n{'minutes':>9} {'runs':>4} {'tokens':>9} {'val_bpb':>8} {'matmul GF/s':>11} {'copy GB/s':>9}  (means)")
    for k in range(int((runs[-1]["start"] - t0) // WINDOW_S) + 1):
        w = [r for r in runs if k * WINDOW_S <= r["start"] - t0 < (k + 1) * WINDOW_S]
        if w:
            mean = lambda key: statistics.mean(r[key] for r in w)  # noqa: E731
            print(f"{k * WINDOW_S // 60:4d}-{(k + 1) * WINDOW_S // 60:<4d} {len(w):4d} {mean('tokens'):9,.0f} "
                  f"{mean('val_bpb'):8.4f} {mean('matmul_gflops'):11.1f} {mean('copy_gbps'):9.2f}")
    ts = [r["end"] for r in runs]
    hours = (ts[-1] - runs[0]["start"]) / 3600
    print(f"\n{len(runs)} runs of one commit over {hours:.2f} h")
    for key, fmt in (("tokens", "{:,.0f}"), ("val_bpb", "{:.4f}"), ("matmul_gflops", "{:.1f}"), ("copy_gbps", "{:.2f}")):
        xs = [r[key] for r in runs]
        mean = statistics.mean(xs)
        third = len(xs) // 3
        print(f"{key:>14}: mean {fmt.format(mean)}, sd {fmt.format(statistics.stdev(xs))} "
              f"({100 * statistics.stdev(xs) / mean:.2f}%), range {fmt.format(min(xs))}..{fmt.format(max(xs))}; "
              f"first third {fmt.format(statistics.mean(xs[:third]))}, last third {fmt.format(statistics.mean(xs[-third:]))}; "
              f"trend {100 * slope_per_hour(ts, xs) / mean:+.2f}% per hour; von Neumann ratio {von_neumann(xs):.2f}")
    pace = [r["tokens"] for r in runs]
    for key in ("val_bpb", "matmul_gflops", "copy_gbps", "steal_pct", "load", "mhz"):
        pairs = [(p, r[key]) for p, r in zip(pace, runs) if r.get(key) is not None and not math.isnan(r[key])]
        if len(pairs) >= 3 and len({y for _, y in pairs}) > 1:
            print(f"correlation of the pace with {key}: {statistics.correlation(*zip(*pairs)):+.2f}")
        elif pairs:
            print(f"{key}: constant at {pairs[0][1]} (tracks nothing)")
    sd = robust_sd([r["val_bpb"] for r in runs])
    print(f"\nthe keep rule replayed on these runs (from each of the first 10 runs on; gains in units of "
          f"their spread, {sd:.4f}: 1.4826 median absolute deviations, which one stalled run does not inflate):")
    for label, gain in (("no-op", 0.0), ("2 sd better", 2 * sd), ("4 sd better", 4 * sd)):
        tallies = [replay_keep_rule(runs, gain, start) for start in range(min(10, len(runs) - 3))]
        decided, kept = sum(t[0] for t in tallies), sum(t[1] for t in tallies)
        print(f"  {label:>12}: {kept} of {decided} experiments kept ({100 * kept / max(decided, 1):.0f}%)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=float, default=2.0)
    parser.add_argument("--work", default="/tmp/drift")
    parser.add_argument("--report", action="store_true", help="only report the series already under --work")
    parser.add_argument("--export", metavar="TSV", help="also write the series (minute, tokens, val_bpb) to TSV")
    args = parser.parse_args()
    if not args.report:
        record(args.work, args.hours)
    report(args.work)
    if args.export:
        runs = load_series(args.work)
        with open(args.export, "w") as f:
            f.write("minute\ttokens\tval_bpb\n")
            f.writelines(f"{(r['end'] - runs[0]['start']) / 60:.2f}\t{r['tokens']}\t{r['val_bpb']:.6f}\n" for r in runs)


def read_export(path):
    """A series written by --export, as load_series gives it (what replay_keep_rule reads)."""
    rows = [line.split("\t") for line in open(path).read().splitlines()[1:]]
    return [{"end": 60 * float(m), "tokens": int(t), "val_bpb": float(v)} for m, t, v in rows]


if __name__ == "__main__":
    main()
