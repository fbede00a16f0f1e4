"""Board and the fleet: every agent's entries in the git record (harness/record.py, the hub fetched
first), the best per setup and device by Decide's own definition (harness/results.py), each
agent's progress and the ideas tried lately. Reporting only: nothing here decides a result, and
everything read is untrusted (harness/record.py validated it)."""

import json
import os
import sys

from harness import record
from harness.keep_rule import plural
from harness.results import bar_lowerings, baseline_of, best_of
from harness.run import git_out, read_run, recorded_setup

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
    setup = (own[-1]["setup"] if own else "") or run.get("setup") or recorded_setup()
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


def show_board(as_json, diff):
    """The Board command: the board as text (with the best's diff) or JSON."""
    entries = fleet_record()
    b = board(entries, *reader(entries))
    if as_json:
        return print(json.dumps(b, indent=1))
    print(format_board(b))
    if diff:
        print("\n" + best_diff(b, entries))


def with_fleet(logs):
    """The local logs plus a series for every agent of the git record that no local log is (other
    clones through the hub, other worktrees), and the record's entries."""
    entries = fleet_record()
    local = {record.agent_tag(os.path.dirname(os.path.abspath(path))) for path, _, _ in logs}
    others = sorted((tag, rows) for tag, rows in fleet_logs(entries).items() if tag not in local)
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
    b = board(entries, *reader(entries))
    lines = ["fleet: best per setup and device, judged by this checkout's judge:"]
    lines += [f"  {x['setup']} on {x['device']}: {x['val_bpb']:.6f} by {x['agent']} ({x['commit'][:7]}, "
              f"{x['description'][:60]})" for x in b["best"]] or ["  none yet"]
    ideas = shared_ideas(entries)
    return lines + (["tried by several agents:"] + [f"  {line}" for line in ideas] if ideas else [])


def board(entries, judge, setup, device, recent=10):
    """The board as a dict (what `--board --json` prints). Only results of the same judge compete:
    `best` has one entry per setup and device among them, each agent's best by Decide's own
    definition (harness/results.py: the baseline's mean, then the kept runs that lowered it);
    `comparable` also needs your setup and device. Others are listed with comparable false and
    never ranked. An agent's baseline runs are not experiments."""
    keys = ("commit", "val_bpb", "status", "description", "agent", "setup", "device", "judge", "time")
    experiments = [dict({k: e[k] for k in keys}, comparable=(e["judge"], e["setup"], e["device"]) ==
                        (judge, setup, device)) for e in sorted(entries, key=lambda e: (e["time"], e["agent"]))]
    best, agents = {}, {}
    for (agent, where), rows in series(experiments, judge).items():
        top = best_of(rows)
        if top and (where not in best or top["val_bpb"] < best[where]["val_bpb"]):
            first = rows[baseline_of(rows)["indices"][0] - 1]
            best[where] = {"commit": top.get("full_commit") or first["full_commit"], "val_bpb": top["val_bpb"],
                           "agent": agent, "description": top["description"], "setup": where[0], "device": where[1]}
    for agent in sorted({e["agent"] for e in experiments}):
        own = [e for e in experiments if e["agent"] == agent]
        rows = [row(e, i) for i, e in enumerate(own, 1)]
        agents[agent] = progress(rows)
        base = baseline_of(rows)
        for e in own[:base["indices"][-1] if base else 0]:  # the baseline's runs and attempts: no ideas
            e["baseline"] = True
    ideas = [e for e in experiments if not e.get("baseline")]
    return {"judge": judge, "setup": setup, "device": device, "experiments": experiments,
            "best": sorted(best.values(), key=lambda e: e["val_bpb"]), "agents": agents,
            "recent": ideas[-recent:], "comparable": sum(e["comparable"] for e in experiments),
            "other_judge": sum(e["judge"] != judge for e in experiments)}


