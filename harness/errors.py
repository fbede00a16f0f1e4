"""The one way to report an expected failure (no data yet, no network, a corrupt shard, a log that
cannot be read, a modified judge): `fail("what went wrong: what to do")`. It ends the process with
exit status 1 and that one line, `error: ...`, on stderr, from wherever it is called, since it
raises SystemExit: no traceback for a condition we expected, and no entry point has to catch it.
Something that costs nothing (an unreachable hub, a skipped line) is a `warn`ing: one line too.
Unexpected errors keep their traceback: that is a bug to read, not a condition to explain."""

import sys


class Failure(SystemExit):
    """An expected failure, already worded for the human (tests catch it by this name)."""


def fail(message):
    raise Failure(f"error: {message}")


def warn(message):
    print(f"warning: {message}", file=sys.stderr)


def report_crashes(setup):
    """train.py's uncaught errors: the traceback as usual, but on a fresh line after the status line
    (which ends in \r, not a newline) and last in run.log; out of memory also says which knob to turn.
    Installed by train.py, whose process it is."""
    def report(exc_type, exc, tb):
        print(file=sys.stderr)
        sys.__excepthook__(exc_type, exc, tb)
        if exc_type.__name__ == "OutOfMemoryError" or "out of memory" in str(exc):  # MPS: a RuntimeError
            print(f"Out of memory: a crash (program.md: log it, then to fit, lower DEVICE_BATCH_SIZE for setup "
                  f"{setup!r}, e.g. halve it; gradient accumulation keeps TOTAL_BATCH_SIZE the same)", file=sys.stderr)
    sys.excepthook = report
