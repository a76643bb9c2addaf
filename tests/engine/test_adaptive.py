"""The split choice (engine.fast.adaptive) driven by invented timings, and the polling policy:
the decision logic is tested with injected measurements, never by timing anything."""

import os
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest

import engine
from engine.fast import adaptive, partner
from engine.fast.adaptive import LOCAL, SPLIT, SplitChooser


def drive(chooser, seconds_of, passes):
    """Run `passes` passes, each taking seconds_of(mode, pass number); the modes used."""
    modes = []
    for number in range(passes):
        mode = chooser.mode()
        chooser.record(mode, seconds_of(mode, number))
        modes.append(mode)
    return modes


def probe_length():
    return adaptive.WARMUP_PASSES + 2 * adaptive.PROBE_ROUNDS


def test_the_warm_up_splits_then_the_probe_alternates_both_modes():
    chooser = SplitChooser(cpus=2)
    modes = drive(chooser, lambda mode, n: 1.0, probe_length())
    assert modes[: adaptive.WARMUP_PASSES] == [SPLIT] * adaptive.WARMUP_PASSES
    probe = modes[adaptive.WARMUP_PASSES :]
    assert probe.count(SPLIT) == probe.count(LOCAL) == adaptive.PROBE_ROUNDS


@pytest.mark.parametrize("split_seconds, expected", [(0.5, SPLIT), (0.95, LOCAL), (2.0, LOCAL)])
def test_the_split_is_kept_only_when_it_beats_local_by_the_margin(split_seconds, expected):
    chooser = SplitChooser(cpus=2)
    drive(chooser, lambda mode, n: split_seconds if mode == SPLIT else 1.0, probe_length())
    assert not chooser.probing and chooser.chosen == expected
    assert drive(chooser, lambda mode, n: 1.0, 5) == [expected] * 5
    assert chooser.decisions[-1][1:] == (expected, split_seconds, 1.0)


def test_a_slow_warm_up_does_not_count():
    chooser = SplitChooser(cpus=2)
    drive(
        chooser,
        lambda mode, n: 100.0 if n < adaptive.WARMUP_PASSES else (0.5 if mode == SPLIT else 1.0),
        probe_length(),
    )
    assert chooser.chosen == SPLIT


def test_a_neighbour_that_slows_the_split_down_brings_local_back():
    chooser = SplitChooser(cpus=2)
    drive(chooser, lambda mode, n: 0.5 if mode == SPLIT else 1.0, probe_length())
    assert chooser.chosen == SPLIT
    # a CPU-bound neighbour starts: the split now takes 3 s, local 1.2 s
    busy = drive(chooser, lambda mode, n: 3.0 if mode == SPLIT else 1.2, adaptive.WATCH + 2 * adaptive.PROBE_ROUNDS + 4)
    assert chooser.chosen == LOCAL
    assert busy[-4:] == [LOCAL] * 4
    assert busy.count(SPLIT) <= adaptive.WATCH + adaptive.PROBE_ROUNDS  # bounded cost of noticing


def test_a_quiet_machine_is_noticed_at_the_next_recheck():
    chooser = SplitChooser(cpus=2)
    drive(chooser, lambda mode, n: 3.0 if mode == SPLIT else 1.2, probe_length())
    assert chooser.chosen == LOCAL
    drive(chooser, lambda mode, n: 0.5 if mode == SPLIT else 1.0, adaptive.RECHECK_EVERY + 2 * adaptive.PROBE_ROUNDS)
    assert chooser.chosen == SPLIT and len(chooser.decisions) == 2


def test_noise_below_the_slowdown_threshold_does_not_re_probe():
    chooser = SplitChooser(cpus=2)
    drive(chooser, lambda mode, n: 0.5 if mode == SPLIT else 1.0, probe_length())
    modes = drive(chooser, lambda mode, n: 0.5 * (1.4 if n % 2 else 0.9), 100)
    assert modes == [SPLIT] * 100 and len(chooser.decisions) == 1


def test_one_cpu_never_splits_and_a_forced_mode_is_kept():
    assert set(drive(SplitChooser(cpus=1), lambda mode, n: 0.1 if mode == SPLIT else 1.0, 30)) == {LOCAL}
    assert SplitChooser(cpus=1).current() == LOCAL
    forced = SplitChooser(cpus=2, forced=LOCAL)
    assert set(drive(forced, lambda mode, n: 0.1 if mode == SPLIT else 1.0, 30)) == {LOCAL}
    assert forced.decisions == []


def test_the_environment_forces_a_mode(monkeypatch):
    for value, expected in [("always", SPLIT), ("never", LOCAL), ("auto", None), ("", None)]:
        monkeypatch.setenv("KERNELSCOPE_SPLIT", value)
        assert adaptive.forced_mode() == expected


