"""The one place keras_ckpt touches what Keras does not publish.

Every access to Keras internals (``keras.src`` modules, underscore attributes, ``fit``'s local
variables read from the call stack, ``model.train_function`` replaced for a while) is a named
function here, and each has a capability probe: a module-level flag computed once at import
from imports, ``hasattr`` and the names Keras's own code uses. Where a probe fails (another
Keras release moved something), the function either degrades with one warning per process,
saying what is missing in which Keras version and what keras_ckpt does instead, or raises
``KerasInternalsError`` naming them, where going on would give a wrong result. Each function's
docstring says which. A Keras upgrade then touches this file only.

Checked against Keras 3.5 through 3.15 (the suite runs on 3.15.1 and, for its Keras-facing
parts, on 3.5.0) on the TensorFlow, JAX and PyTorch backends.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import warnings
from collections.abc import Callable
from typing import Any

import keras

try:
    from keras.src.optimizers import base_optimizer as _base_optimizer
    from keras.src.saving import saving_lib as _saving_lib
except ImportError:  # pragma: no cover - a Keras without the saving internals
    _saving_lib = _base_optimizer = None

try:
    from keras.src.utils import rng_utils as _rng_utils
except ImportError:  # pragma: no cover - a Keras without its seed bookkeeping
    _rng_utils = None

try:
    from keras.src.trainers.epoch_iterator import EpochIterator as _EpochIterator
except ImportError:  # pragma: no cover - a Keras whose fit iterates differently
    _EpochIterator = None


class KerasInternalsError(RuntimeError):
    """A Keras internal keras_ckpt needs is missing from the installed Keras version."""


# Probes --------------------------------------------------------------------------------------


def _code_names(function: Any) -> set[str]:
    """The attribute, global and local names a function's code uses (empty if it has none)."""
    code = getattr(inspect.unwrap(function), "__code__", None)
    return set() if code is None else {*code.co_names, *code.co_varnames}


def _class_code_names(cls: Any) -> set[str]:
    """The names used by the code of every function a class (and its bases) defines."""
    names: set[str] = set()
    for klass in getattr(cls, "__mro__", ()):
        for member in vars(klass).values():
            if isinstance(member, property):
                member = member.fget
            names |= _code_names(member)
    return names


_FIT_NAMES = _code_names(keras.Model.fit)  # the backend's trainer ``fit``
_FRAMES = inspect.currentframe() is not None  # None on Pythons without stack frame support

FIT_CALLBACKS_SUPPORTED = _FRAMES and "callbacks" in _FIT_NAMES
"""``fit`` holds its CallbackList in a local ``callbacks`` that the stack shows."""

FIT_EPOCH_ITERATOR_SUPPORTED = (
    _FRAMES
    and "epoch_iterator" in _FIT_NAMES
    and "data_adapter" in _class_code_names(_EpochIterator)
)
"""``fit`` holds its epoch iterator (with a ``data_adapter``) in a local ``epoch_iterator``."""

FIT_SHUFFLE_SUPPORTED = _FRAMES and "shuffle" in _FIT_NAMES
"""``fit``'s ``shuffle`` argument is a local the stack shows."""

INITIAL_EPOCH_SUPPORTED = "_initial_epoch" in _FIT_NAMES
"""``fit`` starts at ``model._initial_epoch`` when a callback set it in ``on_train_begin``."""

LAYER_TREE_SUPPORTED = hasattr(keras.layers.Layer, "_flatten_layers")
"""``Layer._flatten_layers`` lists a model's layers, nested ones included."""

SEED_GENERATORS_SUPPORTED = LAYER_TREE_SUPPORTED and "_seed_generators" in _class_code_names(
    keras.layers.Layer
)
"""Each layer lists its ``SeedGenerator``s in ``_seed_generators``."""

_KERAS_SEED_READER = _rng_utils is not None and hasattr(_rng_utils, "get_random_seed")
"""``keras.src.utils.rng_utils.get_random_seed`` reads what ``set_random_seed`` set (3.10+)."""

# Keras before 3.10 keeps no record of the seed, but its set_random_seed also seeds TensorFlow
# (where installed), whose eager context reads it back without side effects.
_TF_SEED_READER = importlib.util.find_spec("tensorflow") is not None

GLOBAL_SEED_SUPPORTED = _KERAS_SEED_READER or _TF_SEED_READER
"""The seed ``keras.utils.set_random_seed`` set can be read back (from Keras, or from
TensorFlow's eager context where Keras keeps none)."""

METRIC_DIRECTION_SUPPORTED = "_direction" in _class_code_names(keras.metrics.MeanSquaredError)
"""Keras's metrics say whether higher is better in ``_direction`` (``"up"``/``"down"``)."""

_OPTIMIZER_NAMES = _class_code_names(keras.optimizers.Optimizer)

