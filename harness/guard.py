"""The guard Run and Confirm start train.py under (part of the judge): the evaluation rows are the
judge's alone.

    python -m harness.guard train.py

It installs a Python audit hook before train.py's first line (a hook cannot be removed), then runs
train.py as __main__. Until evaluate_bpb begins scoring, opening the validation rows, the test
rows or the test shard is a crash naming the file; the confirm switch (AUTORESEARCH_CONFIRM) is
taken out of the environment before train.py starts, so only the judge knows whether the test rows
are scored. What it cannot see: files read by native code without Python's `open` (pyarrow's
parquet reader); prepare.make_dataloader refuses the validation split itself for that reason.
"""

import os
import runpy
import sys

from harness.cache import TEST_ROWS_FILE, TEST_SHARD, VAL_ROWS_FILE

CONFIRM = None  # the judge's switch (main() takes it out of the environment, out of train.py's reach)
SCORING = []  # evaluate_bpb appends to it as it starts: from then on the judge reads its rows
ACTIVE = []  # main() appends to it: this process is a guarded train.py
GUARDED = {os.path.realpath(p): os.path.basename(p) for p in (VAL_ROWS_FILE, TEST_ROWS_FILE, TEST_SHARD)}


def refuse(name):
    """A crash with one line, in run.log and in the judge's record; nothing train.py can catch."""
    from harness.clock import crash_run
    crash_run(f"train.py read {name}, the judge's evaluation rows, before evaluate_bpb: never read them", catchable=False)


def audit(event, args):
    if event == "open" and not SCORING and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.fsdecode(args[0])
        name = GUARDED.get(os.path.realpath(path)) if os.path.basename(path) in GUARDED.values() else None
        if name:
            refuse(name)


def main():
    global CONFIRM
    CONFIRM = os.environ.pop("AUTORESEARCH_CONFIRM", None)
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    sys.addaudithook(audit)
    ACTIVE.append(True)
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    from harness import guard  # the module prepare.py imports, not this __main__ copy of it
    guard.main()
