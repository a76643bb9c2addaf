"""Whether the partner split pays off right now: a per-model choice between computing the parts
of a batch in two processes ("split") or all here ("local"), made by measuring both.

The split wins on a quiet two-core machine and loses when another process holds a core (the
partner then waits for a time slice, and the main process waits for the partner). The parts
of a batch are fixed by the batch size and `threads` and each part is computed by the same
code wherever it runs, so the choice changes only the time a step takes, never its result.

SplitChooser holds the decision logic only; it is given the measured seconds of each training
pass (engine.fast.model.Model.train_gradients times them), so tests can drive it with invented
timings. The schedule: a few warm-up passes split (they start the partner and lay out its
arena), then a probe that alternates split and local passes: PROBE_ROUNDS pairs when they all
agree, up to MAX_PROBE_ROUNDS when they do not. The verdict is the median of the pairs'
ratios, and the split must beat local by SPLIT_MARGIN. The chosen mode is kept until
RECHECK_EVERY passes have gone by or it has become SLOWDOWN times slower than it measured in
the probe (a neighbour started), then comes another probe. With a single usable CPU it never splits.

A probe (the first one's warm-up included) begins only while a core is spare (`no_core_spare_for_split`,
looked at every BUSY_RECHECK passes until then): on a machine whose cores are all taken (two runs
of a lesson at once, a neighbour) the split's passes only take CPU from the other work, so the
model trains locally and its partner is not even started until a core is free.

KERNELSCOPE_SPLIT=always|never|auto (default auto) overrides the choice for the whole process
(benchmarks compare the three).
"""

import os
import statistics

SPLIT = "split"
LOCAL = "local"

WARMUP_PASSES = 2  # split, not measured: the partner starts, the arena is laid out
PROBE_ROUNDS = 3  # split/local pairs before a probe may decide
MAX_PROBE_ROUNDS = 9  # pairs at most: a probe whose pairs disagree goes on until this many
SPLIT_MARGIN = 0.92  # the split is chosen when its median is below this fraction of local's
RECHECK_EVERY = 300  # passes between probes while nothing seems to change
SLOWDOWN = 1.5  # a chosen mode this much slower than its probe median (over WATCH passes) re-probes
WATCH = 8
BUSY_RECHECK = 20  # passes between looks at the machine while a probe waits for a spare core


def usable_cpus():
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def no_core_spare(runnable=None, cpus=None) -> bool:
    """Whether the runnable threads (this one included, from /proc/loadavg) fill the usable CPUs,
    so another process of ours would find no core of its own. False where the kernel does not say."""
    from engine.fast.partner import runnable_processes

    runnable = runnable_processes() if runnable is None else runnable
    cpus = usable_cpus() if cpus is None else cpus
    return runnable is not None and runnable >= cpus


def no_core_spare_for_split() -> bool:
    """no_core_spare, not counting this process's own partners that are runnable: a partner
    still polling its channel just after a split pass would otherwise read as a neighbour, and a
    probe that begins right after the warm-up's split passes (or a re-probe) would wait
    BUSY_RECHECK passes for a core that is free. (An analyst process asks no_core_spare itself:
    for it a partner at work is no spare core.)"""
    from engine.fast.partner import runnable_processes, running_partners

    runnable = runnable_processes()
    return runnable is not None and no_core_spare(runnable - running_partners())


def forced_mode():
    """SPLIT or LOCAL when KERNELSCOPE_SPLIT forces one, else None."""
    value = os.environ.get("KERNELSCOPE_SPLIT", "auto").strip().lower()
    return {"always": SPLIT, "never": LOCAL}.get(value)


