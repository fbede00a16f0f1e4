"""The keep rule: whether a finished experiment is kept, discarded, or needs another run (and whose).

Pure: runs in, one decision out (no I/O, no git, no printing). analysis.py's Decide calls
`decide()` once per finished, valid run of an experiment; crashes, spoiled or stretched runs and
the baseline's own runs are settled there before this module is asked anything.

Why this rule. The rule it replaces measured the noise once, from the baseline's two adjacent
runs, kept any run that beat the best logged value by more than that, and re-ran smaller gains,
keeping the pair when its mean beat the best. Three things made it keep luck. One pair of runs
says little about the noise (one agreed to 0.0013 on a night whose unchanged baseline later moved
by 0.069). The bar was a number from earlier in the night, so a machine that got faster since
made any change look like a gain. And the run that triggered the re-run counted in the mean that
passed it, while every kept value became a lucky bar for the next (the winner's curse).
Simulated (tests/simulate_rule.py), it keeps about a quarter of a night's no-op changes on a
perfectly steady machine, and half of them on one that gets faster as the measured one did.

This rule compares the candidate with the incumbent (the last kept commit, the one Discard
returns to) *measured beside it*, and lets no run be both the reason to look closer and the
evidence that passes:

- Screen. The candidate's first run is compared with the incumbent's latest runs (those within
  RECENT_S of its latest). Unpromising (gain at most SCREEN standard errors): discarded, at the
  cost of one run, as before; most ideas end here. A gain past Student's t at ALPHA_SURE (about
  3 SEs once the noise rests on a dozen repeats, 10 on the baseline's and the incumbent's first
  few) is one no machine could explain: kept at once, when the incumbent ran within RECENT_S and
  the first run's pace is not faster than its own. This is the one exception to the rule below
  (no run both selects and passes), priced by the simulation: it costs 0.3-0.5 points of no-ops
  kept and saves two runs on most strong keeps. The incumbent first runs again when its latest
  run is older than STALE_S (unless the first run is worse by STALE_MARGIN SEs: no drift turns
  that into a gain), or when the first run's pace differs from the incumbent's by more than the
  night's jitter allows (see Pace) in the direction that could have made the verdict:
  more steps and promising, or fewer and not (the steps cannot tell a faster model, e.g. a smaller
  DEPTH, from a faster machine; a smaller model that still loses needs no incumbent run to say so).
- Confirm. A promising candidate runs again, and so does the incumbent, alternately (ABBA: the
  side with fewer runs goes next, on a tie the side that ran last), so a slow or fast spell of
  the machine hits both. Only runs from the candidate's second on count, on both sides: the
  screen never saw them, so its selection cannot flatter them. After each run the gain (the
  incumbent's mean minus the candidate's) is tested: keep above t * SE (Student's t at ALPHA,
  one-sided), only when both sides have as many runs (1 and 1, then 2 and 2); discard at or
  below FUTILITY standard errors, or when the candidate has run MAX_CANDIDATE_RUNS times (unless
  its gain is past the bar with the incumbent a run behind: that run comes first);
  otherwise one more run. The screen and the confirmation judge disjoint runs, so a no-op is
  kept with the product of their chances (about 1 in 6 passes the screen, under 1 in 5 of those
  the confirmation's two looks): ALPHA can be loose where a single test would need to be tight.
  A strong gain costs two runs more than today's rule; a borderline one up to four.
- Noise. One run's standard deviation, pooled from every repeated run of the same code during
  the night (baseline runs, candidate re-runs, incumbent re-runs): half the mean squared
  difference of successive runs of one commit at most PAIR_GAP_S apart whose paces agree. A pair
  whose paces disagree measured two machines, not the noise; runs before the last such change
  are evidence for nothing. With no repeat at all, the noise is the floor at one degree of
  freedom: only a gain of hundreds of floors passes, nothing is discarded for want of a repeat. A confirmation uses the noise as the screen saw it, so the runs being
  judged never also set the bar they are judged by (as in a t-test, the spread is independent
  of the difference). The prior assumes nothing about the machine: until MIN_REPEATS pairs exist
  (the baseline gives one) the incumbent runs again, and Student's t with the pairs' degrees of
  freedom prices what is left of the doubt: with few repeats the bar is high, each repeat lowers
  it. The noise never goes below NOISE_FLOOR.
- Pace. On a CPU the machine's speed shows in the pace (the tokens trained in the budget: the
  unchanged baseline fitted 205 steps at night and 240 in the morning), but so does a short
  budget's own jitter (one commit's 5 s smoke runs wander by ~5-10%). Two runs of one commit
  measured different machines when their paces differ by more than PACE_K standard deviations
  of the night's jitter (estimated from all repeats by their median, which a few real changes do
  not move) and by more than STEPS_AGREE. A fixed 10% called every other smoke repeat a new
  machine, left no repeat to judge by, and discarded a gain of 0.476 (issue 35).
- Simpler code. A candidate whose train.py has fewer lines of code than the incumbent's
  (comments and blank lines do not count: `code_lines_changed`) is credited SIMPLER_CREDIT
  noises of gain, at the screen and in the test. A shorter train.py that is no worse is then kept
  about half the time, one worse by two noises about 1 time in 25, and deleting a comment earns
  nothing: it is judged as the no-op it is (today's rule keeps such a deletion whenever it is
  within the noise of its bar). A simpler keep becomes the incumbent: the next candidates must
  beat it, slightly worse as it may be.

The constants were chosen with tests/simulate_rule.py (a quiet machine, drift, a trend either
way, a step change in speed, a slow hour, a short budget's jittery pace; keep rates of 10%, 18%
and 35%): docs/design.md has the table. tests/test_keep_rule.py holds the targets.
"""

