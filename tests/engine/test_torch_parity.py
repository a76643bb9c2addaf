"""Forward, loss and every gradient agree with PyTorch (conv2d, max_pool2d, avg_pool2d, linear)
on random specs. Skipped when torch is not installed."""

import numpy as np
import pytest

import engine

torch = pytest.importorskip("torch")


def torch_twin(model):
    modules = []
    for layer in model.layers:
        kind = layer.kind
        if kind == "conv":
            modules.append(
                torch.nn.Conv2d(layer.input_shape[0], layer.filters, layer.kernel, layer.stride, layer.padding)
            )
        elif kind == "dense":
            modules.append(torch.nn.Linear(layer.input_shape[0], layer.units))
        elif kind == "maxpool":
            modules.append(torch.nn.MaxPool2d(layer.size, layer.stride))
        elif kind == "avgpool":
            modules.append(torch.nn.AvgPool2d(layer.size, layer.stride))
        elif kind == "relu":
            modules.append(torch.nn.ReLU())
        elif kind == "leaky_relu":
            modules.append(torch.nn.LeakyReLU(layer.slope))
        elif kind == "tanh":
            modules.append(torch.nn.Tanh())
        elif kind == "sigmoid":
            modules.append(torch.nn.Sigmoid())
        elif kind == "flatten":
            modules.append(torch.nn.Flatten())
    net = torch.nn.Sequential(*modules).double()
    net.load_state_dict({name: torch.from_numpy(value.astype(np.float64)) for name, value in model.params.items()})
    return net


