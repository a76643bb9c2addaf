"""Datasets: the shapes generator, every file loader on good and malformed files, normalisation."""

import gzip
import pickle
import sys
import types

import numpy as np
import pytest
from PIL import Image

from engine import build_model, datasets
from engine.datasets import (
    SHAPE_CLASSES,
    DatasetError,
    digits_dataset,
    generate_shapes,
    known_shape,
    load_cifar10,
    load_dataset,
    load_idx_folder,
    load_image_folder,
    load_shapes,
    load_sklearn_digits,
    make_dataset,
    normalize_dataset_spec,
    read_idx,
    upscale_bilinear,
)

# ---------------------------------------------------------------- shapes


def test_shapes_are_deterministic_for_a_seed_and_differ_between_seeds():
    x1, y1 = generate_shapes(200, seed=7)
    x2, y2 = generate_shapes(200, seed=7)
    x3, _ = generate_shapes(200, seed=8)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert not np.array_equal(x1, x3)


def test_shapes_have_every_class_balanced_with_the_requested_size():
    n = 100 * len(SHAPE_CLASSES)
    x, y = generate_shapes(n, size=32)
    assert x.shape == (n, 1, 32, 32) and x.dtype == np.float32
    assert np.isfinite(x).all()
    assert np.bincount(y, minlength=len(SHAPE_CLASSES)).tolist() == [100] * len(SHAPE_CLASSES)
    assert {
        "x",
        "plus",
        "circle",
        "square",
        "triangle",
        "horizontal_line",
        "vertical_line",
        "diagonal_line",
        "antidiagonal_line",
    } <= set(SHAPE_CLASSES)


def test_shapes_dataset_can_use_chosen_classes_including_small_marks():
    data = load_dataset({"name": "shapes", "n_train": 60, "n_val": 30, "classes": ["x_marks", "plus_marks", "circle"]})
    assert data.classes == ["x_marks", "plus_marks", "circle"] and sorted(set(data.y_train.tolist())) == [0, 1, 2]
    x, y = generate_shapes(40, classes=("x", "x_marks"), noise=0.0)
    big, marks = x[y == 0, 0], x[y == 1, 0]
    # three small glyphs: ink spread over the image, but each glyph is small
    assert (marks > 0.5).sum(axis=(1, 2)).mean() < (big > 0.5).sum(axis=(1, 2)).mean()
    with pytest.raises(ValueError, match="dataset.classes: unknown shape 'star'"):
        normalize_dataset_spec({"name": "shapes", "classes": ["x", "star"]})
    with pytest.raises(ValueError, match="dataset.classes: give at least two"):
        normalize_dataset_spec({"name": "shapes", "classes": ["x"]})


def test_a_class_joined_with_plus_draws_every_part_in_one_image():
    classes = ("vertical_line", "x_marks", "vertical_line+x_marks")
    x, y = generate_shapes(300, seed=4, noise=0.0, classes=classes)
    ink = (x[:, 0] > 0.3).sum(axis=(1, 2))
    line, marks, both = (ink[y == k].mean() for k in range(3))
    assert both > line and both > marks  # the line and the marks, not one of them
    assert both < line + marks + 5  # drawn once each (overlaps only where they cross)
    tallest_column = (x[:, 0] > 0.3).sum(axis=1).max(axis=1)  # the vertical line's ink column
    assert tallest_column[y == 2].mean() > tallest_column[y == 1].mean() + 4
    with pytest.raises(ValueError, match="dataset.classes: unknown shape 'circle\\+star'"):
        normalize_dataset_spec({"name": "shapes", "classes": ["circle+star", "circle"]})


