"""Partner processes (engine.fast.partner): the second part of a batch computed in another process
gives exactly what computing it here gives, and a partner that dies costs nothing but time."""

import gc
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

import engine
from engine.fast import partner

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="partners need a POSIX system")


@pytest.fixture(autouse=True)
def split_always():
    """Every model here splits its batches with a partner: left to measure (auto), a model on a
    machine whose cores are all taken trains locally and never starts one (engine.fast.adaptive).
    A patch of its own, which the tests' monkeypatch.undo() leaves in place."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KERNELSCOPE_SPLIT", "always")
        yield


def train_steps(model, x, labels, steps=3):
    optimizer = engine.make_optimizer({"name": "sgd", "lr": 0.05, "momentum": 0.9})
    for _ in range(steps):
        loss, dlogits = engine.softmax_cross_entropy(model.forward(x), labels)
        dx = model.backward(dlogits)
        optimizer.step(model.params, model.grads)
    return loss, dx


def a_partner_of_our_own(monkeypatch):
    """A fresh partner that every model here uses until it breaks (then: none)."""
    victim = partner.Partner()
    monkeypatch.setattr(partner, "partners", lambda count: [] if victim.broken else [victim])
    return victim


def kill(victim):
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait(10)


def assert_same_grads(model, expected):
    for name in model.grads:
        np.testing.assert_array_equal(model.grads[name], expected.grads[name], err_msg=name)


def problem(batch=64, dtype=np.float32):
    rng = np.random.default_rng(11)
    return rng.standard_normal((batch, 1, 28, 28)).astype(dtype), rng.integers(0, 10, batch)


def test_a_partner_computes_the_second_part_bit_identically(monkeypatch):
    x, labels = problem()
    with_partner = engine.build_model("small", seed=2, threads=2)
    loss, dx = train_steps(with_partner, x, labels)
    helpers = partner.partners(1)
    assert helpers and with_partner._key in helpers[0].models  # the partner really did part 2

    monkeypatch.setattr(partner, "partners", lambda count: [])  # both parts computed here
    alone = engine.build_model("small", seed=2, threads=2)
    loss_alone, dx_alone = train_steps(alone, x, labels)
    assert loss == loss_alone
    np.testing.assert_array_equal(dx, dx_alone)
    for name in alone.params:
        np.testing.assert_array_equal(with_partner.params[name], alone.params[name], err_msg=name)


def test_float64_gradients_through_a_partner_keep_their_precision():
    x, labels = problem(batch=32, dtype=np.float64)
    model = engine.build_model("small", seed=3, dtype=np.float64, threads=2)
    _, dlogits = engine.softmax_cross_entropy(model.forward(x), labels)
    model.backward(dlogits, need_input_grad=False)
    single = engine.build_model("small", seed=3, dtype=np.float64, threads=1)
    _, dlogits_single = engine.softmax_cross_entropy(single.forward(x), labels)
    single.backward(dlogits_single, need_input_grad=False)
    for name in model.grads:
        assert model.grads[name].dtype == np.float64
        np.testing.assert_allclose(model.grads[name], single.grads[name], rtol=1e-10, atol=1e-13, err_msg=name)


@pytest.mark.parametrize("when", ["before_forward", "between_forward_and_backward"])
def test_a_killed_partner_costs_time_not_results(when, monkeypatch):
    x, labels = problem()
    expected_model = engine.build_model("small", seed=5, threads=2)
    monkeypatch.setattr(partner, "partners", lambda count: [])
    expected_loss, expected_dx = train_steps(expected_model, x, labels, steps=1)
    monkeypatch.undo()

    victim = a_partner_of_our_own(monkeypatch)
    model = engine.build_model("small", seed=5, threads=2)
    if when == "before_forward":
        kill(victim)
    logits = model.forward(x)
    if when == "between_forward_and_backward":
        assert not victim.broken
        kill(victim)
    loss, dlogits = engine.softmax_cross_entropy(logits, labels)
    dx = model.backward(dlogits)
    assert victim.broken
    assert loss == expected_loss
    np.testing.assert_array_equal(dx, expected_dx)
    assert_same_grads(model, expected_model)
    victim.close()


def test_a_collected_model_is_dropped_by_the_partner():
    x, _ = problem(batch=32)
    model = engine.build_model("small", threads=2)
    model.forward(x)
    key = model._key
    helper = partner.partners(1)[0]
    assert key in helper.models
    del model
    gc.collect()
    assert key not in helper.models
    assert not any(signature[0] == key for signature in helper._layouts)


def test_a_model_collected_while_its_partner_is_busy_is_dropped_at_the_next_exchange(monkeypatch):
    """A model's finalizer (Partner.forget) can run at any allocation, also while the partner's
    lock is held: a step holds it while it computes its own part, and the finalizer may run on
    that very thread. forget must not wait for the lock (on the same thread that hangs training
    for good); the drop waits for the next exchange instead."""
    x, labels = problem(batch=32)
    helper = a_partner_of_our_own(monkeypatch)
    model = engine.build_model("small", threads=2)
    model.forward(x)
    key = model._key
    assert key in helper.models
    with helper.lock:  # as during a step's own part
        finalizer = threading.Thread(target=helper.forget, args=(key,))
        finalizer.start()
        finalizer.join(timeout=30)  # a deadlock check, not a speed one: it returns at once or never
        assert not finalizer.is_alive(), "forget waited for a lock that a step holds"
        assert key in helper.models and key in helper.pending_drops
    train_steps(model, x, labels, steps=1)  # the next exchange drops the replica it was told to
    assert key not in helper.pending_drops
    assert helper.models == {key}  # sent again by this step: the drop came first, then the model


def test_a_partner_exits_when_its_main_process_closes_the_channel():
    helper = partner.Partner()
    helper.close()
    assert helper.process.returncode == 0


def test_a_partner_whose_main_process_dies_mid_exchange_exits_quietly():
    """A run killed while its partner computes: the partner's answer finds no reader. It must
    end with nothing on stderr, which is the server's log (a traceback there is a failure)."""
    environment = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(engine.__file__))))
    process = subprocess.Popen(
        [sys.executable, "-c", "from engine.fast.partner_main import main; main()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environment,
    )
    process.stdout.close()  # the main process's end of the answers is gone
    partner._send(process.stdin, ("drop", 0))  # the partner answers "ok" into the broken pipe
    process.stdin.close()
    assert process.wait(10) == 0
    assert process.stderr.read() == b""


@pytest.mark.parametrize("threads", [1, 2])
def test_train_gradients_is_forward_loss_and_backward_in_one_pass(threads):
    x, labels = problem()
    one_pass = engine.build_model("small", seed=6, threads=threads)
    loss, logits = one_pass.train_gradients(x, labels)
    three_calls = engine.build_model("small", seed=6, threads=threads)
    expected_logits = three_calls.forward(x)
    expected_loss, dlogits = engine.softmax_cross_entropy(expected_logits, labels)
    three_calls.backward(dlogits, need_input_grad=False)
    np.testing.assert_array_equal(logits, expected_logits)
    assert loss == pytest.approx(expected_loss, rel=1e-12)
    assert_same_grads(one_pass, three_calls)


def test_train_gradients_survives_a_killed_partner(monkeypatch):
    x, labels = problem()
    expected = engine.build_model("small", seed=8, threads=2)
    monkeypatch.setattr(partner, "partners", lambda count: [])
    expected_loss, _ = expected.train_gradients(x, labels)
    victim = a_partner_of_our_own(monkeypatch)
    model = engine.build_model("small", seed=8, threads=2)
    model.train_gradients(x, labels)  # the partner now holds a replica
    kill(victim)
    loss, _ = model.train_gradients(x, labels)
    assert victim.broken and loss == expected_loss
    assert_same_grads(model, expected)
    victim.close()


def test_train_gradients_rejects_bad_labels_by_name():
    x, _ = problem(batch=16)
    model = engine.build_model("small", threads=2)
    with pytest.raises(ValueError, match="labels must be in \\[0, 9\\]"):
        model.train_gradients(x, np.full(16, 10))
    with pytest.raises(ValueError, match="labels must be \\(16,\\)"):
        model.train_gradients(x, np.zeros(15, dtype=int))


def test_an_arena_works_where_posix_fallocate_does_not_exist(monkeypatch):
    monkeypatch.delattr(os, "posix_fallocate")  # as on macOS
    arena = partner.Arena(4096)
    try:
        view = arena.view((64, (8,), "<f4"))
        view[:] = 3.0
        assert os.path.getsize(arena.path) == 4096 and float(view.sum()) == 24.0
    finally:
        arena.unlink()


@pytest.mark.parametrize("delay", [0.0, 0.001, 0.05])  # already there, within the poll, after it
def test_a_message_is_received_whether_it_comes_before_during_or_after_the_polling(delay):
    import threading
    import time

    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb") as reader, os.fdopen(write_end, "wb") as writer:
        message = ("ok", np.arange(3).tolist())
        sender = threading.Timer(delay, partner._send, (writer, message))
        started = time.perf_counter()  # before the timer starts: this thread may be descheduled after it
        sender.start()
        assert partner._receive(reader, spin_seconds=0.002) == message
        assert time.perf_counter() - started >= delay * 0.9
        sender.join()
        writer.close()
        with pytest.raises(EOFError):  # a closed channel still ends the wait
            partner._receive(reader, spin_seconds=0.002)
