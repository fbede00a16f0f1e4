"""results.tsv, the night's log: its format, its reader and Log's writer (part of the judge: the
rule reads its numbers from here).

Tab-separated, `commit val_bpb memory_gb status description` under a header of those names,
status keep, discard or crash (crashes carry 0.000000 and 0.0). Agents and editors write it by
hand too, so the reader says exactly which line is wrong and why, and the writer never appends to
a file it cannot read back unambiguously: a row glued onto the last one, or a row under a header
of other columns, would lose or re-attribute what is already logged.
"""

import math
import os
import re

HEADER = ("commit", "val_bpb", "memory_gb", "status", "description")
STATUSES = ("keep", "discard", "crash")
HEADER_LINE = "\t".join(HEADER)
NOISE_FLOOR = 0.0005  # the noise is never taken below this
FORMAT = "commit, val_bpb, memory_gb, status (keep, discard or crash), description, separated by tabs"


def parse_row(fields):
    """One row of the log as a dict, or raise ValueError saying what is wrong with it."""
    if len(fields) < 5:
        raise ValueError(f"{len(fields)} tab-separated field{'s' * (len(fields) != 1)} where a row has 5")
    commit, val, mem, status = (f.strip() for f in fields[:4])
    description = " ".join(f.strip() for f in fields[4:])  # a stray tab in the description
    if status.lower() not in STATUSES:
        raise ValueError(f"status {status!r} is not keep, discard or crash")
    try:
        val_bpb, memory_gb = float(val), float(mem)
    except ValueError:
        raise ValueError(f"val_bpb {val!r} or memory_gb {mem!r} is not a number") from None
    if not (math.isfinite(val_bpb) and math.isfinite(memory_gb)):
        raise ValueError("val_bpb or memory_gb is not finite")
    if status.lower() != "crash" and val_bpb <= 0:
        raise ValueError(f"a {status} row needs a positive val_bpb, got {val!r}")
    if not commit:
        raise ValueError("the commit is empty")
    return {"commit": commit, "val_bpb": val_bpb, "memory_gb": memory_gb,
            "status": status.lower(), "description": description}


def read_log(path):
    """(rows, problems): the parsed rows in order, each with its 1-based `index` among the rows
    and its file `line`; and [(line, why)] for every line that is not a row. Blank lines are
    ignored; a first line that starts with `commit` must be the header exactly."""
    with open(path, "rb") as f:
        data = f.read()
    if b"\0" in data:
        return [], [(1, "it holds binary data, not tab-separated text")]
    rows, problems = [], []
    for lineno, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        fields = line.split("\t")
        if not line.strip():
            continue
        if lineno == 1 and fields[0].strip().lower() == "commit":
            if [x.strip().lower() for x in fields] != list(HEADER):
                problems.append((1, f"the header should be the 5 columns {' '.join(HEADER)} separated by tabs"))
            continue
        try:
            row = parse_row(fields)
        except ValueError as e:
            problems.append((lineno, str(e)))
            continue
        rows.append({**row, "index": len(rows) + 1, "line": lineno})
    return rows, problems


def problem_line(path, problems):
    """One line for a log with problems: the first, how many more, and what to do."""
    lineno, why = problems[0]
    more = f" (and {len(problems) - 1} more line{'s' * (len(problems) > 2)} like it)" if len(problems) > 1 else ""
    if lineno == 1 and "binary" in why:
        return f"{path} is not a log: {why}; move it away (mv {path} {path}.bad), then Start the log"
    return f"{path}:{lineno}: {why}{more}; fix that line (a row is {FORMAT}), then run the command again"


def append_row(path, row):
    """Add one row (a dict with HEADER's keys) at the end of the log: the header first if the file
    is new or empty, and a newline first if the last line lacks one, so the row never joins it."""
    line = (f"{row['commit']}\t{row['val_bpb']:.6f}\t{row['memory_gb']:.1f}\t{row['status']}\t"
            f"{' '.join(row['description'].split())}\n")
    with open(path, "ab+") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            f.write((HEADER_LINE + "\n").encode())
        else:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write(line.encode())
    return line.rstrip("\n")