def test_two_kinds_of_marks_in_one_class_are_scattered_apart():
    # a diagonal dash crossing an antidiagonal one would draw an X: the parts keep their distance
    xs, ys = datasets._mark_places(np.random.default_rng(0), 0, 500, 28)
    first, second = (xs[0], ys[0]), (xs[1], ys[1])
    to_first = np.hypot(first[0][:, None] - second[0][None], first[1][:, None] - second[1][None])
    within = np.hypot(second[0][:, None] - second[0][None], second[1][:, None] - second[1][None])
    within = within[np.triu_indices(len(second[0]), 1)]
    assert (to_first < datasets.MARK_SPACING).mean() < 0.01 and (within < datasets.MARK_SPACING).mean() < 0.01
    classes = ("diagonal_line_marks", "antidiagonal_line_marks", "diagonal_line_marks+antidiagonal_line_marks")
    x, y = generate_shapes(150, seed=2, noise=0.0, classes=classes)
    ink = (x[:, 0] > 0.3).sum(axis=(1, 2))
    assert ink[y == 2].mean() > 1.6 * ink[y == 0].mean()  # both kinds, at places of their own
    with pytest.raises(ValueError, match="joins more than 2 kinds of marks"):
        generate_shapes(0, classes=("x_marks+plus_marks+vertical_line_marks", "x_marks"))


def test_filled_shapes_are_solid_and_a_mark_on_them_is_dark():
    x, y = generate_shapes(200, seed=5, noise=0.0, classes=("square", "filled_square"))
    ink = (x[:, 0] > 0.5).sum(axis=(1, 2))
    assert ink[y == 1].mean() > 1.5 * ink[y == 0].mean()  # solid, not an outline
    # the same draws with marks added to the filled class: where a mark lies on the fill it is dark
    marked, same_y = generate_shapes(200, seed=5, noise=0.0, classes=("square", "filled_square+x_marks"))
    np.testing.assert_array_equal(y, same_y)
    plain, drawn = x[y == 1, 0], marked[y == 1, 0]
    erased = ((plain > 0.5) & (drawn < 0.1)).sum(axis=(1, 2))
    added = ((plain < 0.1) & (drawn > 0.5)).sum(axis=(1, 2))
    assert erased.mean() > 3 and added.mean() > 3
    np.testing.assert_array_equal(x[y == 0], marked[y == 0])


def test_marks_dataset_is_the_small_glyph_shapes_under_its_own_name():
    marks = load_dataset({"name": "marks", "n_train": 40, "n_val": 20})
    same = load_dataset({"name": "shapes", "n_train": 40, "n_val": 20, "classes": ["x_marks", "plus_marks"]})
    assert marks.name == "marks" and marks.classes == ["x_marks", "plus_marks"]
    np.testing.assert_array_equal(marks.x_train, same.x_train)
    with pytest.raises(ValueError, match="dataset.size: must be >= 8"):
        normalize_dataset_spec({"name": "marks", "size": 4})


def _ink_moments(image):
    """Variance along x, along y and covariance of the ink in one image (row = y, down)."""
    ink = np.clip(image, 0, None)
    ys, xs = np.mgrid[: ink.shape[0], : ink.shape[1]]
    total = ink.sum()
    mx, my = (ink * xs).sum() / total, (ink * ys).sum() / total
    vxx = (ink * (xs - mx) ** 2).sum() / total
    vyy = (ink * (ys - my) ** 2).sum() / total
    vxy = (ink * (xs - mx) * (ys - my)).sum() / total
    return vxx, vyy, vxy


def test_line_classes_are_drawn_with_their_orientation():
    x, y = generate_shapes(400, seed=3, noise=0.0)
    for image, label in zip(x[:, 0], y):
        vxx, vyy, vxy = _ink_moments(image)
        name = SHAPE_CLASSES[label]
        if name == "vertical_line":
            assert vyy > 4 * vxx
        elif name == "horizontal_line":
            assert vxx > 4 * vyy
        elif name == "diagonal_line":  # "\": y grows with x
            assert vxy > 0.5 * np.sqrt(vxx * vyy)
        elif name == "antidiagonal_line":  # "/"
            assert vxy < -0.5 * np.sqrt(vxx * vyy)
        elif name == "x":  # both diagonals: no net tilt, equal spread
            assert abs(vxy) < 0.35 * np.sqrt(vxx * vyy)


def test_a_large_shapes_set_is_generated_in_one_call():
    x, y = generate_shapes(10000, seed=0)
    assert x.shape == (10000, 1, 28, 28) and len(y) == 10000