import math
import statistics

from harness.results import same_commit

NOISE_FLOOR = 0.0005      # bpb: one run's noise is never taken below this (analysis.py's floor)
RECENT_S = 20 * 60        # the screen compares with the incumbent's runs this close to its latest
STALE_S = 55 * 60         # the incumbent's latest run older than this: it runs again before the screen
MIN_REPEATS = 3           # noise pairs needed before a screen: the incumbent runs until there are
MAX_REFRESH = 2           # incumbent runs the screen may ask for, per candidate
PAIR_GAP_S = 75 * 60      # two runs of one commit further apart are no noise pair (> STALE_S + a run)
STEPS_AGREE = 0.10        # same code, paces differing by less than this: the same machine, always
PACE_K = 4.0              # ... or by less than this many standard deviations of the night's pace jitter
SCREEN = 1.0              # a first run goes on to the confirmation if its gain exceeds this many SEs
SCREEN_P = statistics.NormalDist().cdf(SCREEN)  # ... as a quantile of t, which the few repeats raise
ALPHA_SURE = 0.005        # a first run whose gain passes t at this one-sided level is kept at once
STALE_MARGIN = 2.0        # a stale incumbent runs again unless the first run is worse by this many SEs
ALPHA = 0.15              # one-sided level of each look of the confirmation's test
FUTILITY = 0.5            # a confirmation ends, discarded, once its gain is at most this many SEs
MAX_CANDIDATE_RUNS = 3    # the candidate's runs, its first included: no verdict by then, discarded
SIMPLER_CREDIT = 2.5      # a train.py with fewer lines of code is credited this many noises of gain
MAX_RUNS = 8              # an experiment's runs, the incumbent's beside it included: no verdict by then, discarded


def decide(runs, run, incumbent, shorter_by=0):
    """The decision for `run`, the run just finished, given `runs`, the night's earlier finished,
    valid runs in order. Each run is a dict: commit, role ("baseline", "candidate" or
    "incumbent": a re-run of the last kept commit), val_bpb, steps (None if unknown) and time
    (when it finished, in seconds on any one clock). `incumbent`: the last kept commit (the
    baseline's before any keep). `shorter_by`: lines of code train.py lost against the incumbent
    (deleted minus added, comments and blank lines not counted; 0 or less when not shorter).

    Returns a dict: decision ("keep", "discard" or "run"); who ("candidate" or "incumbent" when
    the decision is "run", else None); reason (one line); stage ("screen" or "confirm"); kind
    ("gain" or "simpler" for a keep, else None); and the evidence: gain (the incumbent's mean
    minus the candidate's, plus any credit), needed (the gain a keep needs; at the screen, its
    bar), noise (one run's) and repeats (the pairs it rests on), credit (for a shorter
    train.py), candidate_runs and incumbent_runs (how many runs each mean rests on),
    candidate_mean, incumbent_mean, incumbent_age_s (seconds since the incumbent's latest run)."""
    night = list(runs) + [run]
    tolerance = pace_tolerance(night)
    candidate = pending_candidate(night)
    mine = [r for r in night if r["role"] == "candidate" and same_commit(r["commit"], candidate)]
    seen = [r for r in night if len(mine) == 1 or r["time"] < mine[1]["time"]]  # what the screen saw
    noise, repeats, df = pooled_noise(seen, tolerance)
    change = speed_change(night, (incumbent, candidate), tolerance)
    theirs = [r for r in night if same_commit(r["commit"], incumbent) and r["time"] >= change]
    d = {"decision": None, "who": None, "reason": "", "stage": "screen" if len(mine) == 1 else "confirm",
         "kind": None, "gain": None, "needed": None, "noise": noise, "repeats": repeats,
         "credit": SIMPLER_CREDIT * noise if shorter_by > 0 else 0.0, "candidate_runs": 0,
         "incumbent_runs": 0, "candidate_mean": None, "incumbent_mean": None,
         "incumbent_age_s": run["time"] - theirs[-1]["time"] if theirs else None}
    since = [r for r in night if same_commit(r["commit"], incumbent) and r["time"] > mine[0]["time"]]
    if len(mine) + len(since) >= MAX_RUNS:  # a machine whose speed keeps changing: judge no longer
        return {**d, "decision": "discard", "stage": "confirm",
                "reason": f"{len(mine) + len(since)} runs and the machine's speed kept changing: no verdict, discard"}
    if len(mine) == 1:
        return screen(d, mine[0], theirs, df, len(since), tolerance)
    return confirm(d, mine, [r for r in theirs if r["time"] > mine[1]["time"]], change, df)


