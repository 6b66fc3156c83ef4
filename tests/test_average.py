"""Averaging checkpoints (``keras_ckpt.average_checkpoints``, ``keras-ckpt average``): which
checkpoints are chosen (pure, fabricated records), and the averages of real training's."""

import os
import shutil
import uuid
import warnings

import keras
import numpy as np
import pytest

import keras_ckpt
from keras_ckpt import cli
from keras_ckpt.averaging import checkpoints_to_average as checkpoints_in
from keras_ckpt.ranking import checkpoints_to_average
from keras_ckpt.records import CheckpointRecord

# Choosing the checkpoints: pure, over fabricated records ---------------------------------------


def record(epoch, **metrics):
    return CheckpointRecord(
        f"/run/epoch{epoch}.keras", epoch, 10 * epoch, metrics, 0.0, 1, "", "3", "model", ""
    )


RECORDS = [
    record(1, val_loss=0.5, val_accuracy=0.7),
    record(2, val_loss=0.3, val_accuracy=0.8),
    record(3, val_loss=float("nan")),
    record(4, loss=0.1),
    record(5, val_loss=0.3, val_accuracy=0.9),
    record(6, val_loss=0.4, val_accuracy=0.85),
]


@pytest.mark.parametrize(
    ("which", "k", "monitor", "mode", "epochs"),
    [
        ("best", 3, "val_loss", "min", [2, 5, 6]),  # tie at 0.3: the older first
        ("best", 2, "val_accuracy", "max", [5, 6]),
        ("best", 10, "val_loss", "min", [2, 5, 6, 1]),  # NaN and missing are never chosen
        ("latest", 2, "val_loss", None, [6, 5]),
        ("latest", 10, "val_loss", None, [6, 5, 4, 3, 2, 1]),
        ("best", 1, "val_loss", "min", [2]),
    ],
)
def test_checkpoints_to_average_are_the_best_or_newest_k_best_first(
    which, k, monitor, mode, epochs
):
    chosen = checkpoints_to_average(RECORDS, which, k, monitor, mode)
    assert [r.epoch for r in chosen] == epochs


def test_checkpoints_to_average_by_an_absent_metric_is_empty():
    assert checkpoints_to_average(RECORDS, "best", 3, "val_auc", "max") == []
    assert checkpoints_to_average([], "latest", 3, "val_loss", None) == []


# Real checkpoints: one training run per module -------------------------------------------------


def build_model(compile_model=True):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)]
    )
    if compile_model:
        model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse", metrics=["mae"])
    return model


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """``best``: BestCheckpoint top 4 whole models of 8 epochs; ``weights``: the same, weights
    only; ``same``: 3 checkpoints of 3 more epochs at learning rate 0 (identical weights).
    Also the validation data the greedy soup is given (not the training's)."""
    root = tmp_path_factory.mktemp("average")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x @ rng.normal(size=(4, 1)) + 0.3 * rng.normal(size=(64, 1))).astype("float32")
    model = build_model()
    model.fit(
        x[:48],
        y[:48],
        validation_data=(x[48:], y[48:]),
        epochs=8,
        batch_size=8,
        verbose=0,
        callbacks=[
            keras_ckpt.BestCheckpoint(root / "best", top_k=4),
            keras_ckpt.BestCheckpoint(root / "weights", top_k=2, save_weights_only=True),
        ],
    )
    model.optimizer.learning_rate.assign(0.0)
    model.fit(
        x[:48],
        y[:48],
        epochs=3,
        batch_size=8,
        verbose=0,
        callbacks=[keras_ckpt.IntervalCheckpoint(root / "same", every_epochs=1)],
    )
    held_out_x = rng.normal(size=(32, 4)).astype("float32")
    held_out = (held_out_x, (held_out_x @ np.ones((4, 1))).astype("float32"))
    return root, (x[48:], y[48:]), held_out


def float_values(model):
    return [v.numpy() for v in model.variables if "float" in str(v.dtype)]


def loaded(record):
    return keras.saving.load_model(record.path)


def test_averaging_identical_checkpoints_gives_them_back_bit_for_bit(run):
    root, _, _ = run
    records = keras_ckpt.list_checkpoints(root / "same")
    assert len(records) == 3
    expected = float_values(loaded(records[-1]))
    for other in records[:-1]:  # the learning rate was 0: the same weights three times
        for a, b in zip(float_values(loaded(other)), expected, strict=True):
            np.testing.assert_array_equal(a, b)
    # A float32 sum would not do: (x + x + x) / 3 is not x for every float32 x.
    weights = np.concatenate([value.ravel() for value in expected])
    assert np.any((weights + weights + weights) / np.float32(3) != weights)
    average = keras_ckpt.average_checkpoints(root / "same", which="latest", k=3)
    for actual, wanted in zip(float_values(average), expected, strict=True):
        assert actual.dtype == wanted.dtype
        np.testing.assert_array_equal(actual, wanted)