class SplitChooser:
    """Chooses SPLIT or LOCAL for each training pass of one model from measured pass times.

    Call mode() before a pass and record(mode, seconds) after it with the mode it ran in.
    """

    def __init__(self, cpus=None, forced=None, busy=None):
        """`busy`: () -> bool, whether no core is spare now (no_core_spare_for_split); None: never asked."""
        self.cpus = usable_cpus() if cpus is None else cpus
        self.forced = forced
        self.busy = busy
        self.waiting = False  # the last look found no core spare: the probe has not begun
        self.wait_left = 0  # passes until the next look
        self.waited = False  # the pass being run is a local one while the probe waits (not counted)
        self.passes = 0
        self.chosen = None  # SPLIT or LOCAL once a probe has decided
        self.probe = {SPLIT: [], LOCAL: []}
        self.probing = True
        self.since_probe = 0
        self.reference = None  # the chosen mode's probe median
        self.recent = []
        self.decisions = []  # (pass number, chosen mode, split median, local median), for reports

    def mode(self):
        if self.forced is not None:
            return self.forced
        if self.cpus < 2:
            return LOCAL
        self.waited = self._waits()
        if self.waited:
            return LOCAL
        if self.passes < WARMUP_PASSES:
            return SPLIT
        if self.probing:
            split_runs, local_runs = len(self.probe[SPLIT]), len(self.probe[LOCAL])
            return SPLIT if split_runs <= local_runs else LOCAL
        return self.chosen

    def current(self):
        """The mode for a pass that is not measured (a plain forward or backward): the decided
        one; before any decision SPLIT, or LOCAL while the probe waits for a spare core."""
        if self.forced is not None:
            return self.forced
        if self.cpus < 2 or (self.chosen is None and self._waits()):
            return LOCAL
        return self.chosen or SPLIT

    def _waits(self):
        """Whether this pass is local because a probe that has not begun waits for a spare core."""
        begun = any(self.probe.values()) or 0 < self.passes < WARMUP_PASSES
        if self.busy is None or not self.probing or begun:
            self.waiting = False
            return False
        if self.wait_left > 0:
            self.wait_left -= 1
            return self.waiting
        self.waiting = bool(self.busy())
        self.wait_left = BUSY_RECHECK - 1 if self.waiting else 0
        return self.waiting

    def record(self, mode, seconds):
        """The pass just run in `mode` took `seconds`."""
        if self.waited:  # a local pass while the probe waited: neither warm-up nor probe
            self.waited = False
            return
        self.passes += 1
        if self.forced is not None or self.cpus < 2 or self.passes <= WARMUP_PASSES:
            return
        if self.probing:
            self.probe[mode].append(seconds)
            rounds = min(len(self.probe[SPLIT]), len(self.probe[LOCAL]))
            if rounds >= MAX_PROBE_ROUNDS or (rounds >= PROBE_ROUNDS and self._pairs_agree()):
                self._decide()
            return
        self.since_probe += 1
        if mode != self.chosen:
            return
        self.recent = (self.recent + [seconds])[-WATCH:]
        slowed = len(self.recent) == WATCH and statistics.median(self.recent) > SLOWDOWN * self.reference
        if slowed or self.since_probe >= RECHECK_EVERY:
            self._start_probe()

    def _ratios(self):
        # pass k of each mode ran next to each other: their ratio follows a load that drifts
        # during the probe better than the ratio of each mode's median
        return [a / b for a, b in zip(self.probe[SPLIT], self.probe[LOCAL])]

    def _pairs_agree(self):
        """Every pair so far falls on the same side of SPLIT_MARGIN. A noisy machine gives pairs
        on both sides when the two modes are close; the probe then takes more pairs, since a
        wrong verdict costs every pass until the next probe."""
        sides = {ratio < SPLIT_MARGIN for ratio in self._ratios()}
        return len(sides) == 1

    def _decide(self):
        split = statistics.median(self.probe[SPLIT])
        local = statistics.median(self.probe[LOCAL])
        ratio = statistics.median(self._ratios())
        self.chosen = SPLIT if ratio < SPLIT_MARGIN else LOCAL
        self.reference = split if self.chosen == SPLIT else local
        self.decisions.append((self.passes, self.chosen, split, local))
        self.probing = False
        self.since_probe = 0
        self.recent = []

    def _start_probe(self):
        self.probe = {SPLIT: [], LOCAL: []}
        self.probing = True