def screen(d, first, theirs, df, refreshed, tolerance):
    """The candidate's first run against the incumbent's latest runs: discard, keep at once (a
    gain no machine could explain), or go on to the confirmation; or first one more run of the
    incumbent, when there is nothing fit to compare (at most MAX_REFRESH times, counted whatever
    the machine did since, so an erratic machine cannot loop: then it judges as it can)."""
    refreshing = refreshed < MAX_REFRESH
    if d["repeats"] < MIN_REPEATS and refreshing:
        return run_next(d, "incumbent", f"the noise rests on {plural(d['repeats'], 'repeat')}, too few to judge by "
                                        f"(at least {MIN_REPEATS})")
    if not theirs:
        return run_next(d, "incumbent", "the incumbent has not run since the machine changed speed")
    ref = [r for r in theirs if r["time"] >= theirs[-1]["time"] - RECENT_S]
    gain = mean_of(ref, "val_bpb") - first["val_bpb"] + d["credit"]
    se = d["noise"] * math.sqrt(1 + 1 / len(ref))
    bar, sure = t_quantile(SCREEN_P, df) * se, t_quantile(1 - ALPHA_SURE, df) * se
    # An incumbent older than STALE_S may have drifted: it runs again, unless the first run is so
    # much worse that no drift of the machine could turn it into a gain.
    if first["time"] - theirs[-1]["time"] > STALE_S and refreshing and gain > -STALE_MARGIN * se:
        return run_next(d, "incumbent", f"the incumbent's latest run is {d['incumbent_age_s'] / 60:.0f} min old")
    steps = mean_steps(ref)
    paced = theirs[-1]["time"] < first["time"] and steps and speed_differs(first, {"steps": steps}, tolerance)
    # A pace that differs is the candidate's code or the machine, and the steps cannot tell which.
    # Only a verdict the machine could have flattered is worth an incumbent run to rule it out: a
    # faster pace that looks promising, or a slower one that does not.
    if paced and refreshing and (first["steps"] > steps) == (gain > bar):
        return run_next(d, "incumbent", f"the first run's pace was {first['steps']:,.0f}, the incumbent's "
                                        f"{steps:,.0f}: the machine may have changed speed")
    d.update(gain=gain, needed=bar, candidate_runs=1, incumbent_runs=len(ref),
             candidate_mean=first["val_bpb"], incumbent_mean=mean_of(ref, "val_bpb"))
    said = (f"first run: gain {gain:.4f}{credited(d)} over the incumbent's {plural(len(ref), 'run')} "
            f"{lately(first, ref)}, {noise_words(d)}; the screen's bar {bar:.4f}, a keep at once {sure:.4f}")
    if paced:
        said += f"; its pace {first['steps']:,.0f} against the incumbent's {steps:,.0f} could only work against this verdict"
    if gain <= bar or not d["repeats"] and gain <= sure:
        why = "" if gain <= bar else "; with no repeat to measure the noise, only a keep at once can pass"
        return {**d, "decision": "discard", "reason": f"{said}{why}: discard"}
    fresh = first["time"] - theirs[-1]["time"] <= RECENT_S
    if gain > sure and fresh and not (paced and first["steps"] > steps):
        kind = "simpler" if gain - d["credit"] <= sure else "gain"
        return {**d, "decision": "keep", "kind": kind, "needed": sure,
                "reason": f"{said}: a gain the machine cannot explain: keep"}
    return run_next(d, "candidate", f"{said}: promising; from now on the candidate and the incumbent run "
                                    f"in turn and only those runs decide")


