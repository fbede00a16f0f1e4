"""Real smoke nights for the keep rule (issue 35). Not a test: a measurement, ~3 min a night.

Each night follows program.md's commands literally (tests/test_ratchet.py's agent) on a fresh
copy of the repository: a baseline with its learning rates cut tenfold (two runs, a third when
they disagree), then one experiment restoring them (a gain of some 30 noises), then --noops
experiments that only add a comment (no-ops). It prints each experiment's verdict and how many
trainings it cost (Run calls, the incumbent's included), then the totals.

    .venv/bin/python tests/smoke_nights.py --nights 6 --noops 8 --work /tmp/nights
"""
import argparse
import os
import pathlib
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import run_prepare, write_corpus  # noqa: E402
from test_ratchet import decision, make_repo, set_learning_rates  # noqa: E402


def smoke_cache(work):
    cache = work / "cache"
    if not (cache / "val_rows.npy").exists():
        run_prepare(cache, "--data", write_corpus(str(work / "corpus"), 1_500_000), "--setup", "smoke")
    return str(cache)


def experiment(agent, edit, description):
    """Edit, Commit, then Run and Decide until a verdict; Log it (and Discard unless kept).
    Returns (verdict, trainings)."""
    edit(agent.repo / "train.py")
    assert agent("Commit", description=description).returncode == 0
    trainings = 0
    for _ in range(12):
        agent("Run")
        trainings += 1
        out = agent("Decide")
        if decision(out) != "rerun":
            break
    verdict = decision(out)
    agent("Log", status=verdict, description=description)
    if verdict != "keep":
        agent("Discard")
    return verdict, trainings, out.stdout


def night(work, cache, index, noops):
    agent = make_repo(work / f"night{index}", cache)
    for label in ("Create the branch", "Make sure git can commit", "Start the log"):
        assert agent(label, tag=f"n{index}").returncode == 0
    baseline = 0
    for description in ("baseline", "baseline run 2", "baseline run 3"):
        for _ in range(3):  # a run a busy machine spoiled is run again, as program.md says
            agent("Run")
            baseline += 1
            out = agent("Decide")
            if decision(out) != "rerun":
                break
        agent("Log", status="keep", description=description)
        if "a third run" not in out.stdout and description != "baseline":
            break
    gain = experiment(agent, lambda p: set_learning_rates(p, 1.0), "full learning rates")
    done = [experiment(agent, lambda p, k=k: p.write_text(p.read_text() + f"\n# no-op {k}\n"), f"no-op {k}")
            for k in range(noops)]
    return baseline, gain, done


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nights", type=int, default=6)
    ap.add_argument("--noops", type=int, default=0, help="no-op experiments after the gain, each night")
    ap.add_argument("--work", default="/tmp/nights")
    args = ap.parse_args()
    work = pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cache = smoke_cache(work)
    gains, noops = [], []
    for i in range(args.nights):
        t = time.time()
        baseline, gain, done = night(work, cache, len(list(work.glob("night*"))), args.noops)
        gains.append(gain)
        noops += done
        print(f"night {i + 1}: baseline {baseline} runs; full learning rates: {gain[0]} after {gain[1]} training(s); "
              f"no-ops: {sum(v == 'keep' for v, _, _ in done)} kept of {len(done)}, "
              f"{sum(n for _, n, _ in done)} trainings ({time.time() - t:.0f} s)", flush=True)
        if gain[0] != "keep":
            print(gain[2], flush=True)
    print(f"\nthe gain kept in {sum(v == 'keep' for v, _, _ in gains)} of {len(gains)} nights, "
          f"trainings {[n for _, n, _ in gains]}")
    if noops:
        print(f"no-ops: {sum(v == 'keep' for v, _, _ in noops)} kept of {len(noops)}, "
              f"{sum(n for _, n, _ in noops) / len(noops):.2f} trainings each")


if __name__ == "__main__":
    main()
