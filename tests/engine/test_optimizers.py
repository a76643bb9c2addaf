"""Optimizers follow PyTorch's update rules, apply weight decay, freeze exactly, and restore state."""

import numpy as np
import pytest

from engine.core.optimizers import SGD, Adam, make_optimizer


def problem(seed=0):
    rng = np.random.default_rng(seed)
    params = {"0.weight": rng.standard_normal((4, 2, 3, 3)), "0.bias": rng.standard_normal(4)}
    grads = [{name: rng.standard_normal(value.shape) for name, value in params.items()} for _ in range(4)]
    return params, grads


def test_plain_sgd_step():
    params, grads = problem()
    start = {name: value.copy() for name, value in params.items()}
    make_optimizer({"name": "sgd", "lr": 0.1}).step(params, grads[0])
    for name in params:
        np.testing.assert_allclose(params[name], start[name] - 0.1 * grads[0][name])


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_follows_pytorch_formula(nesterov):
    params, grads = problem()
    expected = {name: value.copy() for name, value in params.items()}
    velocity = {}
    opt = make_optimizer({"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": nesterov, "weight_decay": 0.01})
    for g in grads:
        opt.step(params, g)
        for name in expected:
            d = g[name] + 0.01 * expected[name]
            velocity[name] = d.copy() if name not in velocity else 0.9 * velocity[name] + d
            step = d + 0.9 * velocity[name] if nesterov else velocity[name]
            expected[name] = expected[name] - 0.05 * step
    for name in params:
        np.testing.assert_allclose(params[name], expected[name], rtol=1e-12)


def test_adam_follows_pytorch_formula():
    params, grads = problem()
    expected = {name: value.copy() for name, value in params.items()}
    m = {name: 0.0 for name in params}
    v = {name: 0.0 for name in params}
    opt = make_optimizer({"name": "adam", "lr": 0.01, "weight_decay": 0.1})
    for t, g in enumerate(grads, start=1):
        opt.step(params, g)
        for name in expected:
            d = g[name] + 0.1 * expected[name]
            m[name] = 0.9 * m[name] + 0.1 * d
            v[name] = 0.999 * v[name] + 0.001 * d * d
            denominator = np.sqrt(v[name]) / np.sqrt(1 - 0.999**t) + 1e-8
            expected[name] = expected[name] - (0.01 / (1 - 0.9**t)) * m[name] / denominator
    for name in params:
        np.testing.assert_allclose(params[name], expected[name], rtol=1e-10)


def test_weight_decay_shrinks_weights_without_gradient():
    params = {"w": np.ones(3)}
    make_optimizer({"name": "sgd", "lr": 0.5, "weight_decay": 0.2}).step(params, {"w": np.zeros(3)})
    np.testing.assert_allclose(params["w"], 0.9)


@pytest.mark.parametrize(
    "config",
    [
        {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.1},
        {"name": "adam", "lr": 0.1, "weight_decay": 0.1},
    ],
)
def test_frozen_filters_stay_bit_identical_and_others_train(config):
    params, grads = problem()
    start = {name: value.copy() for name, value in params.items()}
    opt = make_optimizer(config)
    opt.freeze("0.weight", filters=[1, 3])
    opt.freeze("0.bias")
    for g in grads:
        opt.step(params, g)
    assert np.array_equal(params["0.weight"][[1, 3]], start["0.weight"][[1, 3]])
    assert np.array_equal(params["0.bias"], start["0.bias"])
    assert not np.any(params["0.weight"][[0, 2]] == start["0.weight"][[0, 2]])

    opt.unfreeze("0.weight", filters=[1])
    opt.unfreeze("0.bias")
    before = {name: value.copy() for name, value in params.items()}
    opt.step(params, grads[0])
    assert np.array_equal(params["0.weight"][3], before["0.weight"][3])
    assert not np.array_equal(params["0.weight"][1], before["0.weight"][1])
    assert not np.array_equal(params["0.bias"], before["0.bias"])


def test_unfrozen_filter_restarts_without_stale_momentum():
    params = {"w": np.zeros((2, 1))}
    opt = make_optimizer({"name": "sgd", "lr": 1.0, "momentum": 0.9})
    opt.freeze("w", filters=[0])
    opt.step(params, {"w": np.ones((2, 1))})
    opt.unfreeze("w", filters=[0])
    opt.step(params, {"w": np.ones((2, 1))})
    # filter 0: first real step moves by the gradient only; filter 1 had momentum built up
    np.testing.assert_allclose(params["w"][:, 0], [-1.0, -1.0 - 1.9])


@pytest.mark.parametrize(
    "config", [{"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True}, {"name": "adam", "lr": 0.01}]
)
def test_state_dict_round_trip_continues_identically(config):
    params, grads = problem()
    opt = make_optimizer(config)
    opt.freeze("0.weight", filters=[2])
    for g in grads[:2]:
        opt.step(params, g)
    state = opt.state_dict()
    assert all(isinstance(value, np.ndarray) for value in state.values())
    saved_params = {name: value.copy() for name, value in params.items()}
    for g in grads[2:]:
        opt.step(params, g)
    restored = make_optimizer(opt.config())
    restored.load_state_dict(state)
    for g in grads[2:]:
        restored.step(saved_params, g)
    for name in params:
        assert np.array_equal(params[name], saved_params[name])


def test_make_optimizer_errors_name_the_field():
    with pytest.raises(ValueError, match="optimizer.name: unknown optimizer 'rmsprop'; valid names: sgd, adam"):
        make_optimizer({"name": "rmsprop"})
    with pytest.raises(ValueError, match="optimizer.lr must be > 0"):
        make_optimizer({"name": "sgd", "lr": 0})
    with pytest.raises(ValueError, match="optimizer.momentum must be < 1"):
        make_optimizer({"name": "sgd", "momentum": 1.5})
    with pytest.raises(ValueError, match="optimizer.betas: unknown field"):
        make_optimizer({"name": "adam", "betas": [0.9, 0.99]})
    with pytest.raises(ValueError, match="optimizer.nesterov needs optimizer.momentum > 0"):
        make_optimizer({"name": "sgd", "nesterov": True})
    assert isinstance(make_optimizer({"name": "sgd"}), SGD)
    assert isinstance(make_optimizer("adam"), Adam)


def test_float32_parameters_stay_float32():
    params = {"w": np.ones(4, dtype=np.float32)}
    for config in ({"name": "sgd", "momentum": 0.9, "weight_decay": 0.1}, {"name": "adam"}):
        opt = make_optimizer(config)
        opt.step(params, {"w": np.full(4, 0.5, dtype=np.float32)})
        assert params["w"].dtype == np.float32


def test_an_optimizer_field_that_is_no_name_is_refused_naming_the_optimizer():
    """A body key such as "" cannot become "optimizer.": the message still starts with its field."""
    with pytest.raises(ValueError, match=r"^optimizer: unknown field '' for sgd"):
        make_optimizer({"name": "sgd", "": 1})