# ---------------------------------------------------------------------------
# What the rows mean: the baseline, the bar and the best. One definition, for Decide, the summary,
# the chart, Confirm and the Board

BASELINE_AGREE = 0.10  # two baseline runs whose steps differ by more than this fraction disagree


def same_commit(a, b):
    """Whether two abbreviations name the same commit (results.tsv keeps 7 characters)."""
    return bool(a and b) and (a.startswith(b) or b.startswith(a))


def baseline_rows(rows):
    """The baseline's runs, identified by what they are: the completed runs of the first commit that
    completed, up to the first row of another commit (at most three: Decide asks for a third when
    the first two disagreed in steps). A row of another commit never joins them, nor does a later
    run of the same commit once experiments have begun."""
    done = [r for r in rows if r["status"] != "crash"]
    if not done:
        return []
    runs = []
    for r in rows[rows.index(done[0]):]:
        if not same_commit(r["commit"], done[0]["commit"]):
            break
        if r["status"] != "crash":
            runs.append(r)
    return runs[:3]


def position(rows, row):
    return next(i for i, r in enumerate(rows) if r is row)


def experiments_begun(rows, runs):
    """Whether a row of another commit follows the baseline's first run."""
    return bool(runs) and any(not same_commit(r["commit"], runs[0]["commit"])
                              for r in rows[position(rows, runs[0]) + 1:])


def baseline_of(rows):
    """The bar every measure starts from, or None before a run completed: the mean of the baseline's
    two runs (with only one, that run); the commits and row indices of all its runs; and the noise,
    the pair's difference but at least NOISE_FLOOR (None with one run). After a third run the pair is
    the two whose steps agreed, as Log wrote in its description (`the bar: runs 1 and 3`).
    `commit` and `index` are the last baseline run's: the commit the loop built on."""
    runs = baseline_rows(rows)
    if not runs:
        return None
    pair = runs[:2]
    named = len(runs) == 3 and re.search(r"the bar: runs ([123]) and ([123])", runs[2]["description"])
    if named and named.group(1) != named.group(2):
        pair = [runs[int(named.group(1)) - 1], runs[int(named.group(2)) - 1]]
    vals = [r["val_bpb"] for r in pair]
    which = "" if len(runs) < 3 else f" of runs {runs.index(pair[0]) + 1} and {runs.index(pair[1]) + 1} of 3"
    return {"val_bpb": sum(vals) / len(vals),
            "noise": max(abs(vals[0] - vals[1]), NOISE_FLOOR) if len(vals) == 2 else None,
            "runs": len(runs),
            "commits": [r["commit"] for r in runs], "indices": [r.get("index") for r in runs],
            "commit": runs[-1]["commit"], "index": runs[-1].get("index"),
            "description": f"the baseline (mean{which or ' of 2 runs'})" if len(vals) == 2 else "the baseline (1 run)"}


def bar_lowerings(rows, bar):
    """The kept runs after the baseline's that lowered the bar, in order: the running best's
    staircase. A keep that did not beat the best (a simpler train.py) leaves the bar where it was."""
    runs = baseline_rows(rows)
    steps = []
    for r in rows[position(rows, runs[-1]) + 1 if runs else len(rows):]:
        if r["status"] == "keep" and r["val_bpb"] < (steps[-1]["val_bpb"] if steps else bar):
            steps.append(r)
    return steps


def best_of(rows):
    """The best so far: the last kept run that lowered the bar, else the baseline (None before a
    run completed). The summary reports it, the Board ranks it; Decide never judges against it
    (harness/keep_rule.py compares with the incumbent's runs beside the candidate)."""
    base = baseline_of(rows)
    steps = bar_lowerings(rows, base["val_bpb"]) if base else []
    return steps[-1] if steps else base