def confirm(d, mine, beside, change, df):
    """The sequential test on the runs since the candidate's second (`beside`: the incumbent's),
    none from before the machine last changed speed: keep, discard, or one more run (whose)."""
    ours = [r for r in mine[1:] if r["time"] >= change]
    changed = "the machine changed speed (steps), so only runs since count: " if change > mine[1]["time"] else ""
    if not ours or not beside:
        if not ours and len(mine) >= MAX_CANDIDATE_RUNS:
            return {**d, "decision": "discard", "reason": f"{changed}no verdict after {len(mine)} runs: discard"}
        who = "candidate" if not ours else "incumbent"
        return run_next(d, who, f"{changed}the test needs a run of each, side by side")
    c_mean, i_mean = mean_of(ours, "val_bpb"), mean_of(beside, "val_bpb")
    gain = i_mean - c_mean + d["credit"]
    se = d["noise"] * math.sqrt(1 / len(ours) + 1 / len(beside))
    needed = t_quantile(1 - ALPHA, df) * se
    d.update(gain=gain, needed=needed, candidate_runs=len(ours), incumbent_runs=len(beside),
             candidate_mean=c_mean, incumbent_mean=i_mean)
    said = (f"{changed}gain {gain:.4f}{credited(d)}: the candidate's {plural(len(ours), 'run')} since its "
            f"first against the incumbent's {plural(len(beside), 'run')} beside them, {noise_words(d)}; "
            f"a keep needs {needed:.4f}")
    if gain > needed and len(ours) == len(beside):
        kind = "simpler" if gain - d["credit"] <= needed else "gain"
        return {**d, "decision": "keep", "kind": kind, "reason": f"{said}: keep"}
    last = max(ours + beside, key=lambda r: r["time"])["role"]
    who = ("candidate" if len(ours) < len(beside) else "incumbent" if len(beside) < len(ours)
           else "candidate" if last == "candidate" else "incumbent")
    # Out of candidate runs, a gain past the bar still gets the incumbent's run that balances the
    # look: running out of runs never discards a gain the runs so far make a keep
    if gain <= FUTILITY * se or len(mine) >= MAX_CANDIDATE_RUNS and (who == "candidate" or gain <= needed):
        why = "no gain worth another run" if gain <= FUTILITY * se else f"still within the noise after {len(mine)} runs"
        return {**d, "decision": "discard", "reason": f"{said}: {why}, discard"}
    if gain > needed:
        return run_next(d, who, f"{said}: past the bar, but the incumbent has fewer runs beside it")
    return run_next(d, who, f"{said}: within the noise")


def run_next(d, who, reason):
    again = " again" if who == "candidate" else ""
    return {**d, "decision": "run", "who": who, "reason": f"{reason}: run the {who}{again}"}


def pending_candidate(night):
    """The commit being judged: the last candidate run's (the run just finished, or the one
    before the incumbent runs that followed it)."""
    for r in reversed(night):
        if r["role"] == "candidate":
            return r["commit"]
    raise ValueError("no candidate run to judge")


def pooled_noise(night, tolerance=STEPS_AGREE):
    """(noise, repeats, df): one run's standard deviation from the successive runs of each commit
    (any role) at most PAIR_GAP_S apart whose steps agree, at least NOISE_FLOOR; the number of
    such pairs; and their degrees of freedom, a chain of n runs counting 2(n-1)^2/(3n-4)
    (successive differences share runs: a chain is worth a little less than n-1 pairs)."""
    chains = noise_chains(night, tolerance)
    squares = sum((b["val_bpb"] - a["val_bpb"]) ** 2 / 2 for c in chains for a, b in zip(c, c[1:]))
    repeats = sum(len(c) - 1 for c in chains)
    df = sum(2 * (len(c) - 1) ** 2 / (3 * len(c) - 4) for c in chains)
    return max(math.sqrt(squares / repeats) if repeats else NOISE_FLOOR, NOISE_FLOOR), repeats, df


def noise_chains(night, tolerance=STEPS_AGREE, split=True):
    """Each commit's runs, split into chains of successive runs at most PAIR_GAP_S apart that
    measured the same machine (with split=False, a change of pace does not split them)."""
    chains = {}
    for r in sorted(night, key=lambda r: r["time"]):
        groups = chains.setdefault(commit_key(r["commit"]), [[]])
        last = groups[-1][-1] if groups[-1] else None
        if last and (r["time"] - last["time"] > PAIR_GAP_S or split and speed_differs(last, r, tolerance)):
            groups.append([])
        groups[-1].append(r)
    return [c for groups in chains.values() for c in groups if len(c) >= 2]