def test_shapes_dataset_is_normalised_on_training_split_with_fixed_monitor_and_probes():
    data = load_shapes(n_train=500, n_val=200, seed=1)
    assert data.input_shape == (1, 28, 28) and data.n_classes == len(SHAPE_CLASSES)
    assert abs(float(data.x_train.mean())) < 1e-4
    assert abs(float(data.x_train.std()) - 1.0) < 1e-3
    assert len(data.monitor_x) == 64 and np.array_equal(data.monitor_x, data.x_val[:64])
    assert data.probe_labels == ["x", "plus", "vertical_line", "circle"]
    assert data.probe_x.shape == (4, 1, 28, 28)
    again = load_shapes(n_train=500, n_val=200, seed=1)
    assert np.array_equal(again.probe_x, data.probe_x) and np.array_equal(again.x_train, data.x_train)


def test_validation_split_uses_the_training_statistics():
    rng = np.random.default_rng(0)
    x_train = rng.normal(3.0, 2.0, (100, 2, 4, 4))
    x_val = rng.normal(10.0, 5.0, (50, 2, 4, 4))
    y = np.zeros(100, dtype=int)
    data = make_dataset("t", ["a", "b"], x_train, y, x_val, y[:50])
    mean = x_train.mean(axis=(0, 2, 3))
    std = x_train.std(axis=(0, 2, 3))
    expected = (x_val - mean[None, :, None, None]) / std[None, :, None, None]
    assert np.allclose(data.x_val, expected, atol=1e-4)
    assert np.allclose(data.x_train.mean(axis=(0, 2, 3)), 0, atol=1e-5)


def test_batch_order_is_a_function_of_seed_and_step_and_covers_each_epoch_once():
    data = load_shapes(n_train=100, n_val=20)
    epoch = np.concatenate([data.batch_indices(step, 10, seed=5) for step in range(10)])
    assert sorted(epoch.tolist()) == list(range(100))
    assert np.array_equal(data.batch_indices(3, 10, seed=5), data.batch_indices(3, 10, seed=5))
    assert not np.array_equal(data.batch_indices(3, 10, seed=5), data.batch_indices(3, 10, seed=6))
    crossing = data.batch_indices(3, 30, seed=5)  # examples 90..119 span epochs 0 and 1
    assert len(crossing) == 30


def test_a_batch_is_the_same_whichever_batches_were_asked_before():
    """A restored or forked run asks for its next step's batch after other runs, seeds and epochs
    were drawn (the epoch orders are kept between calls): each batch is still the slice of the
    permutation drawn from (seed, epoch) that the docstring promises, across epoch ends too."""
    data = load_shapes(n_train=100, n_val=20)

    def promised(step, size, seed):
        examples = np.arange(step * size, (step + 1) * size)
        epochs, offsets = np.divmod(examples, 100)
        return np.array([np.random.default_rng([seed, e]).permutation(100)[o] for e, o in zip(epochs, offsets)])

    asked = [(7, 30, 5), (0, 30, 5), (2, 30, 6), (12, 30, 5), (3, 30, 5), (3, 30, 6), (1, 64, 5), (0, 64, 5)]
    for step, size, seed in asked * 2:
        assert np.array_equal(data.batch_indices(step, size, seed), promised(step, size, seed)), (step, size, seed)


# ---------------------------------------------------------------- IDX (MNIST / Fashion-MNIST)