def test_the_average_of_two_is_their_mean_in_float32(run):
    root, _, _ = run
    first, second = checkpoints_in(root / "best", "best", k=2)
    average = keras_ckpt.average_checkpoints(root / "best", which="best", k=2)
    pairs = zip(float_values(loaded(first)), float_values(loaded(second)), strict=True)
    averaged = float_values(average)
    assert len(averaged) == 4
    for (a, b), actual in zip(pairs, averaged, strict=True):
        assert not np.array_equal(a, b)
        np.testing.assert_array_equal(actual, np.mean(np.stack([a, b]), axis=0))
        np.testing.assert_array_equal(actual, (a + b) / np.float32(2))


def test_what_is_not_averaged_comes_from_the_newest(run):
    root, _, _ = run
    # A ranking whose first is not the newest (best first or worst first, as training went on
    # this backend), so that taking the first chosen instead of the newest would fail.
    for k, mode in [(3, "max"), (3, "min"), (4, "max"), (4, "min")]:
        chosen = checkpoints_in(root / "best", "best", k=k, mode=mode)
        newest = max(chosen, key=lambda r: r.step)
        if newest.path != chosen[0].path:
            break
    assert newest.path != chosen[0].path
    average = keras_ckpt.average_checkpoints(root / "best", which="best", k=k, mode=mode)
    assert int(average.optimizer.iterations.numpy()) == newest.step
    for actual, wanted in zip(
        average.optimizer.variables, loaded(newest).optimizer.variables, strict=True
    ):
        np.testing.assert_array_equal(actual.numpy(), wanted.numpy())


def test_batch_normalization_statistics_are_averaged_too(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(3.0, 2.0, size=(16, 4)).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.BatchNormalization(), keras.layers.Dense(1)]
    )
    model.compile(optimizer="sgd", loss="mse")
    callback = keras_ckpt.IntervalCheckpoint(tmp_path / "run", every_epochs=1)
    model.fit(x, x[:, :1], epochs=2, batch_size=8, verbose=0, callbacks=[callback])
    records = keras_ckpt.list_checkpoints(tmp_path / "run")
    average = keras_ckpt.average_checkpoints(tmp_path / "run", "latest", k=2)
    for name in ("moving_mean", "moving_variance"):
        a, b = (getattr(loaded(r).layers[0], name).numpy() for r in records)
        assert not np.array_equal(a, b)
        np.testing.assert_array_equal(getattr(average.layers[0], name).numpy(), (a + b) / 2)


def evaluated_loss(model, data):
    return model.evaluate(*data, verbose=0, return_dict=True)["loss"]


@pytest.mark.parametrize("data", ["validation", "held_out"])
def test_greedy_is_never_worse_than_the_best_single_checkpoint(run, data, capsys):
    root, validation, held_out = run
    data = validation if data == "validation" else held_out
    singles = [evaluated_loss(loaded(r), data) for r in checkpoints_in(root / "best", "best", k=4)]
    soup = keras_ckpt.average_checkpoints(
        root / "best", "best", k=4, greedy=True, validation_data=data, verbose=1
    )
    assert evaluated_loss(soup, data) <= min(singles)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and lines[-1].startswith("average_checkpoints: averaged")
    uniform = keras_ckpt.average_checkpoints(root / "best", "best", k=4)
    assert evaluated_loss(soup, data) <= evaluated_loss(uniform, data)


@pytest.fixture(scope="module")
def oscillating(tmp_path_factory):
    """4 checkpoints of gradient descent with a step so large that the weights jump from one
    side of the optimum to the other: the mean of two neighbours beats either."""
    directory = tmp_path_factory.mktemp("oscillating") / "run"
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5], [3.0]])).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, use_bias=False)])
    model.compile(optimizer=keras.optimizers.SGD(0.95), loss="mse")
    model.fit(
        x,
        y,
        epochs=4,
        batch_size=64,
        verbose=0,
        callbacks=[keras_ckpt.IntervalCheckpoint(directory, every_epochs=1)],
    )
    return directory, (x, y)


