"""load_best, load_latest and load_checkpoint: safe_mode and custom_objects reach Keras."""

import hashlib
import io
import json
import re
import uuid
import zipfile

import keras
import numpy as np
import pytest
from keras.src.utils import python_utils

import keras_ckpt
from keras_ckpt import loading
from keras_ckpt.store import MANIFEST_NAME, CheckpointCorruptedError


class Doubler(keras.layers.Layer):
    """A custom layer registered nowhere: Keras finds it only through custom_objects."""

    def call(self, inputs):
        return inputs * 2


def train_best(directory, data, last_layer):
    """One epoch of real training of Dense(1) then ``last_layer``, kept by BestCheckpoint."""
    x, y = data
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, name="dense"), last_layer])
    model.compile(optimizer="adam", loss="mse")
    model.fit(
        x,
        y,
        validation_data=(x[:32], y[:32]),
        epochs=1,
        batch_size=32,
        verbose=0,
        callbacks=[keras_ckpt.BestCheckpoint(directory)],
    )
    return model


@pytest.fixture
def lambda_directory(tmp_path, data):
    train_best(tmp_path, data, keras.layers.Lambda(lambda x: x * 2))
    return tmp_path


@pytest.fixture
def func_load_calls(monkeypatch):
    """Every call of the Keras function that turns a saved Lambda's bytecode into a function."""
    calls = []
    real = python_utils.func_load

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(python_utils, "func_load", spy)
    return calls


def test_a_lambda_checkpoint_is_refused_by_default(lambda_directory, func_load_calls):
    with pytest.raises(ValueError, match="safe_mode=False"):
        keras_ckpt.load_best(lambda_directory)
    assert func_load_calls == []  # the saved bytecode was never turned into a function


def test_a_lambda_checkpoint_loads_with_safe_mode_false(lambda_directory, data, func_load_calls):
    x, _ = data
    model = keras_ckpt.load_best(lambda_directory, safe_mode=False)
    assert func_load_calls  # the lambda came from its saved bytecode
    dense = model.get_layer("dense")
    np.testing.assert_allclose(
        model.predict(x, verbose=0),
        2 * keras.ops.convert_to_numpy(dense(x)),
        rtol=1e-6,
        atol=1e-6,
    )
    record = keras_ckpt.best_checkpoint(lambda_directory)
    with pytest.raises(ValueError, match="safe_mode=False"):
        keras_ckpt.load_checkpoint(record)
    assert keras_ckpt.load_checkpoint(record, safe_mode=False).get_layer("dense") is not None


def test_a_custom_layer_loads_with_custom_objects(tmp_path, data):
    x, _ = data
    train_best(tmp_path, data, Doubler(name="doubler"))
    # keras_ckpt refuses the unknown module (test_loading) before Keras could import it.
    # Keras raises TypeError for a class it cannot find; keras_ckpt's clearer error is one too.
    with pytest.raises(TypeError, match="module 'test_loading' .*'Doubler'"):
        keras_ckpt.load_best(tmp_path)
    model = keras_ckpt.load_best(tmp_path, custom_objects={"Doubler": Doubler})
    assert isinstance(model.get_layer("doubler"), Doubler)
    dense = model.get_layer("dense")
    np.testing.assert_allclose(
        model.predict(x, verbose=0),
        2 * keras.ops.convert_to_numpy(dense(x)),
        rtol=1e-6,
        atol=1e-6,
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"safe_mode": 1}, "Argument `safe_mode` must be True or False. Received: safe_mode=1"),
        ({"safe_mode": None}, "Received: safe_mode=None"),
        ({"custom_objects": [Doubler]}, "Argument `custom_objects` must be a dict"),
        ({"custom_objects": "Doubler"}, "Received: custom_objects='Doubler'"),
    ],
)
@pytest.mark.parametrize("loader", ["load_best", "load_latest", "load_checkpoint"])
def test_load_options_are_checked_before_anything_is_read(tmp_path, loader, kwargs, message):
    target = tmp_path / "missing" if loader != "load_checkpoint" else None
    with pytest.raises(ValueError, match=re.escape(message)):
        getattr(keras_ckpt, loader)(target, **kwargs)