def row(entry, index):
    """An entry in the shape of results.tsv's rows (harness/results.py)."""
    return {**entry, "full_commit": entry["commit"], "commit": entry["commit"][:7], "index": index}


def series(experiments, judge):
    """{(agent, (setup, device)): rows} of the results judged by `judge`, crashes included (they
    may carry no setup or device: each joins its agent's series before it)."""
    out, last = {}, {}
    for e in experiments:
        if e["judge"] != judge:
            continue
        own = (e["setup"], e["device"])
        where = last.setdefault(e["agent"], own) if e["status"] == "crash" else own
        last[e["agent"]] = where
        rows = out.setdefault((e["agent"], where), [])
        rows.append(row(e, len(rows) + 1))
    return out


def progress(rows):
    """One agent's line of the board: its baseline, its best, and its experiments (the rows after
    the baseline's runs) kept, crashed and tried."""
    base = baseline_of(rows)
    done = [r for r in rows if not base or r["index"] > base["indices"][-1]]
    top = best_of(rows)
    return {"experiments": len(done), "keeps": sum(r["status"] == "keep" for r in done),
            "crashes": sum(r["status"] == "crash" for r in done), "first": base and base["val_bpb"],
            "best": top and top["val_bpb"], "best_commit": top and (top.get("full_commit") or top["commit"]),
            "improvements": len(bar_lowerings(rows, base["val_bpb"])) if base else 0}


AGENT_LINES = 6
OUTCOME = {"keep": "kept", "discard": "discarded", "crash": "crashed"}


def format_board(b, limit=10):
    """The compact text an agent reads every loop: best per setup+device, each agent's progress
    (the best few agents), the last `limit` ideas tried by everyone, what is comparable."""
    tried = sum(a["experiments"] for a in b["agents"].values())
    lines = [f"board: {plural(tried, 'experiment')} by {plural(len(b['agents']), 'agent')}"]
    for e in b["best"]:
        lines.append(f"  best {e['setup'] or '-'} on {e['device'] or '-'}: {e['val_bpb']:.6f} by {e['agent']} "
                     f"{e['commit'][:7]} {e['description'][:60]}")
    ranked = sorted(b["agents"].items(), key=lambda kv: (kv[1]["best"] is None, kv[1]["best"] or 0, kv[0]))
    lines.append("agents (baseline -> best, experiments kept/tried):")
    for tag, a in ranked[:AGENT_LINES]:
        moved = f"{a['first']:.4f} -> {a['best']:.4f}" if a["best"] is not None else "no completed run"
        lines.append(f"  {tag}: {moved}, {a['keeps']}/{a['experiments']} kept, {a['crashes']} crashed")
    if len(ranked) > AGENT_LINES:
        lines.append(f"  ... and {len(ranked) - AGENT_LINES} more agents (--json lists them all)")
    lines.append(f"last {len(b['recent'])} ideas tried (don't repeat them):")
    for e in reversed(b["recent"]):
        lines.append(f"  {e['agent']} {e['commit'][:7]} {OUTCOME[e['status']]} {e['val_bpb']:.4f} "
                     f"{e['description'][:60]}" + ("" if e["comparable"] else " [not comparable]"))
    lines.append(f"comparable with yours (same judge, setup {b['setup'] or '-'}, device {b['device'] or '-'}): "
                 f"{b['comparable']}; {b['other_judge']} judged by another judge, listed apart, never best; "
                 "to try a kept one yourself: Adopt (program.md)")
    return "\n".join(lines)


def fleet_logs(entries):
    """{agent: rows} in the shape of analysis.py's read_log, for a chart with a series per agent."""
    logs = {}
    for e in sorted(entries, key=lambda e: (e["agent"], e["time"])):
        rows = logs.setdefault(e["agent"], [])
        rows.append({"commit": e["commit"][:7], "val_bpb": e["val_bpb"], "memory_gb": e["memory_gb"],
                     "status": e["status"], "description": e["description"], "index": len(rows) + 1})
    return logs