def _idx_bytes(array, type_code=0x08):
    header = bytes([0, 0, type_code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def _write_mnist(folder, n_train=30, n_test=10, gz=False):
    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    folder.mkdir(exist_ok=True)
    for name, array in files.items():
        data = _idx_bytes(array)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return files


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_folder_loads_raw_and_gzip(tmp_path, gz):
    files = _write_mnist(tmp_path / "mnist", gz=gz)
    data = load_dataset({"name": "mnist", "path": str(tmp_path / "mnist")})
    assert data.input_shape == (1, 28, 28) and data.classes == [str(d) for d in range(10)]
    assert len(data.x_train) == 30 and len(data.x_val) == 10
    assert data.y_train.tolist() == files["train-labels-idx1-ubyte"].tolist()
    raw = files["train-images-idx3-ubyte"] / 255.0
    restored = data.x_train[:, 0] * data.std[0] + data.mean[0]
    assert np.allclose(restored, raw, atol=1e-5)


def test_fashion_mnist_without_test_files_holds_out_part_of_training(tmp_path):
    folder = tmp_path / "fashion"
    _write_mnist(folder, n_train=50)
    (folder / "t10k-images-idx3-ubyte").unlink()
    data = load_dataset({"name": "fashion_mnist", "path": str(folder), "val_fraction": 0.2})
    assert len(data.x_train) == 40 and len(data.x_val) == 10
    assert data.classes[0] == "t-shirt"


def test_idx_missing_file_names_it(tmp_path):
    _write_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte: file not found"):
        load_idx_folder(tmp_path)


def test_idx_truncated_file_names_it(tmp_path):
    _write_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte: truncated"):
        load_idx_folder(tmp_path)


def test_idx_wrong_format_and_bad_gzip_name_the_file(tmp_path):
    bad = tmp_path / "not-idx"
    bad.write_bytes(b"PK\x03\x04 this is a zip file")
    with pytest.raises(DatasetError, match="not-idx: not an IDX file"):
        read_idx(bad)
    broken_gz = tmp_path / "images.gz"
    broken_gz.write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(DatasetError, match="images.gz: not a valid gzip file"):
        read_idx(broken_gz)


def test_idx_label_count_mismatch_is_reported(tmp_path):
    _write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.arange(7) % 10))
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte: 7 labels for 10 images"):
        load_idx_folder(tmp_path)


# ---------------------------------------------------------------- CIFAR-10


def _write_cifar_batch(path, n, seed=0):
    rng = np.random.default_rng(seed)
    batch = {b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8), b"labels": [i % 10 for i in range(n)]}
    path.write_bytes(pickle.dumps(batch, protocol=2))
    return batch


def test_cifar10_batches_load_as_colour_images(tmp_path):
    first = _write_cifar_batch(tmp_path / "data_batch_1", 20, seed=1)
    _write_cifar_batch(tmp_path / "data_batch_2", 10, seed=2)
    _write_cifar_batch(tmp_path / "test_batch", 8, seed=3)
    data = load_cifar10(tmp_path)
    assert data.input_shape == (3, 32, 32) and len(data.x_train) == 30 and len(data.x_val) == 8
    assert data.classes[3] == "cat"
    red_plane = first[b"data"][0, :1024].reshape(32, 32) / 255.0
    assert np.allclose(data.x_train[0, 0] * data.std[0] + data.mean[0], red_plane, atol=1e-5)
    gray = load_dataset({"name": "cifar10", "path": str(tmp_path), "grayscale": True})
    assert gray.input_shape == (1, 32, 32)


def test_cifar10_malformed_batches_name_the_file(tmp_path):
    _write_cifar_batch(tmp_path / "data_batch_1", 5)
    with pytest.raises(DatasetError, match="test_batch: file not found"):
        load_cifar10(tmp_path)
    (tmp_path / "test_batch").write_bytes((tmp_path / "data_batch_1").read_bytes()[:50])
    with pytest.raises(DatasetError, match="test_batch: not a CIFAR-10 python batch"):
        load_cifar10(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DatasetError, match=r"test_batch: 'data' must have shape \(N, 3072\)"):
        load_cifar10(tmp_path)


