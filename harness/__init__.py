"""The harness behind the contract files (prepare.py, train.py, program.md, analysis.py): one
concern per module. Nothing here is edited by the agent; README's file table says which modules
are part of the judge's identity (hashed: they decide a number in results.tsv or a decision) and
which only change speed or reporting."""
