"""Is the training budget fair on a shared CPU? (issue 17) Not a test: a benchmark, ~90 s a run.

Runs train.py variants under the `small` setup with TIME_BUDGET cut to 60 s, quiet and beside one
busy process (`python3 -c "while True: pass"`), interleaved round by round so the machine's drift
hits every cell alike, and prints steps, tokens/s (timed tokens over the wall seconds they took),
val_bpb, training_seconds and wall seconds per cell: median [min..max]. `uptime` goes with each run.

    .venv/bin/python tests/fairness.py --rounds 3 old=HEAD~1 new=.
    .venv/bin/python tests/fairness.py --probe old=HEAD~1   # per-step clocks, see probe_table()

A variant is NAME=REV: train.py and its clock (harness/, or machinery.py before it) from git revision REV, or from the work tree for
`.`; prepare.py is always the work tree's. ENV=VALUE pairs after a colon set the run's environment,
e.g. spin=.:OMP_WAIT_POLICY=PASSIVE. --probe patches each copy to record, per step, the wall time,
the process CPU time and every thread's scheduler run-queue delay (/proc/self/task/*/schedstat),
so that candidate clocks can be compared from the same runs.
"""
import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)
from harness.clock import computed_seconds  # noqa: E402  the clock the harness runs on now
BUDGET = 60

PROBE_BEFORE = re.compile(r"\nwhile True:\n")
PROBE_AFTER = "    dt = budget.step_seconds\n"
PROBE_CODE = '''
def _probe_snapshot():
    delays = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                run, wait, _ = f.read().split()
            delays[tid] = (int(run), int(wait))
        except OSError:
            pass
    return time.time(), time.process_time(), delays
_probe_steps = []
import atexit
atexit.register(lambda: json.dump({"threads": torch.get_num_threads(), "steps": _probe_steps},
                                  open(os.environ["FAIRNESS_PROBE"], "w")))
import json
'''


def prepare(work):
    """A `small` cache from ~2M characters of stdlib docstrings, its budget cut to BUDGET seconds."""
    from conftest import write_corpus
    cache = os.path.join(work, "cache")
    if not os.path.exists(os.path.join(cache, "setup.json")):
        corpus = write_corpus(os.path.join(work, "corpus"), 2_000_000)
        subprocess.run([sys.executable, os.path.join(ROOT, "prepare.py"), "--data", corpus, "--setup", "small"],
                       env=dict(os.environ, AUTORESEARCH_CACHE=cache), check=True, cwd=ROOT)
    setup_file = os.path.join(cache, "setup.json")
    setup = json.load(open(setup_file))
    setup["constants"]["TIME_BUDGET"] = BUDGET
    json.dump(setup, open(setup_file, "w"), indent=2)
    return cache


def make_variant(work, name, spec, probe):
    rev, _, env = spec.partition(":")
    folder = os.path.join(work, "variants", name)
    os.makedirs(folder, exist_ok=True)
    # the budget clock is harness/clock.py's since 2026-12-04 (machinery.py's before): a variant runs
    # its own revision's harness/ (or machinery.py), the script's folder first on the path
    if rev == ".":
        shutil.copytree(os.path.join(ROOT, "harness"), os.path.join(folder, "harness"), dirs_exist_ok=True)
    else:
        for tree in ("harness", "machinery.py"):
            if subprocess.run(["git", "-C", ROOT, "cat-file", "-e", f"{rev}:{tree}"]).returncode == 0:
                archive = subprocess.run(["git", "-C", ROOT, "archive", rev, tree], capture_output=True, check=True)
                subprocess.run(["tar", "-x", "-C", folder], input=archive.stdout, check=True)
    for file in ("train.py",):
        if rev == ".":
            text = open(os.path.join(ROOT, file)).read()
        else:
            text = subprocess.run(["git", "-C", ROOT, "show", f"{rev}:{file}"], capture_output=True,
                                  text=True, check=True).stdout
        if file == "train.py" and probe:
            assert len(PROBE_BEFORE.findall(text)) == 1 and text.count(PROBE_AFTER) == 1
            text = text.replace("# Training loop\n", "# Training loop\n" + PROBE_CODE, 1)
            text = PROBE_BEFORE.sub(lambda m: m.group(0) + "    _p0 = _probe_snapshot()\n", text)
            text = text.replace(PROBE_AFTER, "    _probe_steps.append((_p0, _probe_snapshot()))\n" + PROBE_AFTER)
        open(os.path.join(folder, file), "w").write(text)
        if file == "train.py":
            batch = int(eval(re.search(r"TOTAL_BATCH_SIZE = (.*?)\[SETUP\]", text).group(1))["small"])
    env = dict(pair.split("=", 1) for pair in env.split(",") if pair)
    untimed = 1  # the CPU's untimed steps (the compile)
    return dict(name=name, script=os.path.join(folder, "train.py"), env=env, batch=batch, untimed=untimed)


