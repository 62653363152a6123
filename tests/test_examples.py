"""End-to-end runs of the example scripts on tiny data, on the current backend."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_bernstein

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "examples")
sys.path.insert(0, EXAMPLES)

import _common  # noqa: E402
import certified  # noqa: E402
import depth_sweep  # noqa: E402
import higgs  # noqa: E402
import mnist  # noqa: E402

TINY = ["--depth", "2", "--width", "8", "--degree", "3", "--epochs", "1",
        "--batch-size", "16", "--verbose", "0"]


@pytest.fixture
def mnist_file(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "mnist_tiny.npz"
    np.savez(path,
             x_train=rng.integers(0, 256, (64, 28, 28)).astype("uint8"),
             y_train=rng.integers(0, 10, 64).astype("uint8"),
             x_test=rng.integers(0, 256, (32, 28, 28)).astype("uint8"),
             y_test=rng.integers(0, 10, 32).astype("uint8"))
    return str(path)


@pytest.fixture
def higgs_file(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (120, 1))
    # Heavy-tailed positive columns like the real momenta and masses.
    features = np.abs(rng.standard_cauchy((120, 28))) + labels
    path = tmp_path / "higgs_tiny.csv"
    np.savetxt(path, np.concatenate([labels, features], axis=1), delimiter=",")
    return str(path)


def check_outputs(directory, plots):
    for name in ("model.keras", "metrics.json", "history.csv", *plots):
        assert os.path.getsize(os.path.join(directory, name)) > 0, name
    with open(os.path.join(directory, "history.csv")) as f:
        header = f.readline()
    assert "dead_neuron_ratio" in header and "val_loss" in header
    with open(os.path.join(directory, "metrics.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("architecture", ["cnn", "mlp"])
def test_mnist_end_to_end_and_reload(architecture, mnist_file, tmp_path):
    out = str(tmp_path / "out")
    record = mnist.main(["--data", mnist_file, "--architecture", architecture,
                         "--output-dir", out, *TINY])
    metrics = check_outputs(out, ["training_curves.png", "dead_neuron_ratio.png",
                                  "activations.png"])
    assert metrics["backend"] == keras.backend.backend()
    assert metrics["config"]["architecture"] == architecture
    assert metrics["config"]["width"] == 8 and metrics["data"]["train_size"] == 64
    assert 0.0 <= metrics["dead_neuron_ratio"] <= 1.0
    assert metrics["test_accuracy"] == pytest.approx(record["test_accuracy"])

    model = keras.saving.load_model(os.path.join(out, "model.keras"))
    with np.load(mnist_file) as data:
        images, labels = data["x_test"], data["y_test"]
    probabilities = model.predict(images, verbose=0)  # raw uint8, 0-255
    assert probabilities.shape == (32, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    accuracy = np.mean(probabilities.argmax(axis=1) == labels)
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-6)


def test_mnist_defaults_follow_the_architecture():
    cnn = mnist.make_parser([]).parse_args([])
    mlp = mnist.make_parser(["--architecture", "mlp"]).parse_args(
        ["--architecture", "mlp"])
    assert cnn.architecture == "cnn" and mlp.architecture == "mlp"
    for args in (cnn, mlp):
        expected = mnist.ARCHITECTURE_DEFAULTS[args.architecture]
        assert {key: getattr(args, key) for key in expected} == expected
    # An explicit option wins over the architecture's default.
    argv = ["--architecture", "mlp", "--width", "7"]
    assert mnist.make_parser(argv).parse_args(argv).width == 7


@pytest.mark.parametrize("architecture", ["cnn", "mlp"])
def test_mnist_relu_baseline_has_the_same_shape(architecture):
    argv = ["--architecture", architecture, "--depth", "2", "--width", "8"]
    parsed = mnist.make_parser(argv).parse_args(argv)
    bernstein = mnist.build_model(parsed)
    parsed.activation = "relu"
    relu = mnist.build_model(parsed)
    kernel_shapes = [[tuple(w.shape) for w in m.weights if "kernel" in w.path]
                     for m in (bernstein, relu)]
    assert kernel_shapes[0] == kernel_shapes[1]
    # The dead-neuron monitor sees one activation per hidden block: the
    # per-channel Bernstein layers of the CNN, or the baseline's activations.
    from keras_bernstein.callbacks import monitored_layers

    for model in (bernstein, relu):
        names = [layer.name for layer in monitored_layers(model)]
        prefix = "conv" if architecture == "cnn" else "hidden"
        assert names == [f"{prefix}_1", f"{prefix}_2"]
    if architecture == "cnn":
        activation = bernstein.get_layer("conv_1")
        assert isinstance(activation, keras_bernstein.Bernstein)
        # One curve per channel, shared over the image.
        assert activation.coefficients.shape == (1, 1, 8, parsed.degree + 1)


def test_mnist_relu_baseline_runs(mnist_file, tmp_path):
    record = mnist.main(["--data", mnist_file, "--activation", "relu",
                         "--output-dir", str(tmp_path / "relu"), *TINY])
    assert record["config"]["activation"] == "relu"
    assert record["config"]["architecture"] == "cnn"
    assert not os.path.exists(tmp_path / "relu" / "activations.png")
    with open(tmp_path / "relu" / "history.csv") as f:
        header = f.readline()
    assert "dead_neuron_ratio/conv_1" in header


def test_higgs_end_to_end_and_reload(higgs_file, tmp_path):
    out = str(tmp_path / "out")
    record = higgs.main(["--data", higgs_file, "--output-dir", out, *TINY])
    metrics = check_outputs(out, ["training_curves.png", "dead_neuron_ratio.png",
                                  "activations.png"])
    assert metrics["data"]["train_size"] == 96 and metrics["data"]["test_size"] == 24
    assert 0.0 <= metrics["test_roc_auc"] <= 1.0
    assert record["dead_neuron_ratio"] == metrics["dead_neuron_ratio"]
    # The default is an ensemble of 3, saved as one model.
    assert len(metrics["member_test_roc_auc"]) == 3
    assert os.path.exists(os.path.join(out, "history_member3.csv"))

    model = keras.saving.load_model(os.path.join(out, "model.keras"))
    raw = np.loadtxt(higgs_file, delimiter=",", dtype="float32")[:10, 1:]
    probabilities = model.predict(raw, verbose=0)  # raw, unnormalized features
    assert probabilities.shape == (10, 1)
    assert np.all((probabilities >= 0) & (probabilities <= 1))


def test_higgs_max_rows(higgs_file, tmp_path):
    record = higgs.main(["--data", higgs_file, "--max-rows", "50", "--activation",
                         "selu", "--input-transform", "none", "--ensemble", "1",
                         "--output-dir", str(tmp_path / "out"), *TINY])
    assert record["data"]["train_size"] + record["data"]["test_size"] == 50
    assert "member_test_roc_auc" not in record


@pytest.mark.slow
def test_depth_sweep_writes_table_and_plots(mnist_file, higgs_file, tmp_path):
    out = str(tmp_path / "sweep")
    records = depth_sweep.main([
        "--mnist-data", mnist_file, "--higgs-data", higgs_file, "--depths", "2",
        "--activations", "bernstein,gelu", "--width", "8", "--degree", "3",
        "--mnist-epochs", "1", "--higgs-epochs", "1", "--batch-size", "32",
        "--output-dir", out])
    assert len(records) == 2 * 2
    for record in records:
        assert 0.0 <= record["dead_derivative"] <= 1.0
        assert 0.0 <= record["dead_gradient"] <= 1.0
        assert np.isfinite(record["gradient_norm_ratio"])
        assert record["gradient_norm_ratio"] > 0
    assert "test_roc_auc" in records[-1]
    with open(os.path.join(out, "results.md")) as f:
        table = f.read()
    assert table.count("| 2 | gelu |") == 2
    for dataset in ("mnist", "higgs"):
        assert os.path.getsize(os.path.join(out, f"depth_sweep_{dataset}.png")) > 0
    # --table-only rebuilds from results.jsonl without training.
    assert len(depth_sweep.main(["--table-only", "--output-dir", out])) == 4


@pytest.mark.slow
def test_depth_sweep_without_normalization_and_monotone(mnist_file, tmp_path):
    out = str(tmp_path / "sweep")
    records = depth_sweep.main([
        "--datasets", "mnist", "--mnist-data", mnist_file, "--depths", "2",
        "--normalizations", "none", "--activations", "monotone_bernstein,relu",
        "--learning-rates", "1e-3,1e-2", "--seeds", "0,1", "--min-gap", "0.05",
        "--width", "8", "--degree", "3", "--mnist-epochs", "2", "--batch-size", "32",
        "--output-dir", out])
    assert len(records) == 2 * 2 * 2
    assert {(r["learning_rate"], r["seed"]) for r in records} == {
        (1e-3, 0), (1e-3, 1), (1e-2, 0), (1e-2, 1)}
    for record in records:
        assert record["normalization"] == "none"
        for key in ("dead_derivative_per_epoch", "dead_gradient_per_epoch", "train_loss"):
            assert len(record[key]) == 2
        assert record["dead_derivative"] == record["dead_derivative_per_epoch"][-1]
        assert 0.0 <= record["dead_gradient_initial"] <= 1.0
        assert record["gradient_norm_ratio_initial"] > 0
    monotone = [r for r in records if r["activation"] == "monotone_bernstein"]
    for record in monotone:
        # The theorem: slope >= degree * min_gap / (u - l) everywhere, so no
        # unit can be dead by the derivative criterion.
        assert record["certified_min_slope"] >= 3 * 0.05 / 6.0 * (1 - 1e-6)
        assert record["monotone_fraction"] == 1.0
        assert record["certificate_domain"] == "all real inputs"
        assert record["dead_derivative"] == 0.0
        assert record["min_gap"] == 0.05
    assert all("certified_min_slope" not in r for r in records
               if r["activation"] == "relu")
    with open(os.path.join(out, "results.md")) as f:
        table = f.read()
    assert table.count("Dense → activation, no normalization") == 2
    rows = [line for line in table.splitlines()
            if line.startswith("| 2 | monotone_bernstein |")]
    assert len(rows) == 2  # one table per learning rate
    for row in rows:
        assert row.split(" | ")[3] == "0.0%"  # dead by the derivative criterion
    assert os.path.getsize(os.path.join(out, "depth_sweep_mnist.png")) > 0


def test_depth_sweep_blocks_follow_the_normalization():
    plain = _common.hidden_block("relu", 4, 3, 0.0, "hidden_1", normalization=None)
    assert [type(layer).__name__ for layer in plain] == ["Dense", "Activation"]
    assert plain[0].use_bias
    normalized = _common.hidden_block("gelu", 4, 3, 0.0, "hidden_1")
    assert [type(layer).__name__ for layer in normalized] == [
        "Dense", "BatchNormalization", "Activation"]
    (monotone,) = _common.hidden_block("monotone_bernstein", 4, 3, 0.0, "hidden_1",
                                       normalization=None, min_gap=0.1)
    assert monotone.normalization is None and monotone.use_bias
    constraint = monotone.bernstein.coefficient_constraint
    assert isinstance(constraint, keras_bernstein.constraints.MonotonicCoefficients)
    assert constraint.min_gap == 0.1
    (plain_bernstein,) = _common.hidden_block("bernstein", 4, 3, 0.0, "hidden_1")
    assert plain_bernstein.bernstein.coefficient_constraint is None
    (identity,) = _common.hidden_block("bernstein", 4, 3, 0.0, "hidden_1",
                                       coefficient_initializer="identity")
    identity.build((None, 2))
    # The activation starts as sigma(x) = x: coefficients on the line.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(identity.bernstein.coefficients),
                               np.tile(np.linspace(-3, 3, 4), (4, 1)), atol=1e-6)


def test_depth_sweep_labels_a_non_default_initial_shape():
    records = [{"dataset": "mnist", "depth": 8, "activation": "bernstein",
                "coefficient_initializer": init, "normalization": "none",
                "learning_rate": 1e-3} for init in ("relu", "identity")]
    records.append({**records[0], "activation": "relu", "coefficient_initializer": None})
    labels = [key[4] for key in depth_sweep._cells(records)]
    assert sorted(labels, key=depth_sweep._order) == [
        "bernstein", "bernstein (identity init)", "relu"]


@pytest.mark.parametrize("argv, message", [
    (["--normalizations", "layer"], "takes values in ('batch', 'none'). Received: layer"),
    (["--activations", "relu,swish"], "Received: swish"),
    (["--learning-rates", "1e-3,0"], "--learning-rates must be > 0"),
    (["--depths", "0"], "--depths must be > 0"),
    (["--min-gap", "-0.1"], "--min-gap must be a finite number >= 0. Received: -0.1"),
    (["--min-gap", "nan"], "--min-gap must be a finite number >= 0"),
    (["--seeds", ","], "needs at least one value"),
])
def test_depth_sweep_rejects_bad_options(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit):
        depth_sweep.main([*argv, "--output-dir", str(tmp_path)])
    assert message in capsys.readouterr().err


def test_depth_sweep_cells_show_mean_and_range_over_seeds():
    assert depth_sweep._spread([0.5, 0.7, 0.6], depth_sweep._four_decimals) == (
        "0.6000 [0.5000, 0.7000]")
    assert depth_sweep._spread([0.0, 0.0], depth_sweep._percent) == "0.0%"
    assert depth_sweep._spread([0.91], depth_sweep._four_decimals) == "0.9100"
    assert depth_sweep._spread([None], depth_sweep._three_digits) == "–"
    assert depth_sweep._spread([0.5, float("nan")], depth_sweep._four_decimals) == (
        "0.5000 (1/2 not finite)")
    assert depth_sweep._spread([float("nan")] * 2, depth_sweep._percent) == "2/2 not finite"


def test_depth_sweep_counts_blown_up_runs_as_diverged():
    def record(dataset, final_loss):
        return {"dataset": dataset, "train_loss": [2.0, final_loss]}

    assert not depth_sweep.diverged(record("mnist", 2.31))  # stuck at chance
    assert depth_sweep.diverged(record("mnist", 14.5))  # saturated softmax
    assert depth_sweep.diverged(record("higgs", float("nan")))
    assert not depth_sweep.diverged(record("higgs", 0.69))
    assert depth_sweep.diverged(record("higgs", 8.5))
    assert not depth_sweep.diverged({"dataset": "mnist"})  # final figures only


def test_results_page_tables_match_the_shipped_depth_sweep_records(tmp_path):
    # Every row of the tables in docs/results.md is what depth_sweep makes
    # of the records shipped beside it.
    docs = os.path.join(os.path.dirname(EXAMPLES), "docs")
    records = depth_sweep.read_records(
        os.path.join(docs, "data", "depth_sweep_normalization.jsonl"))
    assert len(records) == 336
    with open(os.path.join(docs, "results.md")) as f:
        page = f.read()
    rows = [line for line in depth_sweep.write_table(records, str(tmp_path / "t.md"))
            .splitlines() if line.startswith("| ") and line[2].isdigit()]
    # The rows of the identity-initialized runs at 1e-2 are summarized in a
    # sentence instead (all diverged).
    shown = [row for row in rows if row in page]
    missing = [row for row in rows if row not in page]
    # One row per cell: 72 without normalization, 12 identity-initialized at
    # 1e-3, 36 with BatchNorm.
    assert len(shown) == 72 + 12 + 36
    assert len(missing) == 12
    assert all("identity init" in row and "| 2/2 |" in row for row in missing)


def test_gradient_norm_ratio_of_a_vanishing_network():
    # A deep sigmoid stack without normalization: gradients shrink towards the
    # input, so the ratio first/last is far below 1.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    x = inputs
    for i in range(8):
        x = keras.layers.Dense(16, name=f"hidden_{i + 1}_dense")(x)
        x = keras.layers.Activation("sigmoid", name=f"hidden_{i + 1}")(x)
    model = keras.Model(inputs, keras.layers.Dense(1)(x))
    model.compile(loss="mse")
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = np.ones((32, 1), "float32")
    assert depth_sweep.gradient_norm_ratio(model, x, y) < 0.01


def test_roc_auc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    scores = np.round(rng.normal(size=60) + labels, 1)  # with ties
    positives, negatives = scores[labels == 1], scores[labels == 0]
    diff = positives[:, None] - negatives[None, :]
    expected = np.mean((diff > 0) + 0.5 * (diff == 0))
    assert _common.roc_auc(labels, scores) == pytest.approx(expected)


@pytest.mark.parametrize("argv, message", [
    (["--depth", "0"], "--depth must be >= 1"),
    (["--dropout", "1.0"], "--dropout must be in"),
    # The default CNN: rejected before any data is loaded or model built.
    (["--depth", "16"], "--depth must be <= 4 with --architecture cnn (each "
     "conv block halves the 28x28 image: 28, 14, 7, 3, 1); pass --architecture "
     "mlp for deeper networks. Received: depth=16"),
])
def test_bad_options_are_rejected(argv, message, capsys):
    with pytest.raises(SystemExit):
        mnist.main(argv)
    assert message in capsys.readouterr().err


def test_mnist_cnn_depth_is_limited_by_the_image_size():
    assert [_common.max_cnn_depth(size) for size in (1, 2, 3, 7, 28, 32)] == [
        0, 1, 1, 2, 4, 5]
    argv = ["--depth", "4", "--width", "4", "--activation", "relu"]
    args = mnist.make_parser(argv).parse_args(argv)
    assert mnist.build_model(args).output_shape == (None, 10)
    args.depth = 5
    with pytest.raises(ValueError, match="Received: depth=5"):
        mnist.build_model(args)
    # An MLP has no such limit.
    argv = ["--architecture", "mlp", "--depth", "16"]
    parser = mnist.make_parser(argv)
    mnist.check_args(parser, parser.parse_args(argv))


def test_mnist_pooling_option_help_matches_its_default():
    parser = mnist.make_parser([])
    assert parser.parse_args([]).pool_first
    assert not parser.parse_args(["--activation-before-pooling"]).pool_first
    text = " ".join(parser.format_help().split())
    assert ("--activation-before-pooling CNN: activation, then max pooling (sets "
            "pool_first=False); default pool_first=True: max pooling, then the "
            "activation") in text


@pytest.mark.skipif(keras.backend.backend() == "jax",
                    reason="--distribute is supported on JAX (tested below)")
def test_distribute_is_refused_off_jax(mnist_file, tmp_path):
    with pytest.raises(SystemExit, match="JAX backend only"):
        mnist.main(["--data", mnist_file, "--distribute",
                    "--output-dir", str(tmp_path), *TINY])


@pytest.mark.slow
@pytest.mark.skipif(keras.backend.backend() != "jax",
                    reason="keras.distribution.DataParallel is JAX-only")
def test_distribute_over_two_cpu_devices(mnist_file, tmp_path):
    out = str(tmp_path / "out")
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    subprocess.run([sys.executable, os.path.join(EXAMPLES, "mnist.py"),
                    "--data", mnist_file, "--distribute", "--output-dir", out, *TINY],
                   env=env, check=True, capture_output=True, timeout=300)
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    assert len(metrics["devices"]) == 2 and metrics["config"]["distribute"]


HIGGS_SAMPLE = os.path.join(os.path.dirname(EXAMPLES), "..", "shared", "data", "higgs",
                            "higgs_sample_11k.csv.gz")


@pytest.mark.slow
def test_higgs_default_ensemble_finishes_on_jax(tmp_path):
    """The default model (an ensemble of 3 branches of width 256, one epoch)
    trains and predicts on JAX with XLA's default intra-op threads, where
    the branches' kernels run at once on one pool: in a subprocess, so that
    a deadlock fails instead of hanging the suite."""
    if keras.backend.backend() != "jax":
        pytest.skip("XLA runs the ensemble's branches at once on JAX")
    if not os.path.exists(HIGGS_SAMPLE):
        pytest.skip("../shared/data (the project's offline real data) is not present")
    env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
    env.pop("OMP_NUM_THREADS", None)
    command = [sys.executable, os.path.join(EXAMPLES, "higgs.py"), "--data", HIGGS_SAMPLE,
               "--max-rows", "3000", "--epochs", "1", "--verbose", "0",
               "--output-dir", str(tmp_path)]
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        pytest.fail("examples/higgs.py did not finish within 900 s")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "metrics.json") as f:
        assert len(json.load(f)["member_test_roc_auc"]) == 3


@pytest.mark.parametrize("activation", ["bernstein", "relu"])
def test_certified_end_to_end_and_reload(activation, mnist_file, tmp_path):
    out = str(tmp_path / "out")
    record = certified.main([
        "--data", mnist_file, "--activation", activation, "--epsilon", "0.05",
        "--report-epsilons", "0.2", "--epochs", "2", "--warmup-epochs", "0.5",
        "--ramp-epochs", "1", "--batch-size", "32", "--pgd-steps", "3",
        "--degree", "3", "--output-dir", out, "--verbose", "0"])
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["evaluation_size"] == 32 and metrics["train_size"] == 64
    for values in (metrics, metrics["by_epsilon"]["0.2"]):
        assert (values["certified_accuracy"] <= values["pgd_accuracy"]
                <= values["clean_accuracy"])
    assert metrics["clean_accuracy"] == record["clean_accuracy"]

    model = keras.saving.load_model(os.path.join(out, "model.keras"))
    with np.load(mnist_file) as data:
        images, labels = data["x_test"] / 255.0, data["y_test"]  # pixels in [0, 1]
    probabilities = model.predict(images, verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    accuracy = np.mean(probabilities.argmax(axis=1) == labels)
    assert accuracy == pytest.approx(metrics["clean_accuracy"], abs=1e-6)
    certificates = keras_bernstein.verification.certified_accuracy(
        model, images, labels, 0.05)
    assert certificates == pytest.approx(metrics["certified_accuracy"], abs=1e-6)


def test_certified_relu_baseline_has_the_same_shape():
    parser = certified.make_parser()
    shapes = {}
    for activation in certified.ACTIVATIONS:
        args = parser.parse_args(["--activation", activation])
        certified.check_args(parser, args)
        model = certified.build_model(args)
        shapes[activation] = [tuple(layer.output.shape) for layer in model.layers]
    assert shapes["bernstein"] == shapes["relu"]
    assert args.train_epsilon == pytest.approx(0.2)