OPTIMIZER_SCHEDULE_SUPPORTED = "_learning_rate" in _OPTIMIZER_NAMES
"""An optimizer keeps its learning rate (a variable or a schedule) in ``_learning_rate``."""

OPTIMIZER_BATCH_COUNT_SUPPORTED = "_iterations" in _OPTIMIZER_NAMES
"""An optimizer counts batches in ``_iterations`` (``iterations`` counts updates)."""

REBUILD_TRAIN_FUNCTION_SUPPORTED = (
    "force" in inspect.signature(keras.Model.make_train_function).parameters
)
"""``model.make_train_function(force=True)`` rebuilds the compiled train step."""

REPLACE_TRAIN_FUNCTION_SUPPORTED = "train_function" in _FIT_NAMES and keras.backend.backend() in (
    "tensorflow",
    "jax",
    "torch",
)
"""``fit`` calls ``model.train_function`` anew at every step, with arguments known here."""

_SAVING_NAMES = (
    "_save_state",
    "_serialize_model_as_json",
    "_write_to_zip_recursively",
    "H5IOStore",
    "DiskIOStore",
    "_CONFIG_FILENAME",
    "_METADATA_FILENAME",
    "_VARS_FNAME_H5",
    "_ASSETS_DIRNAME",
)
SAVING_SUPPORTED = (
    _saving_lib is not None
    and all(hasattr(_saving_lib, name) for name in _SAVING_NAMES)
    and hasattr(_base_optimizer, "BaseOptimizer")
)
"""Keras's saving traversal, model serialization and archive layout can be reused."""

H5_GROUPS_DEFERRED = SAVING_SUPPORTED and "_h5_entry_initialized" in _class_code_names(
    _saving_lib.H5IOStore
)
"""Keras's ``H5IOStore.make`` leaves an object's ``vars`` group to its first variable (3.10+);
before, ``make`` creates it, empty or not (and Keras 3.5's loader requires the root's)."""

SHARDED_WEIGHTS_VERSION = "3.10"
"""The first Keras release whose ``save_weights`` takes ``max_shard_size``."""

SHARDED_WEIGHTS_SUPPORTED = (
    "max_shard_size" in inspect.signature(keras.Model.save_weights).parameters
)
"""``model.save_weights(".weights.json", max_shard_size=...)`` writes sharded weights."""

SHARDED_SNAPSHOT_SUPPORTED = (
    SHARDED_WEIGHTS_SUPPORTED
    and H5_GROUPS_DEFERRED
    and hasattr(_saving_lib, "ShardedH5IOStore")
    and "max_shard_size" in inspect.signature(_saving_lib.ShardedH5IOStore).parameters
)
"""A snapshot's recorded saving calls can be replayed into Keras's ``ShardedH5IOStore``."""


def check_sharded_weights(argument: str, value: Any) -> None:
    """Raises ``ValueError`` naming ``argument`` and ``value`` where the installed Keras cannot
    write sharded weights (probe ``SHARDED_WEIGHTS_SUPPORTED``: Keras 3.10 or newer)."""
    if not SHARDED_WEIGHTS_SUPPORTED:
        raise ValueError(
            f"Argument `{argument}` asks for sharded weights (`.weights.json` with "
            f"`max_shard_size`), which need Keras {SHARDED_WEIGHTS_VERSION} or newer; this is "
            f"Keras {keras.__version__}. Received: {argument}={value!r}"
        )


def write_sharded_weights(
    path: str, calls: list[tuple[str, Any, Any]], max_shard_size: float
) -> None:
    """Writes recorded saving calls (``make`` / ``set``, values on the host) as Keras's sharded
    weights: the index ``path`` (``.weights.json``) and its shards beside it, by Keras's own
    ``ShardedH5IOStore``, as ``model.save_weights(path, max_shard_size=...)`` would.

    Probe ``SHARDED_SNAPSHOT_SUPPORTED``. Raises:
        KerasInternalsError: Where it fails (callers check the probe first).
    """
    if not SHARDED_SNAPSHOT_SUPPORTED:
        raise _missing("Writing sharded weights from a snapshot", "`ShardedH5IOStore`")
    store = _saving_lib.ShardedH5IOStore(path, max_shard_size=max_shard_size, mode="w")
    try:
        target = store
        for op, key, value in calls:
            if op == "make":
                target = store.make(key, metadata=value) if value else store.make(key)
            else:
                target[key] = value
    finally:
        store.close()


# Degrading -----------------------------------------------------------------------------------

_warned: set[str] = set()


def _degrade(feature: str, missing: str, instead: str) -> None:
    """One warning per feature and process: what Keras lacks and what keras_ckpt does instead."""
    if feature in _warned:
        return
    _warned.add(feature)
    warnings.warn(
        f"keras_ckpt: Keras {keras.__version__} has no {missing}; {instead}.", stacklevel=3
    )