# Modules named in config.json (Keras before 3.9 imports them even with safe_mode=True) ------


@keras.saving.register_keras_serializable(package="keras_ckpt_tests")
class Tripler(keras.layers.Layer):
    """A custom layer registered with Keras: found by its registered name, nothing imported."""

    def call(self, inputs):
        return inputs * 3


def rewrite_config(record, change):
    """Rewrites the checkpoint's config.json with ``change(config)`` in place (the ``best``
    hard link sees it too) and records the new size and SHA-256 in the manifest, as a hostile
    directory would be made."""
    with zipfile.ZipFile(record.path) as original:
        members = {info.filename: original.read(info) for info in original.infolist()}
    config = json.loads(members["config.json"])
    change(config)
    members["config.json"] = json.dumps(config).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    raw = buffer.getvalue()
    with open(record.path, "wb") as file:
        file.write(raw)
    manifest_path = f"{record.path.rsplit('/', 1)[0]}/{MANIFEST_NAME}"
    with open(manifest_path) as file:
        manifest = json.load(file)
    for entry in manifest["checkpoints"]:
        if entry["file"] == record.filename:
            entry["size"], entry["sha256"] = len(raw), hashlib.sha256(raw).hexdigest()
    with open(manifest_path, "w") as file:
        json.dump(manifest, file)


@pytest.fixture
def planted_module(tmp_path, monkeypatch):
    """A module on sys.path that creates a marker file when imported: (name, marker)."""
    name = f"keras_ckpt_planted_{uuid.uuid4().hex}"
    marker = tmp_path / "imported"
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / f"{name}.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "import keras\n\n\n"
        "class Doubler(keras.layers.Layer):\n"
        "    def call(self, inputs):\n"
        "        return inputs * 2\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "modules"))
    return name, marker


def point_at(module, registered_name=None):
    """A config change: the Doubler layer's entry names ``module``."""

    def change(config):
        for layer in config["config"]["layers"]:
            if layer["class_name"] == "Doubler":
                layer["module"] = module
                if registered_name is not None:
                    layer["registered_name"] = registered_name

    return change


@pytest.mark.parametrize("loader", ["load_best", "load_checkpoint"])
def test_a_config_naming_a_module_outside_keras_is_refused_before_it_is_imported(
    tmp_path, data, planted_module, loader
):
    name, marker = planted_module
    directory = tmp_path / "run"
    train_best(directory, data, Doubler(name="doubler"))
    record = keras_ckpt.best_checkpoint(directory)
    rewrite_config(record, point_at(name))
    target = directory if loader == "load_best" else keras_ckpt.best_checkpoint(directory)
    with pytest.raises(ValueError, match=f"{re.escape(record.path)}.*module '{name}'"):
        getattr(keras_ckpt, loader)(target)
    # custom_objects under another name does not make the module trusted.
    with pytest.raises(ValueError, match=f"module '{name}'"):
        getattr(keras_ckpt, loader)(target, custom_objects={"Tripler": Tripler})
    assert not marker.exists()  # the module's code never ran
    # With the class given, Keras finds it without importing anything: the model loads.
    model = getattr(keras_ckpt, loader)(target, custom_objects={"Doubler": Doubler})
    assert isinstance(model.get_layer("doubler"), Doubler)
    assert not marker.exists()


def test_a_registered_name_is_looked_up_as_keras_looks_it_up(tmp_path, data, planted_module):
    # The class name is in custom_objects but the entry's registered name is not: Keras (before
    # 3.9) looks up only the registered name, misses, and imports the module. So it is refused.
    name, marker = planted_module
    train_best(tmp_path, data, Doubler(name="doubler"))
    rewrite_config(keras_ckpt.best_checkpoint(tmp_path), point_at(name, "elsewhere>Doubler"))
    with pytest.raises(ValueError, match=f"module '{name}'"):
        keras_ckpt.load_best(tmp_path, custom_objects={"Doubler": Doubler})
    assert not marker.exists()


