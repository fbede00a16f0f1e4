"""Replays the keep rule on generated nights, without training: today's rule (program.md's Decide,
as analysis.decide applies it) against harness/keep_rule.py's, on the same kinds of machine.

    python tests/simulate_rule.py [--nights N] [--seed S] [--before REV]

--before REV also plays harness/keep_rule.py as it was at git revision REV (loaded with `git
show`), beside today's, on the same machines and mixes: the table docs/design.md shows.

A night, as assumed here (from the figures measured on this project: README, issue 22):
- 8 hours of runs of 360 s each (300 s of training plus start-up and evaluation), CPU `small`;
  the baseline's two runs (a third when their steps disagree), then experiments until 8 hours.
- One commit's runs on a steady machine scatter by SIGMA = 0.004 bpb (a quiet machine's
  same-commit spread, measured at 0.003-0.005) and their steps by 1% (203 against 206).
- The machine's speed moves val_bpb and the steps together: the unchanged baseline fitted 205
  steps at night and 240 in the morning, its val_bpb 0.069 lower, so val_bpb moves by
  0.069 / ln(240/205) = 0.44 per unit of log-speed.
- The machines: quiet; a random-walk drift of SIGMA/2 per run (about 0.018 over a night); a
  strong one of SIGMA per run (a stress test: two adjacent runs of one commit then differ by
  1.7 SIGMA, so a gain of 4 SIGMA is under 3 times their spread); the night-to-morning move as a
  steady trend (0.069 in 70 runs), the machine getting faster (as measured) or slower; a step
  to 240/205 of the speed halfway (-0.069); one slow hour at a random time, at 79% of the speed
  (tests/fairness.py beside one busy process: +0.10 bpb).
- A short budget's jittery pace (measured: one commit's smoke runs, 5 s of training, paced 97k
  to 120k tokens on a quiet machine, and 120 to 155 steps on another): each run's pace wanders by
  JITTER (8%) on its own, and its val_bpb with it (at this budget the noise *is* the pace: the
  measured correlation is -0.97), the run's spread still SIGMA.
- Keep rates: the mix's share of real gains sets how many experiments a rule can keep; MIXES
  gives the 10%, 18% and 35% nights (upstream's own night kept 18%, the last real one here 35%).
- The candidates, drawn one by one, each built on the last kept commit: 60% worse (by 1 to 8
  SIGMA), 25% no-ops, 7.5% real gains of 2 SIGMA, 7.5% of 4 SIGMA. With this mix today's rule
  keeps about 20% of the experiments on a quiet machine, as upstream's published sessions did
  (15 kept of 83, 24 of 125). Runs per experiment depend on the mix: worse ideas cost one run
  under either rule, real gains cost the new rule two or three.
- An A/A night: every candidate a no-op (a comment added). Simplifications: a train.py with
  fewer lines of code that changes nothing, one that is worse by 2 SIGMA, and a deleted comment
  (fewer lines but no fewer lines of code: the new rule judges it as a no-op; today's rule
  counts lines).
"""

import argparse
import math
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import keep_rule  # noqa: E402

SIGMA = 0.004                     # bpb: one commit's run-to-run spread on a steady machine
STEP_JITTER = 0.01                # the steps' run-to-run spread on a steady machine
JITTER = 0.08                     # a short budget's pace: its run-to-run spread, which moves val_bpb
JITTER_CORR = 0.97                # ... with this correlation (the drift series: -0.97)
BPB_PER_LOG_SPEED = 0.069 / math.log(240 / 205)
BASE_STEPS = 205
RUN_S = 360
NIGHT_S = 8 * 3600
TREND = 0.069 / 70                # bpb per run: the night-to-morning move as a steady trend
MIX = (("worse", 0.6), ("no-op", 0.25), ("2x", 0.075), ("4x", 0.075))
AA_MIX = (("no-op", 1.0),)


def gains_mix(share):
    """A night whose candidates are real gains `share` of the time (half of 2, half of 4 SIGMA),
    the rest 70% worse and 30% no-ops."""
    return (("worse", 0.7 * (1 - share)), ("no-op", 0.3 * (1 - share)), ("2x", share / 2), ("4x", share / 2))