def _missing(what: str, missing: str) -> KerasInternalsError:
    return KerasInternalsError(
        f"keras_ckpt: {what} needs {missing}, which Keras {keras.__version__} does not have. "
        "Install a Keras version keras_ckpt supports (3.5 through 3.15)."
    )


# fit's local variables -----------------------------------------------------------------------


def fit_local(name: str, accept: Callable[[Any], bool]) -> Any:
    """The nearest local ``name`` up the call stack that ``accept`` takes, or ``None``.

    Every Keras trainer's ``fit`` holds ``callbacks`` (a CallbackList), ``epoch_iterator`` and
    ``shuffle`` as locals while it calls the hooks. No probe of its own: ``None`` also means
    "not inside ``fit``" (hooks called directly); the named readers below probe.
    """
    frame = inspect.currentframe()
    try:
        while frame is not None:
            value = frame.f_locals.get(name)
            if value is not None and accept(value):
                return value
            frame = frame.f_back
    finally:
        del frame
    return None


def fit_callbacks(callback: keras.callbacks.Callback) -> list[Any]:
    """All callbacks of the running ``fit``, ``callback`` included, in their order.

    ``[]`` outside ``fit``. Probe ``FIT_CALLBACKS_SUPPORTED``; where it fails: one warning and
    ``[]`` (other callbacks' states are then neither saved nor restored on resume).
    """
    if not FIT_CALLBACKS_SUPPORTED:
        _degrade(
            "fit_callbacks",
            "`callbacks` local in fit",
            "the other callbacks of a fit are not found (their states are not saved for resume)",
        )
        return []
    found = fit_local(
        "callbacks",
        lambda value: (
            isinstance(value, keras.callbacks.CallbackList)
            and any(c is callback for c in value.callbacks)
        ),
    )
    return [] if found is None else list(found.callbacks)


def fit_epoch_iterator() -> Any:
    """The running ``fit``'s epoch iterator (one per ``fit``), or ``None`` outside ``fit``.

    Probe ``FIT_EPOCH_ITERATOR_SUPPORTED``; where it fails: one warning and ``None`` (which
    fit is running cannot be told: a signal after a failed fit is taken for this one's).
    """
    if not FIT_EPOCH_ITERATOR_SUPPORTED:
        _degrade(
            "fit_epoch_iterator",
            "`epoch_iterator` local in fit",
            "the running fit and its data cannot be identified",
        )
        return None
    return fit_local("epoch_iterator", lambda value: hasattr(value, "data_adapter"))


def fit_is_running(iterator: Any) -> bool:
    """Whether the ``fit`` that ``iterator`` (from ``fit_epoch_iterator``) belongs to is on the
    call stack. Needs no probe of its own: an iterator is only had where it passed."""
    # No frame of this module may hold a local named like fit's: the walk would find it.
    return fit_local("epoch_iterator", lambda value: value is iterator) is not None


def reads_tf_dataset(iterator: Any) -> bool:
    """Whether the ``fit`` of ``iterator`` (from ``fit_epoch_iterator``) reads a
    ``tf.data.Dataset`` (whose shuffle order cannot be replayed). Probed with
    ``FIT_EPOCH_ITERATOR_SUPPORTED``."""
    adapter = getattr(iterator, "data_adapter", None)
    return type(adapter).__name__ == "TFDatasetAdapter"


def fit_shuffle() -> bool | str | None:
    """The running ``fit``'s ``shuffle`` argument, or ``None`` outside ``fit``.

    Probe ``FIT_SHUFFLE_SUPPORTED``; where it fails: one warning and ``None`` (the warning
    about a shuffle order that a resume cannot replay is not given).
    """
    if not FIT_SHUFFLE_SUPPORTED:
        _degrade(
            "fit_shuffle",
            "`shuffle` local in fit",
            "a resume cannot warn that a shuffled epoch is not replayed in the same order",
        )
        return None
    return fit_local("shuffle", lambda value: isinstance(value, (bool, str)))


# Where fit starts ----------------------------------------------------------------------------


def set_fit_start_epoch(model: keras.Model, epoch: int) -> None:
    """Makes the ``fit`` whose ``on_train_begin`` runs now start at 0-based ``epoch``.

    Probe ``INITIAL_EPOCH_SUPPORTED``. Raises:
        KerasInternalsError: Where it fails: a resume would silently train from epoch 0.
    """
    if not INITIAL_EPOCH_SUPPORTED:
        raise _missing("Resuming at the saved epoch", "fit reading `model._initial_epoch`")
    model._initial_epoch = epoch