def test_cifar10_loader_refuses_pickles_that_run_code(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    _write_cifar_batch(tmp_path / "data_batch_1", 5)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": Exploit(), b"labels": []}))
    with pytest.raises(DatasetError, match="test_batch: not a CIFAR-10 python batch.*refusing to load builtins.print"):
        load_cifar10(tmp_path)


# ---------------------------------------------------------------- image folder


def _write_images(folder, classes=("cats", "dogs"), per_class=4, size=(10, 10)):
    for index, name in enumerate(classes):
        (folder / name).mkdir(parents=True)
        for k in range(per_class):
            pixels = np.full(size, 40 * index + k, dtype=np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{k}.png")


def test_image_folder_loads_one_class_per_subfolder(tmp_path):
    _write_images(tmp_path)
    data = load_image_folder(tmp_path, val_fraction=0.25)
    assert data.classes == ["cats", "dogs"] and data.input_shape == (1, 10, 10)
    assert len(data.x_train) == 6 and len(data.x_val) == 2
    resized = load_dataset({"name": "image_folder", "path": str(tmp_path), "size": 16, "color": True})
    assert resized.input_shape == (3, 16, 16)


def test_image_folder_unreadable_image_is_named(tmp_path):
    _write_images(tmp_path)
    (tmp_path / "dogs" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="broken.png: cannot read image"):
        load_image_folder(tmp_path)


def test_image_folder_layout_errors_name_the_folder(tmp_path):
    with pytest.raises(DatasetError, match="no class sub-folders"):
        load_image_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty: no .png/.jpg/.jpeg images"):
        load_image_folder(tmp_path)
    with pytest.raises(DatasetError, match="missing: folder not found"):
        load_image_folder(tmp_path / "missing")


def test_image_folder_mixed_sizes_ask_for_a_size(tmp_path):
    _write_images(tmp_path)
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(tmp_path / "dogs" / "big.png")
    with pytest.raises(DatasetError, match="big.png: size .* give dataset.size"):
        load_image_folder(tmp_path)


# ---------------------------------------------------------------- sklearn digits


def test_sklearn_digits_are_scaled_from_their_0_to_16_range_and_upscaled_to_28(monkeypatch):
    images = np.tile(np.arange(64, dtype=float).reshape(8, 8) % 17, (20, 1, 1))
    fake = types.ModuleType("sklearn.datasets")
    fake.load_digits = lambda: types.SimpleNamespace(images=images, target=np.arange(20) % 10)
    monkeypatch.setitem(sys.modules, "sklearn", types.ModuleType("sklearn"))
    monkeypatch.setitem(sys.modules, "sklearn.datasets", fake)
    data = load_sklearn_digits()
    assert data.input_shape == (1, 28, 28) and len(data.x_train) == 16 and len(data.x_val) == 4
    restored = data.x_train[0, 0] * data.std[0] + data.mean[0]
    assert restored.min() >= -1e-5 and restored.max() <= 16 / 16 + 1e-5
    expected = upscale_bilinear(images[:1, None] / 16.0, 28)[0, 0]
    assert np.allclose(restored, expected, atol=1e-5)


def test_digits_upscaling_keeps_each_pixel_in_its_place_and_the_default_model_takes_it():
    images = np.zeros((10, 8, 8))
    images[:, 0, 0] = 16  # a bright top-left pixel ...
    images[:, 5, 6] = 8  # ... and a half-bright one lower right
    data = digits_dataset(images, np.arange(10), val_fraction=0.2)
    assert data.input_shape == (1, 28, 28) and data.n_classes == 10
    big = upscale_bilinear(images[:1, None] / 16.0, 28)[0, 0]
    assert big.shape == (28, 28) and big.min() >= 0 and np.isclose(big.max(), 1.0)
    assert np.unravel_index(np.argmax(big), big.shape) == (0, 0)  # 28/8 = 3.5 pixels per source pixel
    lower = big[10:, 10:]  # source pixel (5, 6) has its centre at (5.5 * 3.5 - 0.5, 6.5 * 3.5 - 0.5) = (18.75, 22.25)
    assert np.unravel_index(np.argmax(lower), lower.shape) == (19 - 10, 22 - 10) and 0.4 < lower.max() <= 0.5
    assert big[14, 2] == 0.0  # far from both bright pixels nothing bleeds in
    flat = upscale_bilinear(np.full((2, 1, 8, 8), 0.25), 28)
    assert np.allclose(flat, 0.25)
    assert known_shape("sklearn_digits") == ([1, 28, 28], 10)
    from engine.trainer import RunConfig

    model = build_model(RunConfig.from_dict({}).model, fast=False)
    assert model.forward(data.x_train[:2]).shape == (2, 10)
    with pytest.raises(ValueError, match="images: expected shape"):
        upscale_bilinear(np.zeros((8, 8)), 28)


def test_sklearn_digits_without_scikit_learn_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(DatasetError, match="scikit-learn is not installed"):
        load_sklearn_digits()


# ---------------------------------------------------------------- specs


def test_dataset_spec_fills_defaults_and_names_bad_fields():
    assert normalize_dataset_spec("shapes") == {"name": "shapes", **datasets.DATASETS["shapes"]["params"]}
    with pytest.raises(ValueError, match="dataset.name: unknown dataset 'imagenet'"):
        normalize_dataset_spec("imagenet")
    with pytest.raises(ValueError, match="dataset.path: required for mnist"):
        normalize_dataset_spec({"name": "mnist"})
    with pytest.raises(ValueError, match="dataset.colour: unknown parameter"):
        normalize_dataset_spec({"name": "shapes", "colour": True})
    with pytest.raises(ValueError, match="dataset.n_train: must be a positive integer"):
        normalize_dataset_spec({"name": "shapes", "n_train": 0})


# ---------------------------------------------------------------- the cache of generated datasets

SMALL_SHAPES = {"name": "shapes", "n_train": 200, "n_val": 80}


def assert_same_dataset(got, expected):
    for name in ("x_train", "y_train", "x_val", "y_val", "mean", "std", "monitor_x", "monitor_y", "probe_x"):
        a, b = getattr(got, name), getattr(expected, name)
        assert type(a) is np.ndarray and a.dtype == b.dtype and a.shape == b.shape, name
        assert np.array_equal(a, b), name  # the same bits: the cache keeps the arrays as they were drawn
    assert (got.name, got.classes, got.probe_labels, got.params) == (
        expected.name,
        expected.classes,
        expected.probe_labels,
        expected.params,
    )


def test_a_generated_dataset_is_kept_once_and_read_back_bit_identical(tmp_path, monkeypatch):
    full = normalize_dataset_spec(SMALL_SHAPES)
    drawn = datasets.open_dataset(full)
    first = datasets.open_dataset(full, cache=tmp_path)  # a miss: drawn here and kept
    assert_same_dataset(first, drawn)
    assert (tmp_path / datasets.cache_key(full) / "dataset.json").is_file()

    def never(**params):
        raise AssertionError("a kept dataset is read, not drawn again")

    monkeypatch.setitem(datasets.DATASETS["shapes"], "loader", never)
    second = datasets.open_dataset(full, cache=tmp_path)
    assert_same_dataset(second, drawn)
    assert not second.x_train.flags.writeable  # read memory-mapped, never written
    batch = second.batch_indices(3, 16, 0)
    assert np.array_equal(second.x_train[batch], drawn.x_train[batch])


def test_each_spec_and_generator_has_its_own_entry_and_a_damaged_one_is_drawn_again(tmp_path):
    full = normalize_dataset_spec(SMALL_SHAPES)
    other = normalize_dataset_spec({**SMALL_SHAPES, "seed": 1})
    marks = normalize_dataset_spec({"name": "marks", "n_train": 200, "n_val": 80})
    assert len({datasets.cache_key(spec) for spec in (full, other, marks)}) == 3
    assert_same_dataset(datasets.open_dataset(other, cache=tmp_path), datasets.open_dataset(other))
    assert_same_dataset(datasets.open_dataset(marks, cache=tmp_path), datasets.open_dataset(marks))
    datasets.open_dataset(full, cache=tmp_path)
    kept = tmp_path / datasets.cache_key(full) / "x_train.npy"
    kept.write_bytes(kept.read_bytes()[:200])  # truncated behind the cache's back
    assert_same_dataset(datasets.open_dataset(full, cache=tmp_path), datasets.open_dataset(full))
    assert kept.stat().st_size > 200  # written whole again


def test_the_cache_keeps_at_most_its_entries_and_an_unwritable_one_costs_only_time(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "CACHE_ENTRIES", 2)
    specs = [normalize_dataset_spec({**SMALL_SHAPES, "n_val": 40, "seed": seed}) for seed in range(3)]
    for spec in specs:
        datasets.open_dataset(spec, cache=tmp_path)
    entries = sorted(entry.name for entry in tmp_path.iterdir() if entry.is_dir())
    assert len(entries) == 2 and datasets.cache_key(specs[2]) in entries
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    assert_same_dataset(datasets.open_dataset(specs[0], cache=blocked / "cache"), datasets.open_dataset(specs[0]))
