"""The harness behind the contract files (prepare.py, train.py, program.md, analysis.py): one
concern per module. Nothing here is edited by the agent; README's file table says which modules
are part of the judge's identity (hashed: they decide a number in results.tsv or a decision) and
which only change speed or reporting."""

# The judge's identity: every file whose lines decide a number in results.tsv or a decision (the
# metric, the cache it reads, the budget clock, the run record, the log's reader and writer, the
# rule, Confirm's verdict), listed once. Run refuses a work tree where one of them differs from the baseline's commit,
# a result records their blob hashes (record.py), and Confirm copies them into the commits it runs.
# The rest of harness/ (data.py: downloads; hardware.py: the device and its peak tables;
# attention.py: the kernels; chart.py, board.py, record.py: reporting and sharing) only changes
# speed or reporting: the judge's files import from it only the device's name and memory peak (labels
# in the run record), shard downloads and the FA3 fetch at prepare time, none of which changes a result.
JUDGE_FILES = ("prepare.py", "analysis.py", "pyproject.toml", "uv.lock", "harness/__init__.py",
               "harness/cache.py", "harness/clock.py", "harness/confirm.py", "harness/errors.py", "harness/guard.py",
               "harness/keep_rule.py", "harness/results.py", "harness/run.py", "harness/runrecord.py")
