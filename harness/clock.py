"""The budget clock: how many seconds of training a run has had (part of the judge: it decides how
long every run trains). train.py takes the clock from here and calls it around each step; the
clock also keeps its span in the run record, so the rule reads the budget from the harness."""

import os
import time

from harness import runrecord

RECORD_EVERY = 5.0  # seconds of wall time between two notes of the clock's span in the run record


def run_queue_delays(tasks="/proc/self/task"):
    """{thread id: seconds it has spent runnable but waiting for a CPU}, for each of this process's
    threads, from the Linux scheduler's own accounting (schedstat's second field, in ns); None
    where there is none (macOS; Linux kernels built without CONFIG_SCHED_INFO)."""
    delays = {}
    try:
        names = os.listdir(tasks)
    except OSError:
        return None
    for tid in names:
        try:
            with open(os.path.join(tasks, tid, "schedstat")) as f:
                delays[tid] = int(f.read().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):  # a thread that just ended
            pass
    return delays or None


def budget_clock(device, read_delays=run_queue_delays):
    """The clock the training budget runs on (a function giving seconds), and one line saying what
    it counts.

    On CUDA and MPS: the wall clock; the device is the run's alone, as in the reference. On a CPU
    the cores are shared (a browser, a test suite, a second agent), and on the wall clock every
    second the scheduler gives a neighbour is a second of budget lost: beside one busy process a
    run fitted half its steps. So there it is the wall clock less the time this run waited for a
    CPU: in each interval between two readings (a training step), the longest wait of any one of
    its threads on a run queue. Threads in an OpenMP region meet at a barrier, so the region
    stretches by its slowest thread's wait; summing the threads' waits would count waits that
    overlap more than once. On a quiet machine nothing waits and this is the wall clock.
    What it cannot see: a neighbour's cost to a thread while it runs (shared caches and memory
    bandwidth, a hyperthread sibling, a hypervisor's steal), and a thread spinning at a barrier
    for a partner that waits (counted as running): train.py keeps OpenMP's spin short for that.
    Where the kernel keeps no run-queue accounting (macOS) it is the process's CPU time per
    thread: fair under load only in part, and a little slow on a quiet machine."""
    if device.type != "cpu":
        return recorded(time.time), "wall clock (the device is this run's alone)"
    seen = read_delays()
    if seen is None:
        import torch
        threads = torch.get_num_threads()
        return recorded(lambda: time.process_time() / threads), (
            f"process CPU time / {threads} threads (no run-queue accounting on this system)")
    waited = 0.0

    def clock():
        nonlocal waited
        now, delays = time.time(), read_delays() or {}
        waited += max([d - seen.get(tid, d) for tid, d in delays.items()], default=0.0)
        seen.update(delays)
        return now - waited
    return recorded(clock), "wall clock less the time this run's threads waited for a CPU (Linux schedstat)"


SPAN = {}  # the clock's span so far in this process: budget_seconds, wall_seconds (the judge records it)


def recorded(clock):
    """The clock, keeping in SPAN (and every RECORD_EVERY seconds in the run record) the budget
    and wall seconds from its first reading to its last: from the start of training's first step
    to the end of its last, the untimed compile steps included. Their ratio is what a busy machine
    did to the run, read from the harness, not from train.py's status line."""
    first, noted = [], [0.0]

    def reading():
        now, value = time.time(), clock()
        first[:] = first or [now, value]
        SPAN.update(budget_seconds=round(value - first[1], 3), wall_seconds=round(now - first[0], 3))
        if now - noted[0] >= RECORD_EVERY:
            noted[0] = now
            runrecord.note("clock", SPAN)
        return value
    return reading