def test_the_split_choice_never_changes_the_result(monkeypatch):
    """A model whose chooser flips between split and local every pass trains bit-identically
    to one that never uses a partner (same batch size, same threads)."""
    rng = np.random.default_rng(3)
    x, labels = rng.standard_normal((64, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 64)

    def train(model, steps=6):
        optimizer = engine.make_optimizer({"name": "sgd", "lr": 0.05, "momentum": 0.9})
        losses = []
        for _ in range(steps):
            loss, _ = model.train_gradients(x, labels)
            optimizer.step(model.params, model.grads)
            losses.append(loss)
        return losses

    flipping = engine.build_model("small", seed=4, threads=2)
    flipping.split_chooser = SplitChooser(cpus=2)  # warm-up, then a probe: both modes are used
    used = []
    original = flipping._partner_parts

    def spy(parts, mode):
        helpers = original(parts, mode)
        used.append(bool(helpers))
        return helpers

    monkeypatch.setattr(flipping, "_partner_parts", spy)
    local = engine.build_model("small", seed=4, threads=2)
    local.split_chooser = SplitChooser(cpus=2, forced=LOCAL)
    assert train(flipping) == train(local)
    assert True in used and False in used  # the partner did some passes and not others
    for name in local.params:
        np.testing.assert_array_equal(flipping.params[name], local.params[name], err_msg=name)


@pytest.mark.parametrize(
    "policy, runnable, cpus, expected",
    [
        ("always", 9, 2, True),
        ("never", 1, 2, False),
        ("auto", 2, 2, True),  # this side and the one it waits for: both have a core
        ("auto", 3, 2, False),  # a neighbour wants a core: polling would take its time slice
        ("auto", None, 2, False),
    ],
)
def test_polling_only_while_a_core_is_spare(policy, runnable, cpus, expected):
    assert partner.spin_allowed(policy, runnable, cpus) is expected


def test_runnable_processes_reads_the_kernels_count(tmp_path):
    path = tmp_path / "loadavg"
    path.write_text("0.50 0.40 0.30 3/456 789\n")
    assert partner.runnable_processes(str(path)) == 3
    path.write_text("garbage\n")
    assert partner.runnable_processes(str(path)) is None
    assert partner.runnable_processes(str(tmp_path / "missing")) is None


def test_the_verdict_follows_pairs_when_the_load_changes_during_the_probe():
    """Each split pass takes 0.8 of the local pass beside it, except one where a burst of load
    hit the split pass only (80 against 1), and the load rose a hundredfold for the later
    rounds. The burst's pair disagrees with the others, so the probe takes all its pairs, and
    the median of the pairs' ratios (0.8) chooses the split."""
    local = [1.0, 1.0, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0]
    split = [0.8 * seconds for seconds in local]
    split[1] = 80.0
    assert len(local) == adaptive.MAX_PROBE_ROUNDS
    timings = {SPLIT: split, LOCAL: local}
    chooser = SplitChooser(cpus=2)
    drive(chooser, lambda mode, n: 1.0, adaptive.WARMUP_PASSES)
    drive(chooser, lambda mode, n: timings[mode][len(chooser.probe[mode])], 2 * adaptive.MAX_PROBE_ROUNDS)
    assert not chooser.probing and chooser.chosen == SPLIT


def test_a_probe_whose_pairs_disagree_takes_more_pairs_then_follows_their_median():
    """Close modes on a noisy machine: pairs fall on both sides of the margin. Three pairs do
    not decide; the probe goes on to MAX_PROBE_ROUNDS pairs and their median ratio (0.95,
    above the margin) keeps local."""
    ratios = [0.7, 1.2, 0.95, 1.1, 0.8, 0.95, 1.0, 0.85, 0.99]
    assert len(ratios) == adaptive.MAX_PROBE_ROUNDS and not all(r < adaptive.SPLIT_MARGIN for r in ratios)
    chooser = SplitChooser(cpus=2)
    drive(chooser, lambda mode, n: 1.0, adaptive.WARMUP_PASSES)
    drive(
        chooser, lambda mode, n: ratios[len(chooser.probe[mode])] if mode == SPLIT else 1.0, 2 * adaptive.PROBE_ROUNDS
    )
    assert chooser.probing  # three pairs on both sides of the margin: no verdict yet
    rest = 2 * (adaptive.MAX_PROBE_ROUNDS - adaptive.PROBE_ROUNDS)
    drive(chooser, lambda mode, n: ratios[len(chooser.probe[mode])] if mode == SPLIT else 1.0, rest)
    assert not chooser.probing and chooser.chosen == LOCAL
    assert len(chooser.probe[SPLIT]) == len(chooser.probe[LOCAL]) == adaptive.MAX_PROBE_ROUNDS


def test_a_probe_whose_pairs_agree_decides_after_the_first_rounds():
    chooser = SplitChooser(cpus=2)
    drive(chooser, lambda mode, n: 1.0, adaptive.WARMUP_PASSES)
    drive(chooser, lambda mode, n: (0.6 + 0.01 * n) if mode == SPLIT else 1.0, 2 * adaptive.PROBE_ROUNDS)
    assert not chooser.probing and chooser.chosen == SPLIT


def test_a_probe_waits_for_a_spare_core_and_its_local_passes_do_not_count():
    looks = []
    spare = {"now": False}

    def busy():
        looks.append(len(looks))
        return not spare["now"]

    chooser = SplitChooser(cpus=2, busy=busy)
    assert chooser.current() == LOCAL  # a forward before any pass starts no partner either
    modes = drive(chooser, lambda mode, n: 1.0, 3 * adaptive.BUSY_RECHECK)
    assert modes == [LOCAL] * len(modes) and chooser.passes == 0 and chooser.chosen is None
    assert len(looks) <= 4  # one look per BUSY_RECHECK passes (and the forward's), not one per pass
    spare["now"] = True
    modes = drive(chooser, lambda mode, n: 0.5 if mode == SPLIT else 1.0, adaptive.BUSY_RECHECK + probe_length())
    begun = modes.index(SPLIT)
    assert begun <= adaptive.BUSY_RECHECK
    assert modes[begun : begun + adaptive.WARMUP_PASSES] == [SPLIT] * adaptive.WARMUP_PASSES  # the warm-up, counted now
    assert chooser.chosen == SPLIT and chooser.decisions[-1][1:] == (SPLIT, 0.5, 1.0)
    spare["now"] = False  # once begun, a probe is finished whatever the machine does; the decision holds
    assert drive(chooser, lambda mode, n: 0.5, 5) == [SPLIT] * 5


def test_a_re_probe_on_a_busy_machine_trains_locally_until_a_core_is_spare():
    spare = {"now": True}
    chooser = SplitChooser(cpus=2, busy=lambda: not spare["now"])
    drive(chooser, lambda mode, n: 0.5 if mode == SPLIT else 1.0, probe_length())
    assert chooser.chosen == SPLIT
    spare["now"] = False  # a neighbour: the split slows down, the re-probe waits, local it is
    modes = drive(chooser, lambda mode, n: 3.0 if mode == SPLIT else 1.2, adaptive.WATCH + 3 * adaptive.BUSY_RECHECK)
    assert chooser.probing and modes[-2 * adaptive.BUSY_RECHECK :] == [LOCAL] * (2 * adaptive.BUSY_RECHECK)


def test_no_core_spare_counts_this_thread_among_the_runnable(monkeypatch):
    assert adaptive.no_core_spare(runnable=2, cpus=2) and adaptive.no_core_spare(runnable=5, cpus=2)
    assert not adaptive.no_core_spare(runnable=1, cpus=2)
    assert isinstance(adaptive.no_core_spare(), bool)
    monkeypatch.setattr(partner, "runnable_processes", lambda: None)
    assert not adaptive.no_core_spare(cpus=2)  # the kernel does not say: spare


def test_this_processs_own_polling_partner_is_not_taken_for_a_neighbour(monkeypatch):
    """A partner still polling its channel just after a split pass is runnable; a look at the
    machine then must not read it as a neighbour, or the first probe (which looks right after the
    warm-up's split passes) waits BUSY_RECHECK local passes for a core that is free."""
    # each says "ready" once its interpreter has started (while starting, either may be runnable
    # or waiting on the disk); then one spins, runnable, as a polling partner, the other blocks
    ready = "import sys; print('ready', flush=True); "
    polling = subprocess.Popen([sys.executable, "-c", ready + "\nwhile True: pass"], stdout=subprocess.PIPE)
    blocked = subprocess.Popen(
        [sys.executable, "-c", ready + "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        for process in (polling, blocked):
            assert process.stdout.readline() == b"ready\n"
        monkeypatch.setattr(partner, "_partners", [SimpleNamespace(process=polling), SimpleNamespace(process=blocked)])
        monkeypatch.setattr(partner, "_partners_pid", os.getpid())
        deadline = time.monotonic() + 30
        while partner.running_partners() != 1 and time.monotonic() < deadline:  # the blocked one reaches its read
            time.sleep(0.05)
        assert partner.running_partners() == 1
        monkeypatch.setattr(partner, "runnable_processes", lambda: 2)  # this thread and the polling partner
        monkeypatch.setattr(adaptive, "usable_cpus", lambda: 2)
        assert not adaptive.no_core_spare_for_split()
        assert adaptive.no_core_spare(cpus=2)  # for an analyst process, a partner at work is no spare core
        monkeypatch.setattr(partner, "runnable_processes", lambda: 3)  # and a neighbour
        assert adaptive.no_core_spare_for_split()
        monkeypatch.setattr(partner, "_partners_pid", -1)  # a forked child's view: the partners are not its own
        assert partner.running_partners() == 0
    finally:
        for process in (polling, blocked):
            process.kill()
            process.wait()
