"""The budget clock: how many seconds of training a run has had (part of the judge: it decides how
long every run trains). train.py takes the clock from here and calls it around each step; the
clock also keeps its span in the run record, so the rule reads the budget from the harness."""

import os
import sys
import time

from harness import runrecord

RECORD_EVERY = 5.0  # seconds of wall time between two notes of the clock's span in the run record


def scheduler_times(tasks="/proc/self/task"):
    """{thread id: (seconds it ran on a CPU, seconds it was runnable but waited for one)}, for
    each of this process's threads, from the Linux scheduler's own accounting (schedstat's first
    two fields, in ns); None where there is none (macOS; kernels built without CONFIG_SCHED_INFO)."""
    times = {}
    try:
        names = os.listdir(tasks)
    except OSError:
        return None
    for tid in names:
        try:
            with open(os.path.join(tasks, tid, "schedstat")) as f:
                ran, waited = f.read().split()[:2]
            times[tid] = (int(ran) / 1e9, int(waited) / 1e9)
        except (OSError, ValueError):  # a thread that just ended
            pass
    return times or None


def run_queue_delays(tasks="/proc/self/task"):
    """{thread id: seconds it waited for a CPU} (scheduler_times' second field), or None."""
    times = scheduler_times(tasks)
    return None if times is None else {tid: waited for tid, (_, waited) in times.items()}


def budget_clock(device, read_times=scheduler_times):
    """The clock the training budget runs on (a function giving seconds), and one line saying what
    it counts.

    On CUDA and MPS: the wall clock; the device is the run's alone, as in the reference. On a CPU
    the cores are shared (a browser, a test suite, a second agent), and on the wall clock every
    second the scheduler gives a neighbour is a second of budget lost: beside one busy process a
    run fitted half its steps. So there it counts the time this run computed: in each interval
    between two readings (a training step), the wall time less what its threads' waits for a CPU
    stretched it by. Threads in an OpenMP region meet at a barrier, so each wait stretches the
    region it falls in; how much the interval stretched lies between the longest wait of any one
    thread (if all the waits overlapped) and the sum of the threads' waits (if none did). Which,
    the scheduler does not say; the busiest thread's own CPU time in the interval does: a step
    computes as long as its busiest thread ran, so the clock counts that, held within those two
    bounds. Beside one busy process on 2 cores our threads are preempted one at a time, at
    different moments, and the sum is right (the longest wait alone credited a step only part of
    its stretch: 79% of a quiet run's steps on one machine); beside a 2-thread neighbour both
    threads may wait at once, where the sum would count a stretch twice. On a quiet machine
    nothing waits and the bounds meet at the wall clock.
    What it cannot see: a neighbour's cost to a thread while it runs (shared caches and memory
    bandwidth, a hyperthread sibling, a hypervisor's steal), and a thread spinning at a barrier
    for a partner that waits (counted as running): train.py keeps OpenMP's spin short for that.
    Where the kernel keeps no run-queue accounting (macOS) it is the process's CPU time per
    thread: fair under load only in part, and a little slow on a quiet machine."""
    if device.type != "cpu":
        return recorded(time.time), "wall clock (the device is this run's alone)"
    seen = read_times()
    if seen is None:
        import torch
        threads = torch.get_num_threads()
        return recorded(lambda: time.process_time() / threads), (
            f"process CPU time / {threads} threads (no run-queue accounting on this system)")
    last, waited = time.time(), 0.0

    def clock():
        nonlocal last, waited
        now, times = time.time(), read_times() or {}
        steps = [(r - seen.get(tid, (r, w))[0], w - seen.get(tid, (r, w))[1])  # a new thread: no history
                 for tid, (r, w) in times.items()]
        waited += now - last - computed_seconds(now - last, [r for r, _ in steps], [w for _, w in steps])
        last = now
        seen.update(times)
        return now - waited
    return recorded(clock), ("wall clock less what waits for a CPU stretched this run "
                             "(Linux schedstat: between the longest and the summed waits, by the busiest thread's CPU time)")


def computed_seconds(wall, ran, waits):
    """How long an interval of `wall` seconds computed, given each thread's seconds on a CPU
    (`ran`) and waiting for one (`waits`) in it: the busiest thread's CPU time, held between wall
    less the summed waits and wall less the longest (see budget_clock)."""
    return min(max(max(ran, default=0.0), wall - sum(waits)), wall - max(waits, default=0.0))


SPAN = {}  # the clock's span so far in this process: budget_seconds, wall_seconds (the judge records it)


def recorded(clock):
    """The clock, keeping in SPAN (and every RECORD_EVERY seconds in the run record) the budget
    and wall seconds from its first reading to its last: from the end of training's first step (the
    Budget reads it first there) to the end of its last, any later untimed warm-up steps included.
    Their ratio is what a busy machine did to the run, read from the harness, not from train.py."""
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