def test_greedy_keeps_the_checkpoints_that_improve_the_mean(oscillating, capsys):
    directory, data = oscillating
    records = keras_ckpt.list_checkpoints(directory)
    singles = {r.filename: evaluated_loss(loaded(r), data) for r in records}
    soup = keras_ckpt.average_checkpoints(
        directory, "latest", k=4, greedy=True, validation_data=data, verbose=1
    )
    out = capsys.readouterr().out
    assert "averaged 2 checkpoint(s)" in out.splitlines()[-1]
    assert evaluated_loss(soup, data) < min(singles.values()) / 10
    kept = [r for r in records if r.filename in out.splitlines()[-1]]
    assert len(kept) == 2
    mean = np.mean([loaded(r).layers[0].kernel.numpy() for r in kept], axis=0)
    np.testing.assert_array_equal(soup.layers[0].kernel.numpy(), mean)


def test_greedy_by_a_metric_that_goes_up(run):
    root, validation, _ = run
    soup = keras_ckpt.average_checkpoints(
        root / "best",
        k=3,
        greedy=True,
        validation_data=validation,
        monitor="val_mae",
        mode="min",
    )
    singles = [
        loaded(r).evaluate(*validation, verbose=0, return_dict=True)["mae"]
        for r in checkpoints_in(root / "best", k=3)
    ]
    assert soup.evaluate(*validation, verbose=0, return_dict=True)["mae"] <= min(singles)


def test_the_average_saves_and_loads_in_plain_keras(run, tmp_path):
    root, _, _ = run
    average = keras_ckpt.average_checkpoints(root / "best", k=4)
    average.save(tmp_path / "soup.keras")
    reloaded = keras.saving.load_model(tmp_path / "soup.keras")
    for a, b in zip(float_values(reloaded), float_values(average), strict=True):
        np.testing.assert_array_equal(a, b)


def test_weights_only_checkpoints_need_a_model(run):
    root, _, _ = run
    with pytest.raises(ValueError, match="hold weights only; pass the model"):
        keras_ckpt.average_checkpoints(root / "weights", k=2)
    model = build_model()
    average = keras_ckpt.average_checkpoints(root / "weights", k=2, model=model)
    assert average is model
    whole = keras_ckpt.average_checkpoints(root / "best", k=2)  # the same two, saved whole
    for a, b in zip(float_values(average), float_values(whole), strict=True):
        np.testing.assert_array_equal(a, b)