def clear_fit_start_epoch(model: keras.Model) -> None:
    """Undoes ``set_fit_start_epoch``, so a later plain ``fit`` starts at epoch 0 (Keras's
    BackupAndRestore leaves it set). Where ``INITIAL_EPOCH_SUPPORTED`` fails, nothing was set,
    and nothing is done."""
    if INITIAL_EPOCH_SUPPORTED:
        model._initial_epoch = None


# Random state --------------------------------------------------------------------------------


def model_layers(model: keras.Model) -> list[Any]:
    """The model and every layer in it, nested ones included.

    Probe ``LAYER_TREE_SUPPORTED``. Raises:
        KerasInternalsError: Where it fails (callers probe first and degrade).
    """
    if not LAYER_TREE_SUPPORTED:
        raise _missing("Listing a model's layers", "`Layer._flatten_layers`")
    return list(model._flatten_layers(include_self=True))


def seed_generators(model: keras.Model) -> list[Any]:
    """Every ``keras.random.SeedGenerator`` of the model's layers (Dropout's and the like).

    Probe ``SEED_GENERATORS_SUPPORTED``; where it fails: one warning and ``[]`` (a resume then
    restores no seed-generator state: random layers draw other numbers than an uninterrupted
    run would).
    """
    if not SEED_GENERATORS_SUPPORTED:
        _degrade(
            "seed_generators",
            "`Layer._flatten_layers` / `Layer._seed_generators`",
            "seed-generator states (Dropout and other random layers) are not saved for resume",
        )
        return []
    generators: list[Any] = []
    for layer in model._flatten_layers(include_self=True):
        generators.extend(getattr(layer, "_seed_generators", []))
    return generators


def global_seed() -> int | None:
    """The seed ``keras.utils.set_random_seed`` set, or ``None`` if none was set.

    Probe ``GLOBAL_SEED_SUPPORTED``; where it fails: one warning and ``None`` (taken for "no
    seed": the warning about a shuffle order that is not replayed may then be given needlessly).
    """
    if not GLOBAL_SEED_SUPPORTED:
        _degrade(
            "global_seed",
            "`keras.src.utils.rng_utils.get_random_seed`",
            "whether a global seed is set cannot be told (taken as not set)",
        )
        return None
    if _KERAS_SEED_READER:
        return _rng_utils.get_random_seed()
    if "tensorflow" not in sys.modules:
        return None  # set_random_seed imports TensorFlow to seed it: no seed was set
    from tensorflow.python.eager import context

    seed: int | None = context.global_seed()
    return seed


# Metrics and optimizers ----------------------------------------------------------------------


def metric_direction(metric: Any) -> str | None:
    """``"up"`` or ``"down"`` where a Keras metric says whether higher is better, else ``None``.

    Probe ``METRIC_DIRECTION_SUPPORTED``; where it fails: one warning and ``None`` (a ``mode``
    of ``"auto"`` then goes by the metric's name, and a name that says nothing is an error
    asking for ``mode``).
    """
    if not METRIC_DIRECTION_SUPPORTED:
        _degrade(
            "metric_direction",
            "`Metric._direction`",
            "mode='auto' goes by the metric's name (pass mode= where it is not enough)",
        )
        return None
    direction = getattr(metric, "_direction", None)
    return direction if direction in ("up", "down") else None


def optimizer_schedule(optimizer: Any) -> Any:
    """What the optimizer computes its learning rate from: a ``LearningRateSchedule``, a
    variable, or a callable.

    Probe ``OPTIMIZER_SCHEDULE_SUPPORTED``; where it fails: one warning and ``None`` (a
    schedule-driven optimizer is then not recognized; setting its learning rate raises Keras's
    own ``TypeError``, as with Keras's callbacks).
    """
    if not OPTIMIZER_SCHEDULE_SUPPORTED:
        _degrade(
            "optimizer_schedule",
            "`optimizer._learning_rate`",
            "an optimizer's LearningRateSchedule is not recognized (Keras's TypeError applies)",
        )
        return None
    return getattr(optimizer, "_learning_rate", None)


def set_optimizer_schedule(optimizer: Any, schedule: Any) -> None:
    """Makes the optimizer compute its learning rate from ``schedule`` from now on; rebuild the
    train function (``rebuild_train_function``) so compiled steps see it.

    Probe ``OPTIMIZER_SCHEDULE_SUPPORTED``. Raises:
        KerasInternalsError: Where it fails: the rate would silently stay as it was.
    """
    if not OPTIMIZER_SCHEDULE_SUPPORTED:
        raise _missing("Replacing an optimizer's learning-rate schedule", "`_learning_rate`")
    optimizer._learning_rate = schedule