MIXES = {"10%": gains_mix(0.14), "18%": gains_mix(0.25), "35%": gains_mix(0.5)}  # keep rate: its mix
SIMPLER_MIX = (("shorter, same", 0.4), ("shorter, 2x worse", 0.3), ("comment deleted", 0.3))
SCENARIOS = ("quiet", "drift", "strong drift", "trend, faster", "trend, slower", "step", "slow hour", "jittery pace")
STRESS = ("strong drift", "trend, slower")  # beyond the measured: false keeps held, gains reported
FLOOR = 0.0005                    # analysis.NOISE_FLOOR
BASELINE_AGREE = 0.10             # analysis.BASELINE_AGREE: a third baseline run above this


# ---------------------------------------------------------------------------------------------
# Machines and candidates

def machine(scenario, rng):
    """log-speed(t) for one night of `scenario`, t the time a run finishes (0 = the night's start)."""
    slots = NIGHT_S // RUN_S + 2
    if scenario in ("quiet", "jittery pace"):
        return lambda t: 0.0
    if scenario in ("drift", "strong drift"):
        step = SIGMA * (0.5 if scenario == "drift" else 1.0) / BPB_PER_LOG_SPEED
        walk = [0.0]
        for _ in range(slots):
            walk.append(walk[-1] + rng.gauss(0, step))
        return lambda t: walk[min(int(t // RUN_S), slots)]
    if scenario in ("trend, faster", "trend, slower"):
        rate = (1 if scenario == "trend, faster" else -1) * TREND / BPB_PER_LOG_SPEED / RUN_S
        return lambda t: rate * t
    if scenario == "step":
        return lambda t: math.log(240 / 205) if t - RUN_S / 2 >= NIGHT_S / 2 else 0.0
    if scenario == "slow hour":
        start = rng.uniform(0, NIGHT_S - 3600)
        return lambda t: math.log(0.79) if start <= t - RUN_S / 2 < start + 3600 else 0.0
    raise ValueError(scenario)


def effect(kind, rng):
    """The candidate's true change of val_bpb against the commit it is built on."""
    if kind == "worse":
        return rng.uniform(1, 8) * SIGMA
    return {"no-op": 0.0, "2x": -2 * SIGMA, "4x": -4 * SIGMA, "shorter, same": 0.0,
            "shorter, 2x worse": 2 * SIGMA, "comment deleted": 0.0}[kind]


def pick(mix, rng):
    x = rng.random()
    for kind, share in mix:
        x -= share
        if x < 0:
            return kind
    return mix[-1][0]


def new_night(scenario, rng):
    return {"rng": rng, "speed": machine(scenario, rng), "t": 0, "runs": 0,
            "jitter": JITTER if scenario == "jittery pace" else 0.0}


def run_once(night, commit, role, quality):
    """One run, as Decide's caller would pass it: the clock advances by a run."""
    night["t"] += RUN_S
    night["runs"] += 1
    s, rng = night["speed"](night["t"]), night["rng"]
    if not night["jitter"]:
        return {"commit": commit, "role": role, "time": night["t"],
                "val_bpb": quality - BPB_PER_LOG_SPEED * s + rng.gauss(0, SIGMA),
                "steps": BASE_STEPS * math.exp(s) * (1 + rng.gauss(0, STEP_JITTER))}
    j = rng.gauss(0, night["jitter"])  # this run's own pace, and the val_bpb it brings
    return {"commit": commit, "role": role, "time": night["t"],
            "val_bpb": quality - BPB_PER_LOG_SPEED * s - JITTER_CORR * SIGMA * j / night["jitter"]
                       + rng.gauss(0, SIGMA * math.sqrt(1 - JITTER_CORR ** 2)),
            "steps": BASE_STEPS * math.exp(s + j)}


def room(night):
    return night["t"] + RUN_S <= NIGHT_S


def baseline(night):
    """The baseline as analysis.py runs it: two runs, a third when their steps disagree."""
    runs = [run_once(night, "base", "baseline", 0.0) for _ in range(2)]
    if step_gap(*runs) > BASELINE_AGREE:
        runs.append(run_once(night, "base", "baseline", 0.0))
    return runs


def step_gap(a, b):
    return abs(a["steps"] - b["steps"]) / max(a["steps"], b["steps"])


# ---------------------------------------------------------------------------------------------
# The two rules, each driving a night; each returns [(kind, kept, runs)] of its decided experiments

def night_today(scenario, mix, rng):
    """program.md's rule as analysis.decide applies it: noise = the baseline pair's difference (the
    two of three whose steps agree best), at least the floor; best = the pair's mean, then the
    lowest kept value; keep if gain > noise, or if train.py is shorter and gain >= -noise; a gain
    within the noise runs once more and the pair's mean decides (judge_today)."""
    night = new_night(scenario, rng)
    runs = baseline(night)
    pair = min(((a, b) for i, a in enumerate(runs) for b in runs[i + 1:]), key=lambda p: step_gap(*p))
    noise = max(abs(pair[0]["val_bpb"] - pair[1]["val_bpb"]), FLOOR)
    best, quality, done = (pair[0]["val_bpb"] + pair[1]["val_bpb"]) / 2, 0.0, []
    while room(night):
        kind = pick(mix, rng)
        q, shorter = quality + effect(kind, rng), kind.startswith(("shorter", "comment"))
        value, before = run_once(night, "c", "candidate", q)["val_bpb"], night["runs"]
        decision = judge_today(best - value, noise, False, shorter)
        if decision == "rerun":
            if not room(night):
                break
            value = (value + run_once(night, "c", "candidate", q)["val_bpb"]) / 2  # Log writes the mean
            decision = judge_today(best - value, noise, True, shorter)
        if decision == "keep":
            quality, best = q, min(best, value)  # analysis.bar_lowerings: a keep below the best lowers it
        done.append((kind, decision == "keep", night["runs"] - before + 1))
    return done


def judge_today(gain, noise, pair, shorter):
    """analysis.judge_gain."""
    if gain > noise or shorter and gain >= -noise:
        return "keep"
    if pair:
        return "keep" if gain > 0 else "discard"
    return "rerun" if gain > 0 else "discard"


def night_new(scenario, mix, rng, rule=keep_rule):
    """harness/keep_rule.py's rule: the harness runs whichever side it names (the incumbent in a
    worktree); a simplification deletes 3 lines of code, a deleted comment none."""
    night = new_night(scenario, rng)
    history, incumbent, quality, done = baseline(night), "base", 0.0, []
    for i in range(NIGHT_S):
        if not room(night):
            break
        kind, commit = pick(mix, rng), f"c{i:06d}"
        q, shorter = quality + effect(kind, rng), 3 if kind.startswith("shorter") else 0
        run, start = run_once(night, commit, "candidate", q), night["runs"]
        while True:
            d = rule.decide(history, run, incumbent, shorter)
            history.append(run)
            if d["decision"] != "run" or not room(night):
                break
            run = (run_once(night, commit, "candidate", q) if d["who"] == "candidate"
                   else run_once(night, incumbent, "incumbent", quality))
        if d["decision"] == "run":
            break  # the night ended before the verdict: not an experiment decided
        if d["decision"] == "keep":
            incumbent, quality = commit, q
        done.append((kind, d["decision"] == "keep", night["runs"] - start + 1))
    return done


# ---------------------------------------------------------------------------------------------
# Many nights

def simulate(scenario, rule, nights, seed, mix=MIX):
    """Over `nights` nights: kept (share of each kind kept), n (experiments of each kind),
    runs_per_experiment, experiments (per night), aa_clean (share of nights whose first 8
    experiments kept nothing), keeps (per night) and keep_rate. `rule`: "today" (program.md's
    old rule), "new" (harness/keep_rule.py) or a module with keep_rule's decide()."""
    rng = random.Random(f"{seed}/{scenario}/{rule if isinstance(rule, str) else 'before'}")
    play = (night_today if rule == "today" else night_new if rule == "new"
            else lambda scenario, mix, rng: night_new(scenario, mix, rng, rule=rule))
    outcomes, per_night, clean, keeps = [], [], 0, []
    for _ in range(nights):
        done = play(scenario, mix, rng)
        outcomes += done
        per_night.append(len(done))
        clean += not any(kept for _, kept, _ in done[:8])
        keeps.append(sum(kept for _, kept, _ in done))
    by_kind = {kind: [kept for k, kept, _ in outcomes if k == kind] for kind, _ in mix}
    return {"kept": {kind: sum(v) / len(v) if v else float("nan") for kind, v in by_kind.items()},
            "n": {kind: len(v) for kind, v in by_kind.items()},
            "runs_per_experiment": sum(r for _, _, r in outcomes) / len(outcomes),
            "experiments": statistics.mean(per_night), "aa_clean": clean / nights,
            "keeps": statistics.mean(keeps), "keep_rate": sum(kept for _, kept, _ in outcomes) / len(outcomes)}


def table(nights, seed, out=print):
    out(f"{'scenario':<14} {'rule':<6} {'no-op kept':>10} {'2x kept':>8} {'4x kept':>8} {'worse kept':>10} "
        f"{'runs/exp':>8} {'exp/night':>9}")
    for scenario in SCENARIOS:
        for rule in ("today", "new"):
            r = simulate(scenario, rule, nights, seed)
            k = r["kept"]
            out(f"{scenario:<14} {rule:<6} {k['no-op']:>10.1%} {k['2x']:>8.1%} {k['4x']:>8.1%} {k['worse']:>10.1%} "
                f"{r['runs_per_experiment']:>8.2f} {r['experiments']:>9.1f}")


def load_rule(rev):
    """harness/keep_rule.py as it was at git revision `rev`, as a module."""
    import subprocess
    import types
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    source = subprocess.run(["git", "show", f"{rev}:harness/keep_rule.py"], cwd=root, check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType(f"keep_rule_{rev}")
    exec(compile(source, f"keep_rule@{rev}", "exec"), module.__dict__)
    return module


def rates_table(nights, seed, before, out=print):
    """The rule at git revision `before` beside today's, per keep rate and machine."""
    rules = (("before", load_rule(before)), ("new", "new"))
    out(f"\nKeep rates (the mix's share of real gains sets them); before = harness/keep_rule.py at {before}\n"
        f"{'mix':<5} {'scenario':<14} {'rule':<6} {'kept':>6} {'no-op kept':>10} {'2x kept':>8} {'4x kept':>8} "
        f"{'runs/exp':>8} {'exp/night':>9}")
    for label, mix in MIXES.items():
        for scenario in SCENARIOS:
            for name, rule in rules:
                r = simulate(scenario, rule, nights, seed, mix)
                k = r["kept"]
                out(f"{label:<5} {scenario:<14} {name:<6} {r['keep_rate']:>6.1%} {k['no-op']:>10.1%} {k['2x']:>8.1%} "
                    f"{k['4x']:>8.1%} {r['runs_per_experiment']:>8.2f} {r['experiments']:>9.1f}")


def aa_table(nights, seed, out=print):
    out(f"\nA/A nights (every candidate a no-op)\n{'scenario':<14} {'rule':<6} {'no-op kept':>10} "
        f"{'no keep in 8':>12} {'keeps/night':>11} {'runs/exp':>8} {'exp/night':>9}")
    for scenario in SCENARIOS:
        for rule in ("today", "new"):
            r = simulate(scenario, rule, nights, seed, AA_MIX)
            out(f"{scenario:<14} {rule:<6} {r['kept']['no-op']:>10.1%} {r['aa_clean']:>12.0%} {r['keeps']:>11.1f} "
                f"{r['runs_per_experiment']:>8.2f} {r['experiments']:>9.1f}")


def simpler_table(nights, seed, out=print):
    out(f"\nSimplifications, quiet machine\n{'':<14} {'rule':<6} {'shorter, same':>13} {'shorter, 2x worse':>17} "
        f"{'comment deleted':>15}")
    for rule in ("today", "new"):
        k = simulate("quiet", rule, nights, seed, SIMPLER_MIX)["kept"]
        out(f"{'':<14} {rule:<6} {k['shorter, same']:>13.1%} {k['shorter, 2x worse']:>17.1%} "
            f"{k['comment deleted']:>15.1%}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nights", type=int, default=200, help="nights per scenario and rule (default 200)")
    ap.add_argument("--seed", default="0")
    ap.add_argument("--before", metavar="REV", help="also play harness/keep_rule.py as it was at this git revision")
    args = ap.parse_args(argv)
    t0 = time.time()
    print(f"{args.nights} nights of 8 h per scenario and rule. Kept: the share of experiments of each kind "
          f"kept (gains of 2 and 4 times SIGMA, one run's spread); worse: by 1 to 8 SIGMA. "
          f"Stress scenarios: {', '.join(STRESS)}.\n")
    table(args.nights, args.seed)
    aa_table(args.nights // 2, args.seed)
    simpler_table(args.nights // 2, args.seed)
    if args.before:
        rates_table(args.nights, args.seed, args.before)
    print(f"\n{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
