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
