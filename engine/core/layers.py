"""Layers: what each spec layer type computes forward and backward, and the shapes it makes.

A layer is a small class built from its spec entry and its input shape (per example: (C, H, W)
or (F,)). It holds no parameters and no batch state: `forward(x, params)` returns (out, cache)
and `backward(dout, cache, params)` returns (dx, grads); the model owns the parameters, keyed
by state-dict name, and hands each layer its own {"weight": ..., "bias": ...}. `backward`
never writes into `dout`. Batches are NCHW, or (N, features) after `flatten`.

Convolution and pooling are done the textbook way (Deep Learning from Scratch, common/
layers.py): im2col unfolds every window into one row of a matrix, so a convolution is one
matrix product, and col2im folds gradients back onto the image.
"""

from typing import Any

import numpy as np


def output_size(size, kernel, stride, padding):
    """Output length along one axis of a convolution or pooling (floor mode)."""
    return (size + 2 * padding - kernel) // stride + 1


def im2col(x, kernel, stride, padding):
    """x (N, C, H, W) -> (N*Ho*Wo, C*kh*kw): one row per window, in (n, row, col) order."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    batch, channels, height, width = x.shape
    out_h, out_w = output_size(height, kh, sh, ph), output_size(width, kw, sw, pw)
    padded = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cols = np.empty((batch, channels, kh, kw, out_h, out_w), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = padded[:, :, i : i + sh * out_h : sh, j : j + sw * out_w : sw]
    return cols.transpose(0, 4, 5, 1, 2, 3).reshape(batch * out_h * out_w, -1)


def col2im(cols, x_shape, kernel, stride, padding):
    """The adjoint of im2col: add every window row of cols back onto an (N, C, H, W) image."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    batch, channels, height, width = x_shape
    out_h, out_w = output_size(height, kh, sh, ph), output_size(width, kw, sw, pw)
    cols = cols.reshape(batch, out_h, out_w, channels, kh, kw).transpose(0, 3, 4, 5, 1, 2)
    padded = np.zeros((batch, channels, height + 2 * ph, width + 2 * pw), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            padded[:, :, i : i + sh * out_h : sh, j : j + sw * out_w : sw] += cols[:, :, i, j]
    return padded[:, :, ph : ph + height, pw : pw + width]


def _positive_int(value, field, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{field} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _pair(value, field, minimum=1):
    """An int or a [height, width] pair of ints, as a tuple (h, w)."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"{field} must be an integer or a [height, width] pair, got {value!r}")
        return (_positive_int(value[0], field, minimum), _positive_int(value[1], field, minimum))
    number = _positive_int(value, field, minimum)
    return (number, number)


def _describe_shape(shape):
    if len(shape) == 3:
        return f"{shape[0]}x{shape[1]}x{shape[2]} feature maps"
    return f"a flat vector of {shape[0]} features"


class Layer:
    """Base class: a layer type with its spec fields (and defaults) and its shapes."""

    kind = ""
    fields: dict[str, Any] = {}

    def __init__(self, spec, input_shape):
        self.spec = dict(spec)
        self.input_shape = tuple(input_shape)
        self.output_shape = self.input_shape

    def param_shapes(self):
        """{"weight": shape, "bias": shape} for layers with parameters, else {}."""
        return {}

    def forward(self, x, params):
        """(out, cache): the output for x and what backward needs."""
        raise NotImplementedError

    def backward(self, dout, cache, params, need_input_grad=True):
        """(dx, grads): the gradient w.r.t. the input (None if not needed) and {"weight": ..}."""
        raise NotImplementedError

    def _need_feature_maps(self):
        if len(self.input_shape) != 3:
            raise ValueError(
                f"{self.kind} needs feature maps (C, H, W) but gets {_describe_shape(self.input_shape)};"
                " put it before flatten"
            )


class Conv2D(Layer):
    """Convolution (PyTorch conv2d): weight (filters, in_channels, kh, kw), bias (filters,)."""

    kind = "conv"
    fields = {"filters": None, "kernel": 3, "stride": 1, "padding": 0, "init": None, "bias_init": None}

    def __init__(self, spec, input_shape):
        super().__init__(spec, input_shape)
        self._need_feature_maps()
        if spec.get("filters") is None:
            raise ValueError("filters is required (number of output channels)")
        self.filters = _positive_int(spec["filters"], "filters")
        self.kernel = _pair(spec["kernel"], "kernel")
        self.stride = _pair(spec["stride"], "stride")
        self.padding = _pair(spec["padding"], "padding", minimum=0)
        channels, height, width = self.input_shape
        padded_h, padded_w = height + 2 * self.padding[0], width + 2 * self.padding[1]
        if self.kernel[0] > padded_h or self.kernel[1] > padded_w:
            kernel_text = (
                f"{self.kernel[0]}" if self.kernel[0] == self.kernel[1] else f"{self.kernel[0]}x{self.kernel[1]}"
            )
            raise ValueError(f"kernel {kernel_text} larger than input {padded_h}x{padded_w}")
        out_h = output_size(height, self.kernel[0], self.stride[0], self.padding[0])
        out_w = output_size(width, self.kernel[1], self.stride[1], self.padding[1])
        self.output_shape = (self.filters, out_h, out_w)

    def param_shapes(self):
        channels = self.input_shape[0]
        return {"weight": (self.filters, channels, *self.kernel), "bias": (self.filters,)}

    def forward(self, x, params):
        cols = im2col(x, self.kernel, self.stride, self.padding)
        out = cols @ params["weight"].reshape(self.filters, -1).T + params["bias"]  # (N*Ho*Wo, F)
        _, out_h, out_w = self.output_shape
        return out.reshape(x.shape[0], out_h, out_w, self.filters).transpose(0, 3, 1, 2), (x.shape, cols)

    def backward(self, dout, cache, params, need_input_grad=True):
        x_shape, cols = cache
        dout = dout.transpose(0, 2, 3, 1).reshape(-1, self.filters)  # (N*Ho*Wo, F)
        weight = params["weight"]
        grads = {"weight": (dout.T @ cols).reshape(weight.shape), "bias": dout.sum(axis=0)}
        if not need_input_grad:
            return None, grads
        dcols = dout @ weight.reshape(self.filters, -1)
        return col2im(dcols, x_shape, self.kernel, self.stride, self.padding), grads


class _Pool(Layer):
    """Pooling over (size) windows moved by (stride), channel by channel, via im2col."""

    fields = {"size": 2, "stride": None}

    def __init__(self, spec, input_shape):
        super().__init__(spec, input_shape)
        self._need_feature_maps()
        self.size = _pair(spec["size"], "size")
        self.stride = self.size if spec["stride"] is None else _pair(spec["stride"], "stride")
        channels, height, width = self.input_shape
        if self.size[0] > height or self.size[1] > width:
            raise ValueError(f"pool size {self.size[0]}x{self.size[1]} larger than input {height}x{width}")
        out_h = output_size(height, self.size[0], self.stride[0], 0)
        out_w = output_size(width, self.size[1], self.stride[1], 0)
        self.output_shape = (channels, out_h, out_w)

    def _windows(self, x):
        """x (N, C, H, W) -> (N*C*Ho*Wo, sh*sw): one row per window of one channel."""
        batch, channels, height, width = x.shape
        return im2col(x.reshape(batch * channels, 1, height, width), self.size, self.stride, (0, 0))

    def _fold(self, dwindows, x_shape):
        """The adjoint of _windows: window rows back onto an (N, C, H, W) image."""
        batch, channels, height, width = x_shape
        return col2im(dwindows, (batch * channels, 1, height, width), self.size, self.stride, (0, 0)).reshape(x_shape)

    def _unflatten(self, values, batch):
        channels, out_h, out_w = self.output_shape
        return values.reshape(batch, channels, out_h, out_w)


class MaxPool2D(_Pool):
    """Max pooling (PyTorch max_pool2d, floor mode); the first maximum of a window takes the
    gradient; stride defaults to the size."""

    kind = "maxpool"

    def forward(self, x, params):
        windows = self._windows(x)
        winners = windows.argmax(axis=1)
        out = windows[np.arange(len(windows)), winners]
        return self._unflatten(out, x.shape[0]), (x.shape, winners)

    def backward(self, dout, cache, params, need_input_grad=True):
        x_shape, winners = cache
        dwindows = np.zeros((len(winners), self.size[0] * self.size[1]), dtype=dout.dtype)
        dwindows[np.arange(len(winners)), winners] = dout.reshape(-1)
        return self._fold(dwindows, x_shape), {}


class AvgPool2D(_Pool):
    """Average pooling (PyTorch avg_pool2d, floor mode); stride defaults to the size."""

    kind = "avgpool"

    def forward(self, x, params):
        return self._unflatten(self._windows(x).mean(axis=1), x.shape[0]), x.shape

    def backward(self, dout, cache, params, need_input_grad=True):
        count = self.size[0] * self.size[1]
        share = np.repeat(dout.reshape(-1, 1) / dout.dtype.type(count), count, axis=1)
        return self._fold(share, cache), {}


class ReLU(Layer):
    """max(x, 0); the gradient passes where the output is positive."""

    kind = "relu"

    def forward(self, x, params):
        out = np.maximum(x, 0)
        return out, out

    def backward(self, dout, cache, params, need_input_grad=True):
        return dout * (cache > 0), {}


class LeakyReLU(Layer):
    """x where x > 0, slope * x elsewhere (slope default 0.01, as PyTorch)."""

    kind = "leaky_relu"
    fields = {"slope": 0.01}

    def __init__(self, spec, input_shape):
        super().__init__(spec, input_shape)
        slope = spec["slope"]
        if isinstance(slope, bool) or not isinstance(slope, (int, float)) or not np.isfinite(slope):
            raise ValueError(f"slope must be a number, got {slope!r}")
        self.slope = float(slope)

    def forward(self, x, params):
        positive = x > 0
        scale = ~positive * x.dtype.type(self.slope)  # slope where x <= 0, else 0 ...
        scale += positive  # ... and exactly 1 where x > 0
        return x * scale, scale

    def backward(self, dout, cache, params, need_input_grad=True):
        return dout * cache, {}


class Tanh(Layer):
    """tanh(x); gradient 1 - tanh(x)^2."""

    kind = "tanh"

    def forward(self, x, params):
        out = np.tanh(x)
        return out, out

    def backward(self, dout, cache, params, need_input_grad=True):
        return dout * (1 - cache * cache), {}


class Sigmoid(Layer):
    """1 / (1 + exp(-x)), computed as (1 + tanh(x/2)) / 2 so it never overflows."""

    kind = "sigmoid"

    def forward(self, x, params):
        half = x.dtype.type(0.5)
        out = half * (np.tanh(half * x) + 1)
        return out, out

    def backward(self, dout, cache, params, need_input_grad=True):
        return dout * cache * (1 - cache), {}


class Flatten(Layer):
    """Feature maps (C, H, W) to a vector of C*H*W features, in PyTorch's (C, H, W) order."""

    kind = "flatten"

    def __init__(self, spec, input_shape):
        super().__init__(spec, input_shape)
        self.output_shape = (int(np.prod(self.input_shape)),)

    def forward(self, x, params):
        return x.reshape(x.shape[0], -1), x.shape

    def backward(self, dout, cache, params, need_input_grad=True):
        return dout.reshape(cache), {}


class Dense(Layer):
    """Fully connected (PyTorch linear): weight (units, in_features), bias (units,)."""

    kind = "dense"
    fields = {"units": None, "init": None, "bias_init": None}

    def __init__(self, spec, input_shape):
        super().__init__(spec, input_shape)
        if len(self.input_shape) != 1:
            raise ValueError(
                f"dense needs a flat vector but gets {_describe_shape(self.input_shape)}; add a flatten layer before it"
            )
        if spec.get("units") is None:
            raise ValueError("units is required (number of outputs)")
        self.units = _positive_int(spec["units"], "units")
        self.output_shape = (self.units,)

    def param_shapes(self):
        return {"weight": (self.units, self.input_shape[0]), "bias": (self.units,)}

    def forward(self, x, params):
        out = x @ params["weight"].T
        out += params["bias"]
        return out, x

    def backward(self, dout, cache, params, need_input_grad=True):
        x = cache
        grads = {"weight": dout.T @ x, "bias": dout.sum(axis=0)}
        dx = dout @ params["weight"] if need_input_grad else None
        return dx, grads


LAYER_TYPES = {cls.kind: cls for cls in (Conv2D, ReLU, LeakyReLU, Tanh, Sigmoid, MaxPool2D, AvgPool2D, Flatten, Dense)}


def make_layer(spec, input_shape):
    """Build the layer for one (already validated for type) spec entry; ValueError on misfit."""
    cls = LAYER_TYPES[spec["type"]]
    return cls(spec, input_shape)
