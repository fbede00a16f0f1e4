"""The run record: what the harness, not train.py, says about one run (part of the judge).

`uv run analysis.py --run` gives every run a folder in the git directory and names it to train.py's
process in AUTORESEARCH_RUN_DIR. Three writers fill it, each its own file, each written whole or
not at all: the runner (`run.json`: the commit, the setup, the judge's identity, how the process
ended, its wall time), the budget clock (`clock.json`: budget and wall seconds of training so far,
rewritten every few seconds so that a killed run still says how far it got) and the judge
(`judge.json`: val_bpb and the tokens and bytes it scored, the device, peak memory). Decide and Log
read these, never train.py's wording. Run by hand (no such variable), nothing is recorded.
"""

import json
import os

RUN_DIR_ENV = "AUTORESEARCH_RUN_DIR"
PARTS = ("run", "clock", "judge")


def note(part, values, run_dir=None):
    """Write one part of this run's record (replacing the last); a no-op outside a Run."""
    run_dir = run_dir or os.environ.get(RUN_DIR_ENV)
    if not run_dir or not os.path.isdir(run_dir):
        return
    path = os.path.join(run_dir, f"{part}.json")
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(values, f)
        os.replace(tmp, path)
    except OSError:  # a full disk costs the record, never the run: Decide then asks for a rerun
        if os.path.exists(tmp):
            os.remove(tmp)


def read_parts(run_dir):
    """{part: dict} for the parts present in a run's folder (unreadable ones are absent)."""
    parts = {}
    for part in PARTS:
        try:
            with open(os.path.join(run_dir, f"{part}.json")) as f:
                value = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(value, dict):
            parts[part] = value
    return parts