def pace_tolerance(night):
    """How far apart two runs of the same code may pace on one machine: PACE_K standard deviations
    of two runs' difference in log pace, one run's estimated from every commit's repeats by their
    median absolute deviation from the commit's median (a starved run, or a few real changes of
    machine, do not move a median), and never less than STEPS_AGREE. A 5 s budget's pace wanders by ~10% a run, a 90 s one's by ~3%: a fixed
    10% would call every other smoke run a new machine and leave the rule no repeats to judge by."""
    paces = {}
    for r in night:
        if r.get("steps"):
            paces.setdefault(commit_key(r["commit"]), []).append(math.log(r["steps"]))
    deviations = [abs(x - statistics.median(xs)) for xs in paces.values() if len(xs) >= 2 for x in xs]
    if not deviations:
        return STEPS_AGREE
    sd = statistics.median(deviations) / statistics.NormalDist().inv_cdf(0.75)  # one run's, robustly
    return max(STEPS_AGREE, 1 - math.exp(-PACE_K * math.sqrt(2) * sd))


def speed_change(night, commits, tolerance=STEPS_AGREE):
    """When the machine last changed speed, as the commits' own successive runs saw it (their
    steps disagree): the finish of the later run, or 0 if never. Runs before it measured
    another machine."""
    latest = 0
    for key in {commit_key(c) for c in commits}:
        runs = [r for r in night if commit_key(r["commit"]) == key]
        for a, b in zip(runs, runs[1:]):
            if speed_differs(a, b, tolerance):
                latest = max(latest, b["time"])
    return latest


def speed_differs(a, b, tolerance=STEPS_AGREE):
    """Two runs of the same code whose paces differ by more than `tolerance`: not the same machine."""
    if not a.get("steps") or not b.get("steps"):
        return False
    return abs(a["steps"] - b["steps"]) / max(a["steps"], b["steps"]) > tolerance


def t_quantile(p, df):
    """Student's t quantile (no scipy): exact for 1 and 2 degrees of freedom, the Cornish-Fisher
    expansion from 3 (within 0.003 of the table); fractional df below 3 round down (a higher bar).
    Below 1 (not one repeat: every pair changed pace) it is 1's: with the floor for the noise only
    a gain of hundreds of floors passes, and nothing is discarded for want of a repeat alone."""
    if df < 2:
        return math.tan(math.pi * (p - 0.5))
    if df < 3:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    z = statistics.NormalDist().inv_cdf(p)
    terms = ((z ** 3 + z) / 4, (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96,
             (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384,
             (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160)
    return z + sum(g / df ** (k + 1) for k, g in enumerate(terms))


def code_lines_changed(diff_text):
    """(added, deleted) lines of code in a unified diff (`git diff <incumbent> HEAD -- train.py`):
    blank lines and lines holding only a comment (# first) do not count, so deleting a comment
    does not make train.py shorter. The caller's shorter_by is deleted - added."""
    added = deleted = 0
    in_hunk = False
    for line in diff_text.splitlines():
        if line.startswith("diff "):
            in_hunk = False  # a file's header follows: its ---/+++ lines are not code
        elif line.startswith("@@"):
            in_hunk = True
        elif in_hunk and line[:1] in ("+", "-"):
            body = line[1:].strip()
            if body and not body.startswith("#"):
                added += line[0] == "+"
                deleted += line[0] == "-"
    return added, deleted


def commit_key(commit):
    return (commit or "")[:7]


def mean_steps(runs):
    """The runs' mean steps, or None when a run did not say."""
    return mean_of(runs, "steps") if all(r.get("steps") for r in runs) else None


def mean_of(runs, key):
    return math.fsum(r[key] for r in runs) / len(runs)


def plural(n, word):
    return f"{n} {word}{'' if n == 1 else 's'}"


def lately(now, runs):
    """How close in time the runs are to `now`, in words (before or after it)."""
    return f"within {max(1, round(max(abs(now['time'] - r['time']) for r in runs) / 60))} min of it"


def credited(d):
    return f" ({d['credit']:.4f} of it credited to a shorter train.py)" if d["credit"] else ""


def noise_words(d):
    return f"noise {d['noise']:.4f} from {plural(d['repeats'], 'repeat')}"