def optimizer_batch_count(optimizer: Any) -> int:
    """Training batches the optimizer has seen.

    ``optimizer.iterations`` counts updates, which with ``gradient_accumulation_steps=G`` is
    one per G batches; Keras's raw counter counts batches. Probe
    ``OPTIMIZER_BATCH_COUNT_SUPPORTED``; where it fails, ``iterations`` is used, which is right
    without gradient accumulation.

    Raises:
        KerasInternalsError: Where the probe fails and the optimizer accumulates gradients:
            step counts would silently be G times too small.
    """
    counter = getattr(optimizer, "_iterations", None) if OPTIMIZER_BATCH_COUNT_SUPPORTED else None
    if counter is None:
        if (getattr(optimizer, "gradient_accumulation_steps", None) or 1) > 1:
            raise _missing(
                "Counting batches with gradient_accumulation_steps", "`optimizer._iterations`"
            )
        counter = optimizer.iterations
    return int(counter.numpy())


# The train function --------------------------------------------------------------------------


def rebuild_train_function(model: keras.Model) -> None:
    """Rebuilds the model's compiled train step (on every backend), for example after the
    optimizer's schedule was replaced.

    Probe ``REBUILD_TRAIN_FUNCTION_SUPPORTED``. Raises:
        KerasInternalsError: Where it fails: the compiled step would silently keep the old one.
    """
    if not REBUILD_TRAIN_FUNCTION_SUPPORTED:
        raise _missing("Rebuilding the train step", "`Model.make_train_function(force=True)`")
    model.make_train_function(force=True)


