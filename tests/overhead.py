"""The time a run spends outside its training budget: start-up, compiling, the untimed steps and the
final evaluation (`total_seconds - training_seconds`), which a night pays once per experiment.

    AUTORESEARCH_CACHE=<a prepared cache> uv run python tests/overhead.py [ROUNDS]

Each round runs train.py three times, each in a fresh process, against a copy of the cache whose
budget is cut to 20 s (the overhead does not depend on it): cold (empty compile caches, the
precompiled headers in TMPDIR included), an unchanged re-run, and a re-run after a one-line edit of
the model (the MLP's activation, a new one each round), as an agent's experiment is. It prints
every run's phases, then each phase's median and range.
"""
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUDGET = 20
EDITS = ["F.gelu(x)", "F.silu(x)", "F.mish(x)", "F.elu(x)", "F.celu(x)", "F.softplus(x)", "F.selu(x)",
         "F.relu(x).square() * 1.01", "F.relu(x).square() * 1.02", "F.relu(x).square() * 1.03"]
PHASES = ["overhead", "start-up", "step 0", "step 1", "evaluation"]


def timed_lines(cmd, env, cwd):
    """Run cmd; every output line (status lines end in \\r) with the seconds since the start."""
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines, pending = [], b""
    while chunk := proc.stdout.read1(65536):
        *done, pending = re.split(rb"[\r\n]", pending + chunk)
        lines += [(time.time() - t0, line.decode(errors="replace")) for line in done if line.strip()]
    if proc.wait():
        sys.exit("error: train.py failed:\n" + "\n".join(line for _, line in lines[-30:]))
    return lines


def phases(lines):
    first = lambda pattern: next(t for t, line in lines if re.search(pattern, line))
    value = lambda pattern: float(next(m.group(1) for _, line in lines if (m := re.search(pattern, line))))
    return {
        "overhead": value(r"^total_seconds:\s+([\d.]+)") - value(r"^training_seconds:\s+([\d.]+)"),
        "start-up": first(r"^Time budget"),  # imports, the model, the optimizer, the first batch
        "step 0": value(r"step 00000 .*dt: (\d+)ms") / 1000,  # compiles, then trains
        "step 1": value(r"step 00001 .*dt: (\d+)ms") / 1000,
        "evaluation": first(r"^---") - first(r"^Evaluating"),
    }


def run(work, edit, rounds_dir):
    source = open(os.path.join(ROOT, "train.py")).read()
    if edit is not None:
        assert source.count("F.relu(x).square()") == 1, "train.py's MLP changed: update EDITS in tests/overhead.py"
        source = source.replace("F.relu(x).square()", edit)
    with open(os.path.join(work, "train.py"), "w") as f:
        f.write(source)
    env = dict(os.environ, AUTORESEARCH_CACHE=os.path.join(work, "cache"), PYTHONPATH=ROOT,
               TORCHINDUCTOR_CACHE_DIR=os.path.join(rounds_dir, "inductor"), TMPDIR=os.path.join(rounds_dir, "tmp"))
    return phases(timed_lines([sys.executable, "train.py"], env, work))


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    cache = os.environ.get("AUTORESEARCH_CACHE") or sys.exit("error: set AUTORESEARCH_CACHE to a prepared cache")
    results = {kind: [] for kind in ("cold", "re-run", "edited")}
    with tempfile.TemporaryDirectory() as work:
        shutil.copytree(cache, os.path.join(work, "cache"))
        with open(os.path.join(work, "cache", "setup.json")) as f:
            setup = json.load(f)
        setup["constants"]["TIME_BUDGET"] = BUDGET
        with open(os.path.join(work, "cache", "setup.json"), "w") as f:
            json.dump(setup, f)
        for r in range(rounds):
            rounds_dir = os.path.join(work, f"round{r}")
            os.makedirs(os.path.join(rounds_dir, "tmp"))
            isa_checks = os.path.join(work, "cache", "isa_checks.json")  # proven once per machine: again when cold
            if os.path.exists(isa_checks):
                os.remove(isa_checks)
            for kind, edit in (("cold", None), ("re-run", None), ("edited", EDITS[r % len(EDITS)])):
                results[kind].append(run(work, edit, rounds_dir))
                print(f"round {r + 1} {kind:7s}", "  ".join(f"{p} {results[kind][-1][p]:.1f} s" for p in PHASES), flush=True)
    print(f"\n{rounds} rounds, median (range) in seconds")
    print("| run | " + " | ".join(PHASES) + " |\n|" + " --- |" * (len(PHASES) + 1))
    for kind, runs in results.items():
        cells = [f"{statistics.median(r[p] for r in runs):.1f} ({min(r[p] for r in runs):.1f}-{max(r[p] for r in runs):.1f})"
                 for p in PHASES]
        print(f"| {kind} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