def random_spec(rng):
    """A random conv net that fits its input: conv/pool blocks, then flatten and dense layers."""
    channels = int(rng.integers(1, 4))
    height, width = int(rng.integers(8, 17)), int(rng.integers(8, 17))
    input_shape = [channels, height, width]
    layers = []
    for _ in range(int(rng.integers(1, 4))):
        kernel = int(rng.integers(1, min(5, height, width) + 1))
        padding = int(rng.integers(0, kernel // 2 + 2))
        stride = int(rng.integers(1, 3))
        layers.append(
            {"type": "conv", "filters": int(rng.integers(1, 6)), "kernel": kernel, "stride": stride, "padding": padding}
        )
        height = (height + 2 * padding - kernel) // stride + 1
        width = (width + 2 * padding - kernel) // stride + 1
        layers.append({"type": str(rng.choice(["relu", "leaky_relu", "tanh", "sigmoid"]))})
        if min(height, width) >= 4 and rng.random() < 0.7:
            size = int(rng.integers(2, 4))
            stride = int(rng.integers(1, size + 1))
            layers.append({"type": str(rng.choice(["maxpool", "avgpool"])), "size": size, "stride": stride})
            height = (height - size) // stride + 1
            width = (width - size) // stride + 1
        if min(height, width) < 3:
            break
    layers.append({"type": "flatten"})
    if rng.random() < 0.5:
        layers += [{"type": "dense", "units": int(rng.integers(3, 9))}, {"type": "relu"}]
    layers.append({"type": "dense", "units": 5})
    return {"input": input_shape, "layers": layers}


@pytest.mark.parametrize("seed", range(12))
def test_random_specs_match_pytorch(seed):
    rng = np.random.default_rng(seed)
    spec = random_spec(rng)
    model = engine.build_model(spec, init="glorot_uniform", seed=seed, dtype=np.float64)
    for name in model.params:
        if name.endswith("bias"):
            model.params[name][...] = rng.standard_normal(model.params[name].shape) * 0.1
    net = torch_twin(model)
    batch = int(rng.integers(1, 40))  # above 16 the engine splits the batch across threads
    x = rng.standard_normal((batch, *model.input_shape))
    labels = rng.integers(0, 5, batch)

    logits = model.forward(x)
    loss, dlogits = engine.softmax_cross_entropy(logits, labels)
    dx = model.backward(dlogits)

    inputs = torch.from_numpy(x).requires_grad_(True)
    torch_logits = net(inputs)
    torch_loss = torch.nn.functional.cross_entropy(torch_logits, torch.from_numpy(labels))
    torch_loss.backward()

    np.testing.assert_allclose(logits, torch_logits.detach().numpy(), rtol=1e-9, atol=1e-10)
    assert loss == pytest.approx(torch_loss.item(), rel=1e-10)
    np.testing.assert_allclose(dx, inputs.grad.numpy(), rtol=1e-7, atol=1e-12)
    for name, parameter in net.named_parameters():
        np.testing.assert_allclose(model.grads[name], parameter.grad.numpy(), rtol=1e-7, atol=1e-12, err_msg=name)


def test_chained_convs_match_pytorch():
    """Convs that hand their output over in the next conv's padded layout (conv -> relu -> conv
    padded by k - 1 - p; see engine.fast.direct_conv), with different kernels, then a max pool."""
    spec = {
        "input": [2, 11, 13],
        "layers": [
            {"type": "conv", "filters": 4, "kernel": 3, "padding": 1},
            {"type": "relu"},
            {"type": "conv", "filters": 5, "kernel": [5, 3], "padding": 1},
            {"type": "relu"},  # 3 - 1 - 1 = 1
            {"type": "conv", "filters": 3, "kernel": 4, "padding": [3, 1]},
            {"type": "relu"},  # (5 - 1 - 1, 3 - 1 - 1)
            {"type": "maxpool", "size": 2},
            {"type": "flatten"},
            {"type": "dense", "units": 4},
        ],
    }
    model = engine.build_model(spec, seed=3, dtype=np.float64)
    assert [block.out_padding for _, _, block in model.steps[:3]] == [(1, 1), (3, 1), None]
    net = torch_twin(model)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((20, *model.input_shape))
    labels = rng.integers(0, 4, 20)
    _, dlogits = engine.softmax_cross_entropy(model.forward(x), labels)
    dx = model.backward(dlogits)
    inputs = torch.from_numpy(x).requires_grad_(True)
    torch.nn.functional.cross_entropy(net(inputs), torch.from_numpy(labels)).backward()
    np.testing.assert_allclose(dx, inputs.grad.numpy(), rtol=1e-7, atol=1e-12)
    for name, parameter in net.named_parameters():
        np.testing.assert_allclose(model.grads[name], parameter.grad.numpy(), rtol=1e-7, atol=1e-12, err_msg=name)


def test_preset_models_match_pytorch_in_float32():
    for preset in ("small", "medium"):
        model = engine.build_model(preset, seed=0)
        net = torch_twin(model).float()
        rng = np.random.default_rng(0)
        x = rng.standard_normal((32, *model.input_shape)).astype(np.float32)
        labels = rng.integers(0, 10, 32)
        _, dlogits = engine.softmax_cross_entropy(model.forward(x), labels)
        model.backward(dlogits, need_input_grad=False)
        torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(labels)).backward()
        for name, parameter in net.named_parameters():
            np.testing.assert_allclose(model.grads[name], parameter.grad.numpy(), rtol=2e-3, atol=2e-5, err_msg=name)


def test_training_steps_match_pytorch_sgd_with_momentum():
    model = engine.build_model("small", seed=1, dtype=np.float64)
    net = torch_twin(model)
    opt = engine.make_optimizer({"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3})
    torch_opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
    rng = np.random.default_rng(1)
    for _ in range(2):
        x = rng.standard_normal((20, 1, 28, 28))
        labels = rng.integers(0, 10, 20)
        _, dlogits = engine.softmax_cross_entropy(model.forward(x), labels)
        model.backward(dlogits, need_input_grad=False)
        opt.step(model.params, model.grads)
        torch_opt.zero_grad()
        torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(labels)).backward()
        torch_opt.step()
    for name, parameter in net.named_parameters():
        np.testing.assert_allclose(model.params[name], parameter.detach().numpy(), rtol=1e-9, atol=1e-12)