def replace_train_function(
    model: keras.Model, make_replacement: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> Callable[[], None]:
    """Makes ``fit`` call ``make_replacement(original)`` in place of the model's train function.

    ``fit`` calls ``model.train_function`` once per execution of ``steps_per_execution``
    batches. Returns ``restore()``, which puts the original back if the replacement is still in
    place (and does nothing otherwise, so it may be called more than once).

    Probe ``REPLACE_TRAIN_FUNCTION_SUPPORTED``. Raises:
        KerasInternalsError: Where it fails: a mid-epoch resume would silently train the
            batches already trained once more.
    """
    if not REPLACE_TRAIN_FUNCTION_SUPPORTED:
        raise _missing(
            "Resuming mid-epoch (skipping the batches already trained)",
            f"fit calling `model.train_function` on the {keras.backend.backend()} backend",
        )
    original = model.train_function
    replacement = make_replacement(original)

    def restore() -> None:
        if model.train_function is replacement:
            model.train_function = original

    model.train_function = replacement
    return restore


def skip_train_step(args: tuple[Any, ...], batches: int) -> Any:
    """In a replacement train function, given its ``args``: reads ``batches`` batches from the
    data without training, and returns what the backend's train function returns for no logs.

    TensorFlow and JAX pass the data iterator (JAX also the training state, returned as it is);
    PyTorch passes the batch that ``fit`` already read.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        state, data = args
        # Keras 3.7+ passes the data iterator; 3.5 and 3.6 pass the batches fit already read.
        if hasattr(data, "__next__"):
            for _ in range(batches):
                next(data, None)
        return {}, state
    if backend == "tensorflow":
        (iterator,) = args
        for _ in range(batches):
            next(iterator, None)
    return {}


# Saving internals ----------------------------------------------------------------------------
# snapshot.py writes Keras's file formats itself (their bytes are pinned by the tests); it
# reaches Keras's saving code only through these, each behind ``SAVING_SUPPORTED``. Its caller
# degrades: ``take_snapshot`` warns once and the file is saved synchronously by Keras.

H5StoreBase: type = _saving_lib.H5IOStore if SAVING_SUPPORTED else object
"""The class Keras's saving traversal expects its weights store to be (``object`` where
``SAVING_SUPPORTED`` fails)."""

if SAVING_SUPPORTED:
    ARCHIVE_METADATA_NAME: str = _saving_lib._METADATA_FILENAME
    ARCHIVE_CONFIG_NAME: str = _saving_lib._CONFIG_FILENAME
    ARCHIVE_WEIGHTS_NAME: str = _saving_lib._VARS_FNAME_H5
    ARCHIVE_ASSETS_NAME: str = _saving_lib._ASSETS_DIRNAME
else:  # pragma: no cover - the names Keras 3.15 uses; nothing writes them without the probe
    ARCHIVE_METADATA_NAME = "metadata.json"
    ARCHIVE_CONFIG_NAME = "config.json"
    ARCHIVE_WEIGHTS_NAME = "model.weights.h5"
    ARCHIVE_ASSETS_NAME = "assets"


def can_snapshot() -> bool:
    """Whether snapshots can reuse Keras's saving internals (probe ``SAVING_SUPPORTED``).

    Where the probe fails: one warning and ``False``; every checkpoint is then saved
    synchronously by ``model.save`` / ``model.save_weights`` (the files are the same).
    """
    if not SAVING_SUPPORTED:
        _degrade(
            "can_snapshot",
            "saving internals that asynchronous saving reuses (`keras.src.saving.saving_lib`)",
            "checkpoints are saved synchronously by model.save / model.save_weights",
        )
    return SAVING_SUPPORTED


def _check_saving(what: str) -> None:
    if not SAVING_SUPPORTED:
        raise _missing(what, "the saving internals of `keras.src.saving.saving_lib`")


def walk_saved_state(model: keras.Model, weights_store: Any, assets_store: Any) -> None:
    """Runs Keras's saving traversal: every object's ``save_own_variables`` /
    ``save_assets`` writes into the stores, as ``model.save`` would.

    Probe ``SAVING_SUPPORTED``. Raises:
        KerasInternalsError: Where it fails (callers check the probe first).
    """
    _check_saving("Snapshotting a model")
    _saving_lib._save_state(
        model,
        weights_store=weights_store,
        assets_store=assets_store,
        inner_path="",
        visited_saveables=set(),
    )


def model_config_json(model: keras.Model) -> tuple[str, str]:
    """The ``config.json`` and ``metadata.json`` texts ``model.save`` writes into a ``.keras``.

    Probe ``SAVING_SUPPORTED``. Raises:
        KerasInternalsError: Where it fails (callers check the probe first).
    """
    _check_saving("Snapshotting a model's config")
    return _saving_lib._serialize_model_as_json(model)


def new_assets_store() -> Any:
    """A temporary directory store for the assets the saving traversal writes (``close()``
    removes it; ``working_dir`` is its path).

    Probe ``SAVING_SUPPORTED``. Raises:
        KerasInternalsError: Where it fails (callers check the probe first).
    """
    _check_saving("Snapshotting a model's assets")
    return _saving_lib.DiskIOStore(ARCHIVE_ASSETS_NAME, mode="w")


def zip_assets(archive: Any, directory: str) -> None:
    """Adds the assets in ``directory`` to a ``.keras`` ``archive`` as Keras does.

    Probe ``SAVING_SUPPORTED``. Raises:
        KerasInternalsError: Where it fails (callers check the probe first).
    """
    _check_saving("Writing a model's assets")
    _saving_lib._write_to_zip_recursively(archive, directory, ARCHIVE_ASSETS_NAME)


def saved_by_keras_code_alone(model: keras.Model) -> bool:
    """Whether every layer of the model and its optimizer save their variables with Keras's own
    ``save_own_variables``, none with one of the user's (which may decide anew at every save).

    Probe ``LAYER_TREE_SUPPORTED``; where it fails: one warning and ``False`` (the model is
    then walked at every save; slower, never wrong).
    """
    if not LAYER_TREE_SUPPORTED:
        _degrade(
            "saved_by_keras_code_alone",
            "`Layer._flatten_layers`",
            "every asynchronous save walks the whole model again (slower)",
        )
        return False
    objects = [*model_layers(model), getattr(model, "optimizer", None)]
    for obj in objects:
        method = getattr(type(obj), "save_own_variables", None)
        if method is not None and not getattr(method, "__module__", "").startswith("keras."):
            return False
    return True


def optimizer_saves_like_keras(optimizer: Any) -> bool:
    """Whether the optimizer saves ``optimizer.variables`` in order with Keras's base code.

    Probe ``SAVING_SUPPORTED``; where it fails: ``False`` (the optimizer's values are then
    walked at every save; slower, never wrong).
    """
    if not SAVING_SUPPORTED or optimizer is None:
        return False
    base = _base_optimizer.BaseOptimizer
    return type(optimizer).save_own_variables is base.save_own_variables


# Legacy HDF5 weights -------------------------------------------------------------------------
# Keras 2 code names weights files "x.h5" / "x.hdf5"; Keras 3's ``model.save_weights`` refuses
# those names, but ``model.load_weights`` still reads the legacy layout there (and only that:
# a ``.weights.h5`` file renamed to ``.h5`` does not load). Keras writes the layout only
# inside a legacy ``.h5`` model; this reaches that writer.

try:
    from keras.src.legacy.saving import legacy_h5_format as _legacy_h5_format  # noqa: E402
except ImportError:  # pragma: no cover - a Keras without the legacy HDF5 code
    _legacy_h5_format = None

LEGACY_H5_WEIGHTS_SUPPORTED = _legacy_h5_format is not None and hasattr(
    _legacy_h5_format, "save_weights_to_hdf5_group"
)
"""Keras's legacy HDF5 code can write a model's weights into an HDF5 group."""


def save_legacy_h5_weights(model: keras.Model, path: str) -> None:
    """Writes the model's weights to ``path`` as tf.keras 2's ``model.save_weights("x.h5")``
    did (layer weights only, no optimizer state), which ``model.load_weights`` reads back.

    Probe ``LEGACY_H5_WEIGHTS_SUPPORTED``. Raises:
        KerasInternalsError: Where it fails (there is no public way to write that layout).
    """
    if not LEGACY_H5_WEIGHTS_SUPPORTED:
        raise _missing(
            "Saving weights to a legacy `.h5` / `.hdf5` file",
            "`keras.src.legacy.saving.legacy_h5_format.save_weights_to_hdf5_group`",
        )
    import h5py

    with h5py.File(path, "w") as file:
        _legacy_h5_format.save_weights_to_hdf5_group(file, model)


# Keras's message printing --------------------------------------------------------------------

try:
    from keras.src.utils import io_utils as _io_utils
except ImportError:  # pragma: no cover - a Keras without its message printing
    _io_utils = None

PRINT_MESSAGE_SUPPORTED = _io_utils is not None and callable(getattr(_io_utils, "print_msg", None))
"""``keras.src.utils.io_utils.print_msg`` prints Keras's callback messages: to stdout, or to the
``keras`` logger after ``keras.config.disable_interactive_logging()``."""


def print_message(text: str) -> None:
    """Prints a callback's verbose message the way Keras's own callbacks do, so it goes where
    Keras's go (the ``keras`` logger once a user turned interactive logging off).

    Probe ``PRINT_MESSAGE_SUPPORTED``; where it fails: ``print`` (the message then stays on
    stdout when Keras's output is routed to logging). No warning: the message is still shown.
    """
    if PRINT_MESSAGE_SUPPORTED:
        _io_utils.print_msg(text)
    else:
        print(text, flush=True)


# Backend behaviour that snapshots rely on -----------------------------------------------------

_tensorflow_reads_hold: bool | None = None


def tensorflow_reads_hold() -> bool:
    """Whether a tensor read from a TensorFlow variable keeps its value while the variable is
    updated: TensorFlow copies a variable's buffer before an in-place update while a read of it
    is alive (copy-on-write), so a read is a snapshot that costs nothing until the next update.

    Probe, run once per process on the first call (a few milliseconds, plus one XLA
    compilation where XLA is available): a read must survive an eager ``assign_add``, a
    ``tf.function`` ``assign_sub``, a ``scatter_add`` and an XLA-compiled update. Where it does
    not (another TensorFlow), ``False``: snapshots then copy to host memory at once, as
    ``variable.numpy()`` does.
    """
    global _tensorflow_reads_hold
    if _tensorflow_reads_hold is None:
        _tensorflow_reads_hold = _probe_tensorflow_reads()
    return _tensorflow_reads_hold


def _probe_tensorflow_reads() -> bool:
    import numpy as np
    import tensorflow as tf

    variable = tf.Variable(np.zeros((4, 4), "float32"))
    ones = tf.ones((4, 4))

    def survives(update: Callable[[], Any]) -> bool:
        read = tf.identity(variable)
        before = np.array(read)
        update()
        return bool(np.array_equal(np.asarray(read), before))

    def xla_update() -> None:
        try:
            tf.function(lambda: variable.assign_add(ones), jit_compile=True)()
        except Exception:  # noqa: BLE001 - no XLA here: fit cannot compile with it either
            variable.assign_add(ones)

    try:
        return (
            survives(lambda: variable.assign_add(ones))
            and survives(tf.function(lambda: variable.assign_sub(ones)))
            and survives(lambda: variable.scatter_add(tf.IndexedSlices(ones[:1], [0])))
            and survives(xla_update)
        )
    except Exception:  # noqa: BLE001 - any failure means: do not rely on it
        return False


def tensorflow_read(value: Any) -> Any:
    """A read of ``value``, a TensorFlow variable, on its own device, that holds its current
    value while training goes on (see ``tensorflow_reads_hold``); ``None`` where that cannot be
    relied on: the probe failed, or a distribution strategy is in use (its variables read per
    replica)."""
    import tensorflow as tf

    if not isinstance(value, tf.Variable) or tf.distribute.has_strategy():
        return None
    if not tensorflow_reads_hold():
        return None
    return tf.identity(value)


# Exponential moving averages (use_ema) -------------------------------------------------------

EMA_SUPPORTED = {"_model_variables_moving_average", "_trainable_variables"} <= _OPTIMIZER_NAMES
"""An optimizer with ``use_ema=True`` keeps the averages in ``_model_variables_moving_average``,
one per variable of ``_trainable_variables`` (the model's, as built), in the same order."""

_KERAS_SWAP_NAMES = _class_code_names(getattr(keras.callbacks, "SwapEMAWeights", None))

KERAS_SWAP_STATE_SUPPORTED = {"_ema_weights_in_model", "_finalize_ema_values"} <= _KERAS_SWAP_NAMES
"""Keras's ``SwapEMAWeights`` records in ``_ema_weights_in_model`` whether the model holds the
averages, and copies them over its raw weights in ``_finalize_ema_values`` at the last epoch."""


def _ema_optimizers(model: keras.Model) -> list[Any]:
    """The optimizers of ``model`` with ``use_ema=True`` (inside a LossScaleOptimizer too)."""
    optimizer = getattr(model, "optimizer", None)
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    inner = getattr(optimizer, "optimizers", None)
    candidates = list(inner) if isinstance(inner, (list, tuple)) else [optimizer]
    return [o for o in candidates if o is not None and getattr(o, "use_ema", False)]


def uses_ema(model: keras.Model) -> bool:
    """Whether the model's optimizer keeps moving averages (``use_ema=True``). Public API only."""
    return bool(_ema_optimizers(model))


def ema_variable_pairs(model: keras.Model) -> list[tuple[Any, Any]]:
    """``(model variable, its moving average)`` for every variable an EMA optimizer averages;
    ``[]`` without ``use_ema`` or before the optimizer is built.

    Raises:
        KerasInternalsError: Where the probe ``EMA_SUPPORTED`` fails and the optimizer uses EMA:
            a checkpoint would silently hold the averages in the wrong place.
    """
    pairs: list[tuple[Any, Any]] = []
    for optimizer in _ema_optimizers(model):
        if not EMA_SUPPORTED:
            raise _missing(
                "Saving with use_ema=True", "`optimizer._model_variables_moving_average`"
            )
        averages = getattr(optimizer, "_model_variables_moving_average", None)
        variables = getattr(optimizer, "_trainable_variables", None)
        if not getattr(optimizer, "built", False) or averages is None or variables is None:
            continue
        pairs += [(v, a) for v, a in zip(variables, averages, strict=True) if a is not None]
    return pairs


def keras_swap_holds_ema(callback: Any) -> bool:
    """Whether Keras's own ``SwapEMAWeights`` ``callback`` has put the averages into the model.

    Probe ``KERAS_SWAP_STATE_SUPPORTED``; where it fails: one warning and ``False`` (a checkpoint
    saved while Keras's callback has swapped then holds the averages as the model's weights).
    """
    if not KERAS_SWAP_STATE_SUPPORTED:
        _degrade(
            "keras_swap_holds_ema",
            "`SwapEMAWeights._ema_weights_in_model`",
            "use keras_ckpt.SwapEMAWeights so that checkpoints keep the raw weights",
        )
        return False
    return bool(getattr(callback, "_ema_weights_in_model", False))


def forget_keras_swap(callback: Any) -> None:
    """Tells Keras's own ``SwapEMAWeights`` ``callback`` that the model does not hold the
    averages "instead of" the raw weights: at the end of ``fit`` the model and the optimizer's
    slots both hold them, and a later ``fit`` that restores the raw weights (``ResumeFromLatest``)
    must not have them exchanged at its first epoch. Probe ``KERAS_SWAP_STATE_SUPPORTED``; where
    it fails, nothing is done."""
    if KERAS_SWAP_STATE_SUPPORTED:
        callback._ema_weights_in_model = False


def run_before_ema_finalize(owner: Any, hook: Callable[[], None]) -> None:
    """Makes what copies the moving averages over the model's weights at the end of ``fit``
    call ``hook()`` first, so that the raw weights can be copied aside before they are
    overwritten (on this instance only; calling it again replaces the hook).

    ``owner`` is an EMA optimizer (its public ``finalize_variable_values``) or Keras's
    ``SwapEMAWeights`` (its private ``_finalize_ema_values``, probe
    ``KERAS_SWAP_STATE_SUPPORTED``; where that fails, nothing is done for it).
    """
    if isinstance(owner, keras.callbacks.SwapEMAWeights):
        if KERAS_SWAP_STATE_SUPPORTED:
            _run_before(owner, "_finalize_ema_values", hook)
    else:
        _run_before(owner, "finalize_variable_values", hook)


def _run_before(owner: Any, method: str, hook: Callable[[], None]) -> None:
    """Makes ``owner.<method>`` call ``hook()`` first, on this instance only."""
    hooks = owner.__dict__.get("_keras_ckpt_hooks")
    if hooks is None:
        hooks = {}
        object.__setattr__(owner, "_keras_ckpt_hooks", hooks)
    if method not in hooks:
        original = getattr(owner, method)

        def run_hook_first(*args: Any, **kwargs: Any) -> Any:
            hooks[method]()
            return original(*args, **kwargs)

        object.__setattr__(owner, method, run_hook_first)
    hooks[method] = hook


def ema_optimizers(model: keras.Model) -> list[Any]:
    """The optimizers of ``model`` with ``use_ema=True``. Public API only."""
    return _ema_optimizers(model)