def test_plain_and_registered_custom_checkpoints_still_load(tmp_path, data):
    x, _ = data
    train_best(tmp_path / "plain", data, keras.layers.Dense(1, name="second"))
    plain = keras_ckpt.load_best(tmp_path / "plain")
    assert plain.get_layer("second") is not None
    train_best(tmp_path / "registered", data, Tripler(name="tripler"))
    model = keras_ckpt.load_best(tmp_path / "registered")  # no custom_objects: registered
    assert isinstance(model.get_layer("tripler"), Tripler)
    np.testing.assert_allclose(
        model.predict(x, verbose=0),
        3 * keras.ops.convert_to_numpy(model.get_layer("dense")(x)),
        rtol=1e-6,
        atol=1e-6,
    )


def write_archive(path, config, size=None):
    """A .keras-like archive holding only ``config`` as config.json."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps(config) if size is None else "x" * size)
    return str(path)


@pytest.mark.parametrize(
    "entry, refused",
    [
        ({"module": "keras.layers", "class_name": "Dense"}, None),
        ({"module": "keras_hub.models", "class_name": "Backbone"}, None),
        # How Keras saves its own functions (a loss passed as a function): found in Keras.
        ({"module": "builtins", "class_name": "function", "config": "mean_squared_error"}, None),
        # Keras 3.5 hands out any other builtin (exec, eval) by name; Keras 3.15 imports none.
        ({"module": "builtins", "class_name": "function", "config": "exec"}, "'builtins'"),
        (
            {"module": "builtins", "class_name": "builtin_function_or_method", "config": "max"},
            "'builtins'",
        ),
        ({"module": None, "class_name": "Dense"}, None),
        ({"module": "os", "class_name": "function", "config": "system"}, "'os'"),
        ({"module": "kerasx.layers", "class_name": "Dense"}, "'kerasx.layers'"),
        ({"module": "subprocess", "class_name": "Popen", "registered_name": None}, "subprocess"),
        ({"module": ["os"], "class_name": "Dense"}, "not a string"),
        # A registered object is found by Keras before any import, wherever its module is.
        (
            {
                "module": "elsewhere",
                "class_name": "X",
                "registered_name": "keras_ckpt_tests>Tripler",
            },
            None,
        ),
    ],
)
def test_every_module_in_the_config_is_checked(tmp_path, entry, refused):
    # Nested deeply: every level is searched.
    layers = json.dumps({"class_name": "Sequential", "config": {"layers": [entry]}})
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", '{"inner": [' * 300 + layers + "]}" * 300)
    path = str(path)
    if refused is None:
        loading.check_config_modules(path)
    else:
        with pytest.raises(ValueError, match=re.escape(refused)):
            loading.check_config_modules(path)


def test_an_archive_that_cannot_be_checked_is_refused(tmp_path, monkeypatch):
    not_zip = tmp_path / "not.keras"
    not_zip.write_bytes(b"PK but not a zip")
    with pytest.raises(CheckpointCorruptedError, match="not a .keras archive"):
        loading.check_config_modules(str(not_zip))
    with zipfile.ZipFile(tmp_path / "empty.keras", "w") as archive:
        archive.writestr("metadata.json", "{}")
    with pytest.raises(CheckpointCorruptedError, match="readable config.json"):
        loading.check_config_modules(str(tmp_path / "empty.keras"))
    monkeypatch.setattr(loading, "MAX_CONFIG_BYTES", 100)
    with pytest.raises(CheckpointCorruptedError, match="over the 100"):
        loading.check_config_modules(write_archive(tmp_path / "big.keras", None, size=101))
    bad_json = write_archive(tmp_path / "bad.keras", None, size=10)
    with pytest.raises(CheckpointCorruptedError, match="not valid JSON"):
        loading.check_config_modules(bad_json)
    (tmp_path / "link.keras").symlink_to(bad_json)
    with pytest.raises(CheckpointCorruptedError, match="symbolic link"):
        loading.check_config_modules(str(tmp_path / "link.keras"))


def fabricated_directory(directory, losses):
    """A committed directory whose checkpoints have these ``val_loss`` values (tiny files)."""
    from keras_ckpt.store import CheckpointStore

    store = CheckpointStore(str(directory))
    for epoch, loss in enumerate(losses):
        metrics = {} if loss is None else {"val_loss": loss}

        def write(path, epoch=epoch):
            with open(path, "w") as file:
                file.write(str(epoch))

        store.commit(
            f"e{epoch}.keras",
            write,
            epoch=epoch,
            step=epoch,
            metrics=metrics,
            kind="model",
            run="r1",
            keeper="ModelCheckpoint",
        )
    store.close()


@pytest.mark.parametrize(
    ("losses", "mode", "best"),
    [
        ([0.5, 0.3, 0.4], "auto", "e1.keras"),
        ([0.5, 0.3, 0.4], "max", "e0.keras"),
        ([0.5, float("nan"), 0.4, None], "min", "e2.keras"),
        ([0.3, 0.3], "min", "e0.keras"),  # a tie goes to the older
    ],
)
def test_best_checkpoint_ranks_by_a_metric_without_the_alias(tmp_path, losses, mode, best):
    fabricated_directory(tmp_path, losses)
    with pytest.raises(FileNotFoundError, match="no best checkpoint.*pass `monitor`"):
        keras_ckpt.best_checkpoint(tmp_path)
    assert keras_ckpt.best_checkpoint(tmp_path, monitor="val_loss", mode=mode).filename == best


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        (
            {"monitor": "accuracy", "mode": "max"},
            FileNotFoundError,
            "no checkpoint with the metric",
        ),
        ({"monitor": "score"}, ValueError, "does not tell whether higher is better"),
        ({"monitor": "val_loss", "mode": "mx"}, ValueError, "Received: mode='mx'"),
        ({"monitor": ""}, ValueError, "monitor"),
    ],
)
def test_best_checkpoint_by_a_metric_refuses_what_it_cannot_rank(
    tmp_path, arguments, error, message
):
    fabricated_directory(tmp_path, [0.5])
    with pytest.raises(error, match=message):
        keras_ckpt.best_checkpoint(tmp_path, **arguments)


def legacy_model_file(path, model_config, training_config=None):
    """An HDF5 file with the attributes a legacy ``.h5`` model keeps its configuration in."""
    import h5py

    with h5py.File(path, "w") as file:
        file.attrs["model_config"] = json.dumps(model_config)
        if training_config is not None:
            file.attrs["training_config"] = json.dumps(training_config)
    return str(path)


HARMLESS = {"class_name": "Sequential", "config": {"layers": []}}
EVIL = {"module": "keras_ckpt_planted", "class_name": "function", "config": "run"}


def test_a_file_is_checked_as_the_format_its_name_says(tmp_path):
    # An HDF5 file with a harmless model, with a zip archive holding an evil config appended:
    # Keras opens a .keras name as a zip archive, so that is what must be checked.
    path = legacy_model_file(tmp_path / "model.keras", HARMLESS)
    appended = io.BytesIO()
    with zipfile.ZipFile(appended, "w") as archive:
        archive.writestr("config.json", json.dumps({"config": {"layers": [EVIL]}}))
    with open(path, "ab") as file:
        file.write(appended.getvalue())
    with zipfile.ZipFile(path) as archive:  # a zip archive too, as Keras would open it
        assert "config.json" in archive.namelist()
    with pytest.raises(ValueError, match="'keras_ckpt_planted'"):
        loading.check_config_modules(path)
    other = tmp_path / "model.bin"
    other.write_bytes(b"anything")
    with pytest.raises(CheckpointCorruptedError, match="neither '.keras' nor"):
        loading.check_config_modules(str(other))


@pytest.mark.parametrize("extension", [".h5", ".hdf5"])
def test_a_legacy_model_s_training_config_is_checked_too(tmp_path, extension):
    # Keras's legacy loader decodes the training configuration too (compile=True), and Keras
    # 3.5's decoding imports the module of a passively serialized object.
    evil = {"__passive_serialization__": True, **EVIL}
    path = legacy_model_file(tmp_path / f"model{extension}", HARMLESS, {"loss": evil})
    with pytest.raises(ValueError, match="'keras_ckpt_planted'"):
        loading.check_config_modules(path)
    loading.check_config_modules(legacy_model_file(tmp_path / f"ok{extension}", HARMLESS))


def test_a_legacy_config_that_is_not_text_is_damage(tmp_path):
    import h5py

    path = tmp_path / "model.h5"
    with h5py.File(path, "w") as file:
        file.attrs["model_config"] = 10**12  # bytes(10**12) would allocate a terabyte
    with pytest.raises(CheckpointCorruptedError, match="model_config is a"):
        loading.check_config_modules(str(path))


def test_keras_s_own_functions_passed_as_functions_load(tmp_path, data):
    # Keras saves them under the module "builtins"; the check must not refuse them.
    x, y = data
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(2, activation=keras.activations.relu)]
    )
    model.compile(
        optimizer="adam",
        loss=keras.losses.mean_squared_error,
        metrics=[keras.metrics.mean_absolute_error],
    )
    model.fit(
        x,
        np.repeat(y, 2, axis=1),
        validation_data=(x[:32], np.repeat(y[:32], 2, axis=1)),
        epochs=1,
        verbose=0,
        callbacks=[keras_ckpt.BestCheckpoint(tmp_path)],
    )
    loaded = keras_ckpt.load_best(tmp_path)
    np.testing.assert_array_equal(loaded.get_weights()[0], model.get_weights()[0])


# A model that spans several processes (the real two processes: test_multiprocess.py) ---------


@pytest.mark.parametrize(
    ("loader", "function"),
    [
        (lambda directory, model: keras_ckpt.load_best(directory, model), "load_best"),
        (lambda directory, model: keras_ckpt.load_latest(directory, model), "load_latest"),
        (
            lambda directory, model: keras_ckpt.load_checkpoint(
                keras_ckpt.list_checkpoints(directory)[-1], model
            ),
            "load_checkpoint",
        ),
    ],
    ids=["load_best", "load_latest", "load_checkpoint"],
)
def test_loading_into_a_model_that_spans_processes_waits_for_them_or_raises(
    tmp_path, data, monkeypatch, loader, function
):
    x, y = data
    keras.utils.set_random_seed(0)
    trained = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    trained.compile(optimizer="adam", loss="mse")
    callbacks = [
        keras_ckpt.BestCheckpoint(tmp_path, monitor="loss"),
        keras_ckpt.IntervalCheckpoint(tmp_path),
    ]
    trained.fit(x, y, epochs=1, verbose=0, callbacks=callbacks)
    fresh = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    fresh.compile(optimizer="adam", loss="mse")
    before = fresh.get_weights()
    # As in a second process: the model's variables span both, and the others never arrive.
    waits = []
    monkeypatch.setattr(loading, "_spans_other_processes", lambda model: True)
    monkeypatch.setattr(loading.processes, "process_count", lambda: 2)
    monkeypatch.setattr(loading, "LOAD_BARRIER_SECONDS", 2.5)
    monkeypatch.setattr(
        loading.processes,
        "wait_for_every_process",
        lambda purpose, seconds: waits.append((purpose, seconds)) or "DEADLINE_EXCEEDED: no",
    )
    with pytest.raises(
        loading.DistributedLoadError,
        match=(
            rf"^{function}: the model is distributed over 2 processes .* not every process "
            rf"called {function} within 2.5 s \(JAX: DEADLINE_EXCEEDED: no\)\. Call {function} "
            "on every process at the same point; to load on one process alone, pass no model"
        ),
    ):
        loader(tmp_path, fresh)
    assert waits == [("load", 2.5)]
    assert all(np.array_equal(a, b) for a, b in zip(fresh.get_weights(), before, strict=True))
    # Every process arrived: the weights load.
    monkeypatch.setattr(loading.processes, "wait_for_every_process", lambda *arguments: None)
    assert loader(tmp_path, fresh) is fresh
    for got, want in zip(fresh.get_weights(), trained.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