# The judge's budget. train.py asks it once a step whether training is over, and the schedules
# read its progress; evaluate_bpb then checks, on the same clock, that training kept to it.
UNTIMED_STEPS = {"cuda": 11}  # steps that compile and warm up, by device type; any other device: 1
NEVER_ASKED = ("train.py never asked the judge's clock: make it with prepare.training_budget and end the "
               "loop on budget.over(), once a step")


class Budget:
    """The training budget as the judge keeps it (prepare.training_budget makes the one a run has).

    train.py calls `over()` once after each step: it synchronizes the device (queued work is
    counted, whatever train.py timed) and reads the budget clock. The first UNTIMED_STEPS calls
    end the steps that compile and warm up (11 on CUDA, as the reference; 1 elsewhere, where only
    the compile step is slow); the budget runs from the last of them. `progress()` is the share
    of the budget trained so far, for the schedules. The judge also counts backward passes: a
    warm-up may not train more than the steps the budget times (`verdict`)."""

    def __init__(self, device, seconds, sync):
        self.device, self.seconds, self.sync = device, seconds, sync
        self.clock, self.note = budget_clock(device)
        # the last step's seconds on the budget clock (the first step's: wall seconds since now; the
        # clock is first read at the end of step 0, so its span is training's, not set-up's)
        self.created, self.step_seconds = time.time(), 0.0
        self.untimed = UNTIMED_STEPS.get(device.type, 1)
        self.steps, self.start, self.last, self.trained, self.longest = 0, None, None, 0.0, 0.0
        self.wall_start, self.wall = None, 0.0  # the wall seconds of the same span, for the summary
        self.passes, self.untimed_passes, self.step_passes, self.spent_at = 0, 0, [], None
        count_backward_passes(self)

    def over(self):
        """Whether the budget is spent, after the step just done. A loop that goes on a step past
        the budget, or whose warm-up trained more than its steps allow, ends here as a crash."""
        self.sync(self.device)
        now = self.clock()
        self.steps += 1
        if self.steps == self.untimed:
            self.start, self.wall_start, self.untimed_passes = now, time.time(), self.passes
        elif self.steps > self.untimed:
            self.longest = max(self.longest, now - self.last)
            self.trained, self.wall = now - self.start, time.time() - self.wall_start
            self.step_passes.append(self.passes - self.last_passes)
        self.step_seconds = now - self.last if self.last is not None else time.time() - self.created
        self.last, self.last_passes = now, self.passes
        if self.spent_at and self.steps > self.spent_at + 1:
            crash_run(f"trained {self.steps - self.spent_at} steps past the {self.seconds:g} s budget by the judge's "
                       f"clock: stop when budget.over() says so")
        if len(self.step_passes) == 1 and self.warm_up_verdict():
            crash_run(self.warm_up_verdict())
        if not self.spent_at and self.steps > self.untimed and self.trained >= self.seconds:
            self.spent_at = self.steps
        return bool(self.spent_at)

    def progress(self):
        return min(self.trained / self.seconds, 1.0)

    def verdict(self):
        """None when training kept to the budget, else one line saying how it did not: it never
        asked, trained past the budget by more than a step, or trained more in the untimed steps
        than they allow (as many backward passes a step as the timed steps made)."""
        if not self.steps:
            return NEVER_ASKED
        if self.start is None:
            return None  # ended within its warm-up: nothing trained on the budget's time
        self.sync(self.device)
        trained = self.clock() - self.start
        if trained > self.seconds + self.longest + max(1.0, 0.02 * self.seconds):
            return (f"trained {trained:.1f} s by the judge's clock, past the {self.seconds:g} s budget and one step "
                    f"({self.longest:.2f} s): stop when budget.over() says so")
        return self.warm_up_verdict()

    def warm_up_verdict(self):
        """One line when the untimed steps made more backward passes than as many timed steps did."""
        per_step = max(self.step_passes, default=None)
        if per_step is not None and self.untimed_passes > self.untimed * per_step:
            return (f"{self.untimed_passes} backward passes in the {self.untimed} untimed warm-up step(s), where a "
                    f"timed step makes {per_step}: the warm-up is the judge's, train in the loop")
        return None


def crash_run(line, catchable=True):
    """End the run as a crash with its one line, in run.log and in the judge's record; from inside
    an audit hook (catchable=False) at once, with nothing train.py could catch."""
    runrecord.note("judge", {"broke": line})
    print(f"\nFAIL: {line}", flush=True)
    if not catchable:
        sys.stderr.flush()
        os._exit(1)
    raise SystemExit(1)


def count_backward_passes(budget):
    """Count every backward pass from now on into budget.passes (Tensor.backward goes through
    torch.autograd.backward, which is wrapped once per process)."""
    import torch
    if not hasattr(torch.autograd.backward, "budget"):
        original = torch.autograd.backward

        def backward(*args, **kwargs):
            backward.budget.passes += 1
            return original(*args, **kwargs)
        torch.autograd.backward = backward
    torch.autograd.backward.budget = budget