def run(variant, cache, busy, probe_file=None):
    env = dict(os.environ, AUTORESEARCH_CACHE=cache, PYTHONPATH=ROOT, **variant["env"])
    if probe_file:
        env["FAIRNESS_PROBE"] = probe_file
    load = os.getloadavg()
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        t = time.time()
        result = subprocess.run([sys.executable, variant["script"]], cwd=os.path.dirname(variant["script"]),
                                env=env, capture_output=True, text=True, timeout=900)
        elapsed = time.time() - t
    finally:
        if hog:
            hog.kill()
            hog.wait()
    if result.returncode != 0:
        raise RuntimeError(result.stdout[-2000:] + result.stderr[-2000:])
    values = dict(re.findall(r"^(\w+):\s+(\S+)$", result.stdout, re.M))
    steps = int(values["num_steps"])
    training = float(values["training_seconds"])
    wall = float(values.get("training_wall_seconds", training))  # before the budget clock, they were one
    return dict(steps=steps, bpb=float(values["val_bpb"]), train_s=training, wall_s=wall,
                tok_s=(steps - variant["untimed"]) * variant["batch"] / wall, elapsed=elapsed,
                load=load, notes=[l for l in result.stdout.splitlines() if l.startswith("Budget clock")])


def summary(values, fmt):
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}..{fmt.format(max(values))}]"


def probe_table(probe):
    """Per-step seconds that each candidate clock would count, from one probed run: the wall
    clock; CPU time / threads; wall minus the threads' summed run-queue delay / threads; wall
    minus the largest one thread's delay in the step; wall minus the sum of the threads' delays;
    the busiest thread's own CPU time in the step; and that CPU time held between wall-sum and
    wall-max (the bounds a step's true stretch lies in, if waits stretch a step only at barriers)."""
    threads = probe["threads"]
    rows = {"wall": [], "cpu/threads": [], "wall-sum/threads": [], "wall-max": [], "wall-sum": [],
            "busiest-cpu": [], "clamped": []}
    for (w0, c0, d0), (w1, c1, d1) in probe["steps"][1:]:  # step 0 compiles
        wall = w1 - w0
        waits = [(d1[t][1] - d0.get(t, (0, 0))[1]) / 1e9 for t in d1]
        runs = [(d1[t][0] - d0.get(t, (0, 0))[0]) / 1e9 for t in d1]
        rows["wall"].append(wall)
        rows["cpu/threads"].append((c1 - c0) / threads)
        rows["wall-sum/threads"].append(wall - sum(waits) / threads)
        rows["wall-max"].append(wall - max(waits))
        rows["wall-sum"].append(wall - sum(waits))
        rows["busiest-cpu"].append(max(runs))
        rows["clamped"].append(computed_seconds(wall, runs, waits))
    return {k: statistics.median(v) for k, v in rows.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", help="NAME=REV[:ENV=VALUE,...]")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", action="store_true", help="one unmeasured run per variant first (compile caches)")
    parser.add_argument("--probe", action="store_true")
    parser.add_argument("--loads", default="quiet,busy", help="quiet, busy or both (the default)")
    parser.add_argument("--work", default="/tmp/fair")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so that `finally` ends the busy neighbour
    cache = prepare(args.work)
    variants = [make_variant(args.work, *v.split("=", 1), args.probe) for v in args.variants]
    if args.warmup:
        for v in variants:
            run(v, cache, busy=False)
    cells = {}
    for r in range(args.rounds):
        order = [(v, load == "busy") for v in variants for load in args.loads.split(",")]
        order = order[r % len(order):] + order[:r % len(order)]  # rotate: no cell always goes first
        for v, busy in order:
            probe_file = os.path.join(args.work, f"probe-{v['name']}-{busy}-{r}.json") if args.probe else None
            res = run(v, cache, busy, probe_file)
            key = (v["name"], "busy" if busy else "quiet")
            cells.setdefault(key, []).append(res)
            extra = ""
            if probe_file:
                res["probe"] = probe_table(json.load(open(probe_file)))
                extra = " " + " ".join(f"{k}={1000 * s:.0f}ms" for k, s in res["probe"].items())
            print(f"round {r} {key[0]:>8} {key[1]:>5}: steps {res['steps']:3d} tok/s {res['tok_s']:6.0f} "
                  f"bpb {res['bpb']:.3f} train {res['train_s']:.1f}s wall {res['wall_s']:.1f}s "
                  f"load {res['load'][0]:.2f}/{res['load'][1]:.2f}/{res['load'][2]:.2f}{extra} {' '.join(res['notes'])}",
                  flush=True)
    print(f"\n{'variant':>8} {'load':>5} | {'steps':>14} | {'tokens/s':>17} | {'val_bpb':>20} | "
          f"{'training_seconds':>17} | {'wall seconds':>17} | load avg (1 min)")
    for (name, load), rs in cells.items():
        col = lambda k, fmt: summary([r[k] for r in rs], fmt)
        print(f"{name:>8} {load:>5} | {col('steps', '{:.0f}'):>14} | {col('tok_s', '{:.0f}'):>17} | "
              f"{col('bpb', '{:.3f}'):>20} | {col('train_s', '{:.1f}'):>17} | {col('wall_s', '{:.1f}'):>17} | "
              f"{summary([r['load'][0] for r in rs], '{:.2f}')}")
        if args.probe:
            for k in rs[0]["probe"]:
                print(f"{'':>14} per-step {k:>17}: {summary([1000 * r['probe'][k] for r in rs], '{:.0f}')} ms")


if __name__ == "__main__":
    main()