def test_fewer_checkpoints_than_k_averages_those_with_a_warning(run):
    root, _, _ = run
    with pytest.warns(UserWarning, match=r"k=10, but .* has only 4 checkpoint"):
        average = keras_ckpt.average_checkpoints(root / "best", k=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        every = keras_ckpt.average_checkpoints(root / "best", k=4)
    for a, b in zip(float_values(average), float_values(every), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_remote_directory_is_averaged_through_a_download(run, tmp_path, capsys):
    import fsspec

    root, _, _ = run
    url = f"memory://keras-ckpt-average/{uuid.uuid4().hex[:8]}/best"
    filesystem, base = fsspec.core.url_to_fs(url)
    for name in os.listdir(root / "best"):
        filesystem.pipe_file(f"{base}/{name}", (root / "best" / name).read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # memory:// has no conditional writes
        remote_average = keras_ckpt.average_checkpoints(url, k=3)
    local_average = keras_ckpt.average_checkpoints(root / "best", k=3)
    for a, b in zip(float_values(remote_average), float_values(local_average), strict=True):
        np.testing.assert_array_equal(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, out, err = command(capsys, "average", url, tmp_path / "soup.keras", "--best", "3")
    assert code == 0, err
    written = keras.saving.load_model(tmp_path / "soup.keras")
    for a, b in zip(float_values(written), float_values(local_average), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        ({"which": "worst"}, ValueError, r"Argument `which` must be one of .*which='worst'"),
        ({"k": 0}, ValueError, r"Argument `k` must be a positive integer. Received: k=0"),
        ({"k": True}, TypeError, r"Argument `k` must be a positive integer. Received: k=True"),
        ({"k": 2.5}, TypeError, r"Received: k=2.5"),
        ({"greedy": True}, ValueError, r"`validation_data` is needed with greedy=True"),
        ({"greedy": "yes"}, ValueError, r"Argument `greedy`.*Received: greedy='yes'"),
        ({"mode": "up"}, ValueError, r"Argument `mode` must be one of .*mode='up'"),
        ({"monitor": ""}, ValueError, r"Argument `monitor`"),
        ({"monitor": "val_mae"}, ValueError, r"'val_mae' does not tell whether higher is better"),
        ({"verbose": 2}, ValueError, r"Argument `verbose`"),
        ({"safe_mode": "no"}, ValueError, r"Argument `safe_mode`"),
        ({"monitor": "val_auc", "mode": "max"}, FileNotFoundError, "no checkpoint with the metric"),
    ],
)
def test_bad_arguments_are_refused_before_loading(run, arguments, error, match):
    root, _, _ = run
    with pytest.raises(error, match=match):
        keras_ckpt.average_checkpoints(root / "best", **arguments)


def test_bad_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint directory"):
        keras_ckpt.average_checkpoints(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint to average"):
        keras_ckpt.average_checkpoints(tmp_path / "empty", which="latest")


def test_greedy_needs_a_compiled_model_and_a_metric_evaluate_returns(run):
    root, validation, _ = run
    with pytest.raises(ValueError, match="the model must be compiled"):
        keras_ckpt.average_checkpoints(
            root / "weights",
            k=2,
            greedy=True,
            validation_data=validation,
            model=build_model(compile_model=False),
        )
    with pytest.raises(ValueError, match=r"must name a metric model.evaluate returns .*'mae'"):
        keras_ckpt.average_checkpoints(
            root / "best",
            "latest",
            k=2,
            greedy=True,
            validation_data=validation,
            monitor="val_accuracy",
            mode="max",
        )


# The command line --------------------------------------------------------------------------------


def command(capsys, *argv):
    """``keras-ckpt ARGV`` in this process: (exit status, stdout, stderr)."""
    try:
        code = cli.main([str(arg) for arg in argv])
    except SystemExit as exit_info:  # argparse's errors
        code = exit_info.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_average_writes_a_model_plain_keras_loads(run, tmp_path, capsys):
    root, _, _ = run
    output = tmp_path / "out" / "soup.keras"
    code, out, err = command(capsys, "average", root / "best", output, "--best", "3")
    assert code == 0, err
    chosen = checkpoints_in(root / "best", k=3)
    assert out.count("\n") == 1 and f"averaged 3 checkpoint(s) into {output}" in out
    assert all(r.filename in out for r in chosen)
    written = keras.saving.load_model(output)
    expected = keras_ckpt.average_checkpoints(root / "best", k=3)
    for a, b in zip(float_values(written), float_values(expected), strict=True):
        np.testing.assert_array_equal(a, b)
    assert sorted(os.listdir(output.parent)) == ["soup.keras"]  # no temporary file left

    code, out, err = command(capsys, "average", root / "same", output, "--latest", "3")
    assert code == 2 and "exists; pass --force to replace it" in err
    code, out, err = command(capsys, "average", root / "same", output, "--latest", "9", "--force")
    assert code == 0, err
    assert "averaged 3 checkpoint(s)" in out and "(asked for 9; the directory has only 3)" in out
    replaced = float_values(keras.saving.load_model(output))
    same = float_values(keras_ckpt.load_latest(root / "same"))
    for a, b in zip(replaced, same, strict=True):
        np.testing.assert_array_equal(a, b)


def test_cli_average_refuses_a_damaged_checkpoint(run, tmp_path, capsys):
    root, _, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(root / "best", copy)
    damaged = keras_ckpt.list_checkpoints(copy)[0].path
    with open(damaged, "r+b") as file:
        file.seek(100)
        file.write(b"damaged!" * 2)  # not zeros: a .keras archive's first 512 bytes hold some
    code, out, err = command(capsys, "average", copy, tmp_path / "soup.keras", "--latest", "4")
    assert code == 2 and err.count("\n") == 1, err
    assert os.path.basename(damaged) in err and "Nothing written" in err
    assert not (tmp_path / "soup.keras").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{root}/weights", "{tmp}/w.keras", "--best", "2"], "hold weights only"),
        (["{root}/best", "{tmp}/soup.h5", "--best", "2"], "must end in .keras"),
        (["{root}/best", "memory://x/soup.keras", "--best", "2"], "must be a local path"),
        (["{root}/best", "{tmp}/d.keras", "--best", "2"], "is a directory"),
        (["{root}/best", "{tmp}/s.keras", "--best", "2", "--monitor", "val_auc"], "val_auc"),
        (["{root}/best", "{tmp}/s.keras", "--best", "2", "--monitor", "mae"], "--mode min"),
        (["{tmp}/missing", "{tmp}/s.keras", "--latest", "2"], "no directory at"),
        (["{root}/best", "{tmp}/s.keras"], "one of the arguments --best --latest is required"),
        (["{root}/best", "{tmp}/s.keras", "--best", "1", "--latest", "1"], "not allowed with"),
        (["{root}/best", "{tmp}/s.keras", "--best", "0"], "must be a positive integer"),
    ],
)
def test_cli_average_errors_are_one_line(run, tmp_path, capsys, argv, message):
    root, _, _ = run
    (tmp_path / "d.keras").mkdir()
    argv = [arg.format(root=root, tmp=tmp_path) for arg in argv]
    code, out, err = command(capsys, "average", *argv)
    assert code == 2
    assert err.startswith("keras-ckpt") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["d.keras"]  # nothing written
