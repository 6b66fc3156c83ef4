"""Averaging checkpoints into one model (uniform and greedy "model soups").

Which variables are averaged: every floating-point variable of the model (``model.variables``:
trainable weights and non-trainable ones such as BatchNormalization's moving mean and
variance). Everything else comes from the newest of the chosen checkpoints: integer variables
(counters, seed-generator states) and the optimizer's variables (its iteration count and
moments: an average of moments means nothing, and the newest's let training go on from the
soup). The mean is taken in float64 and rounded once to each variable's dtype (bfloat16, which
NumPy lacks, through float32), so averaging k identical checkpoints gives them back bit for bit,
and two checkpoints give ``(a + b) / 2`` rounded to float32.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from keras_ckpt import ranking, validation
from keras_ckpt.loading import (
    check_load_options,
    checkpoint_file,
    committed_manifest,
    load_record,
    load_weights,
)
from keras_ckpt.records import KIND_WEIGHTS, CheckpointRecord

if TYPE_CHECKING:
    import keras
    import numpy as np


def checkpoints_to_average(
    directory: str | os.PathLike[str],
    which: str = "best",
    k: int = 5,
    monitor: str = "val_loss",
    mode: str = "auto",
) -> list[CheckpointRecord]:
    """The checkpoints ``average_checkpoints`` would average, best (or newest) first.

    Args:
        directory: A checkpoint directory (a local path or a remote URL).
        which: ``"best"`` (the ``k`` with the best ``monitor`` value) or ``"latest"`` (the
            ``k`` newest).
        k: How many checkpoints, an int ``>= 1``. With fewer there, all of them are chosen and
            a ``UserWarning`` says so.
        monitor: The recorded metric ``"best"`` ranks by.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (from the metric's name).

    Returns:
        The chosen records.

    Raises:
        FileNotFoundError: If the directory does not exist or has no checkpoint to choose
            (for ``"best"``, none with ``monitor``).
        ValueError: On a bad argument.

    Example:
        After ``keras-ckpt demo``:
        ``[r.epoch for r in keras_ckpt.averaging.checkpoints_to_average("runs/demo", k=3)]``.
    """
    which, k, monitor, resolved = _check_choice(which, k, monitor, mode, need_mode=which == "best")
    return _choose(directory, which, k, monitor, resolved)[0]


def average_checkpoints(
    directory: str | os.PathLike[str],
    which: str = "best",
    k: int = 5,
    greedy: bool = False,
    validation_data: Any = None,
    monitor: str = "val_loss",
    mode: str = "auto",
    *,
    model: keras.Model | None = None,
    verify_checksum: bool = True,
    safe_mode: bool = True,
    custom_objects: dict[str, Any] | None = None,
    verbose: int = 0,
) -> keras.Model:
    """A model whose floating-point variables are the mean of a directory's chosen checkpoints.

    Uniform (``greedy=False``): the mean of all ``k`` chosen checkpoints. Greedy
    (``greedy=True``, the "greedy soup" of Wortsman et al., 2022): each chosen checkpoint is
    evaluated alone on ``validation_data``; starting from the best of them, the others are added
    best first, each kept only if the mean with it improves the ``monitor`` metric on
    ``validation_data``. The result is never worse than the best single checkpoint on that data.

    Integer variables (counters, seed-generator states) and the optimizer's variables come from
    the newest chosen checkpoint (see the module's docstring).

    Memory: the uniform mean holds one float64 copy of the model's floating-point variables
    beside the model, and a host copy of the newest checkpoint's; the greedy soup holds a copy
    of every chosen checkpoint's (it averages them again for each candidate). Checkpoints are
    loaded one at a time, in this process: in a run of several processes, call it on one
    (``jax.process_index() == 0``).

    Args:
        directory: A checkpoint directory (a local path or a remote URL such as
            ``s3://bucket/run``).
        which: ``"best"``: the ``k`` checkpoints with the best recorded ``monitor``;
            ``"latest"``: the ``k`` newest.
        k: How many checkpoints to average, an int ``>= 1``. With fewer in the directory, all
            there are averaged and a ``UserWarning`` says so.
        greedy: Keep only the checkpoints that improve the mean on ``validation_data``.
        validation_data: For ``greedy``: what ``model.evaluate`` takes, as in ``fit``'s
            ``validation_data``: a tuple ``(x, y)`` or ``(x, y, sample_weight)``, a
            ``tf.data.Dataset``, a ``keras.utils.PyDataset``... Evaluated with the model's
            compiled loss and metrics. Not used without ``greedy``.
        monitor: The metric: ``"best"`` ranks the recorded values, ``greedy`` compares the
            evaluated ones (``"val_loss"`` is the ``"loss"`` that ``evaluate`` returns, and
            ``"val_x"`` its ``"x"``).
        mode: ``"min"``, ``"max"`` or ``"auto"`` (from the metric's name, as the callbacks do).
        model: The model to average into (and return); needed when the checkpoints hold weights
            only. It must have the checkpoints' architecture, and for ``greedy`` be compiled.
        verify_checksum: Check each file against the SHA-256 in the manifest before loading.
        safe_mode: As for ``load_best``.
        custom_objects: As for ``load_best``.
        verbose: ``1`` prints which checkpoints were averaged (and for ``greedy`` each score).

    Returns:
        The averaged model: with no ``model``, the newest chosen checkpoint loaded whole
        (compiled as it was saved) holding the averaged values.

    Raises:
        FileNotFoundError: If the directory does not exist or has no checkpoint to average
            (for ``"best"``, none with ``monitor``).
        ValueError: On a bad argument (checked before anything is loaded): ``which`` not
            ``"best"``/``"latest"``, ``k`` not an int ``>= 1``, ``greedy`` without
            ``validation_data``, ``mode="auto"`` for a metric whose name does not tell the
            direction; when a chosen checkpoint holds weights only and no ``model`` is given;
            for ``greedy``, when the model is not compiled or ``evaluate`` does not return
            ``monitor``.
        keras_ckpt.CheckpointCorruptedError: If a file does not match its manifest entry.

    Example:
        After ``keras-ckpt demo``::

            soup = keras_ckpt.average_checkpoints("runs/demo", which="best", k=3)
            soup.save("soup.keras")
    """
    greedy = validation.boolean("greedy", greedy)
    if greedy and validation_data is None:
        raise ValueError(
            "Argument `validation_data` is needed with greedy=True (each checkpoint is kept "
            "only if it improves the average on it). Received: validation_data=None"
        )
    which, k, monitor, resolved = _check_choice(
        which, k, monitor, mode, need_mode=which == "best" or greedy
    )
    verify_checksum = validation.boolean("verify_checksum", verify_checksum)
    verbose = validation.one_of("verbose", verbose, (0, 1))
    check_load_options(safe_mode, custom_objects)
    chosen, oldest_first = _choose(directory, which, k, monitor, resolved)
    if model is None:
        weights_only = [record.filename for record in chosen if record.kind == KIND_WEIGHTS]
        if weights_only:
            raise ValueError(
                f"The checkpoints {', '.join(weights_only)} hold weights only; pass the model "
                "to average them into, e.g. average_checkpoints(directory, model=model)."
            )
    newest = oldest_first[-1]
    model = load_record(
        "average_checkpoints",
        newest,
        model,
        verify_checksum=verify_checksum,
        safe_mode=safe_mode,
        custom_objects=custom_objects,
    )
    if greedy:
        _check_compiled(model)
    floats = _float_variables(model)
    newest_values = [_host_value(variable) for variable in floats]
    # What is not averaged stays the newest's: kept aside while the others are loaded.
    kept = [(variable, _host_value(variable)) for variable in _not_averaged(model)]
    # The uniform mean keeps one running float64 sum; the greedy soup keeps every candidate.
    totals: list[np.ndarray] = []
    values: dict[str, list[np.ndarray]] = {}
    for record in oldest_first:
        if record is newest:
            current = newest_values
        else:
            with checkpoint_file(record, verify_checksum) as path:
                load_weights(model, path)
            current = [_host_value(variable) for variable in floats]
        if greedy:
            values[record.path] = current
        else:
            totals = _add(totals, current)
    for variable, value in kept:
        variable.assign(value)
    if not greedy:
        _assign(floats, [total / len(chosen) for total in totals])
        if verbose:
            print(f"average_checkpoints: averaged {_describe(chosen)}")
        return model
    assert resolved is not None  # greedy always resolves the direction
    return _greedy(model, floats, chosen, values, validation_data, monitor, resolved, verbose)


def _check_choice(
    which: Any, k: Any, monitor: Any, mode: Any, need_mode: bool
) -> tuple[str, int, str, str | None]:
    which = validation.one_of("which", which, ranking.AVERAGE_WHICH)
    k = validation.positive_int("k", k)
    monitor = validation.non_empty_str("monitor", monitor)
    mode = validation.one_of("mode", mode, ranking.MODES)
    resolved = ranking.resolve_mode(monitor, mode)
    if resolved is None and need_mode:
        raise ValueError(
            f"Argument `mode` is 'auto', and the name {monitor!r} does not tell whether higher "
            "is better. Pass mode='min' or mode='max'."
        )
    return which, k, monitor, resolved


def _choose(
    directory: str | os.PathLike[str], which: str, k: int, monitor: str, mode: str | None
) -> tuple[list[CheckpointRecord], list[CheckpointRecord]]:
    """The chosen records, best (or newest) first, and the same in commit order."""
    path, manifest = committed_manifest(directory)
    chosen = ranking.checkpoints_to_average(manifest.records, which, k, monitor, mode)
    if not chosen:
        if which == "best" and manifest.records:
            raise FileNotFoundError(f"{path} has no checkpoint with the metric {monitor!r}.")
        raise FileNotFoundError(f"{path} has no checkpoint to average.")
    if len(chosen) < k:
        warnings.warn(
            f"average_checkpoints: k={k}, but {path} has only {len(chosen)} checkpoint(s) to "
            f"average ({which!r}); averaging those.",
            UserWarning,
            stacklevel=3,
        )
    paths = {record.path for record in chosen}
    return chosen, [record for record in manifest.records if record.path in paths]


def _float_variables(model: keras.Model) -> list[Any]:
    import keras

    return [
        variable
        for variable in model.variables
        if keras.backend.is_float_dtype(keras.backend.standardize_dtype(variable.dtype))
    ]


def _not_averaged(model: keras.Model) -> list[Any]:
    """The model's variables that are not floating-point, and its optimizer's (if built)."""
    averaged = {id(variable) for variable in _float_variables(model)}
    optimizer = getattr(model, "optimizer", None)
    optimizer_variables = list(optimizer.variables) if optimizer is not None else []
    return [
        variable for variable in model.variables if id(variable) not in averaged
    ] + optimizer_variables


def _host_value(variable: Any) -> np.ndarray:
    import keras

    return keras.ops.convert_to_numpy(variable.value).copy()


def _add(totals: list[np.ndarray], values: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``totals`` plus ``values``, in float64 (``values`` alone when ``totals`` is empty)."""
    import numpy as np

    if not totals:
        return [value.astype(np.float64) for value in values]
    for total, value in zip(totals, values, strict=True):
        total += value.astype(np.float64)
    return totals


def _assign_mean(floats: Sequence[Any], members: Sequence[Sequence[np.ndarray]]) -> None:
    """Sets each variable to the mean of ``members``' values."""
    totals: list[np.ndarray] = []
    for member in members:
        totals = _add(totals, member)
    _assign(floats, [total / len(members) for total in totals])


def _assign(floats: Sequence[Any], means: Sequence[np.ndarray]) -> None:
    """Rounds each float64 mean once to its variable's dtype and assigns it.

    A float64 sum divided once is exact for identical float32 values (``k * x`` and its
    division by ``k`` are exact in float64), and for two values it is ``(a + b) / 2`` rounded
    to float32.
    """
    import keras
    import numpy as np

    for variable, mean in zip(floats, means, strict=True):
        dtype = keras.backend.standardize_dtype(variable.dtype)
        if dtype in ("float16", "float32", "float64"):
            variable.assign(mean.astype(dtype))
        else:  # bfloat16 and other dtypes NumPy lacks: rounded through float32 by the backend
            variable.assign(keras.ops.cast(mean.astype(np.float32), dtype))


def _check_compiled(model: keras.Model) -> None:
    if not getattr(model, "compiled", False):
        raise ValueError(
            "greedy=True evaluates the model on `validation_data`, so the model must be "
            "compiled: call model.compile(loss=..., metrics=[...]) on the `model` passed."
        )


def _score(model: keras.Model, validation_data: Any, monitor: str) -> float:
    import keras

    if isinstance(validation_data, (tuple, list)):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(tuple(validation_data))
        results = model.evaluate(x, y, sample_weight=sample_weight, verbose=0, return_dict=True)
    else:
        results = model.evaluate(validation_data, verbose=0, return_dict=True)
    name = monitor.removeprefix("val_")
    if name not in results:
        raise ValueError(
            f"Argument `monitor` must name a metric model.evaluate returns (without the 'val_' "
            f"prefix: {sorted(results)}). Received: monitor={monitor!r}"
        )
    return float(results[name])


def _greedy(
    model: keras.Model,
    floats: Sequence[Any],
    chosen: Sequence[CheckpointRecord],
    values: dict[str, list[np.ndarray]],
    validation_data: Any,
    monitor: str,
    mode: str,
    verbose: int,
) -> keras.Model:
    """The greedy soup: candidates ranked by their own score on ``validation_data``, the best
    first; each next one kept only if the mean with it scores better."""
    scores = []
    for record in chosen:
        _assign_mean(floats, [values[record.path]])
        scores.append(_score(model, validation_data, monitor))
    order = ranking.ranked(scores, mode)
    if math.isnan(scores[order[0]]):
        raise ValueError(
            f"Every chosen checkpoint scores NaN for {monitor!r} on `validation_data`."
        )
    soup = [chosen[order[0]]]
    best = scores[order[0]]
    if verbose:
        print(f"average_checkpoints: {chosen[order[0]].filename}: {monitor}={best:.6g} (kept)")
    for index in order[1:]:
        candidate = chosen[index]
        _assign_mean(floats, [values[record.path] for record in [*soup, candidate]])
        score = _score(model, validation_data, monitor)
        kept = ranking.is_improvement(score, best, mode)
        if kept:
            soup.append(candidate)
            best = score
        if verbose:
            verdict = "kept" if kept else "left out"
            print(f"average_checkpoints: + {candidate.filename}: {monitor}={score:.6g} ({verdict})")
    _assign_mean(floats, [values[record.path] for record in soup])
    if verbose:
        print(f"average_checkpoints: averaged {_describe(soup)}")
    return model


def _describe(records: Sequence[CheckpointRecord]) -> str:
    names = ", ".join(f"{record.filename} (epoch {record.epoch})" for record in records)
    return f"{len(records)} checkpoint(s): {names}"


# BatchNormalization statistics of averaged weights -------------------------------------------


def batch_norm_layers(model: keras.Model) -> list[Any]:
    """The model's ``BatchNormalization`` layers, those of nested models included."""
    import keras

    found: list[Any] = []
    seen: set[int] = set()

    def walk(layer: Any) -> None:
        if id(layer) in seen:
            return
        seen.add(id(layer))
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        for inner in getattr(layer, "layers", None) or []:
            walk(inner)

    for layer in model.layers:
        walk(layer)
    return found


def recompute_batch_norm(model: keras.Model, data: Any, batch_size: int = 32) -> int:
    """Sets every ``BatchNormalization`` layer's moving mean and variance to the mean, over the
    batches of ``data``, of the batch statistics the model computes with its current weights
    (PyTorch's ``torch.optim.swa_utils.update_bn``: each batch counts once).

    The model runs forward eagerly in training mode, one batch at a time, with each layer's
    ``momentum`` set to ``n / (n + 1)`` for batch ``n``, so Keras's own update
    ``moving = moving * momentum + batch * (1 - momentum)`` keeps a running mean; the momenta
    are put back afterwards. Other layers run in training mode too (Dropout drops), as in
    PyTorch.

    Args:
        model: A built model.
        data: Inputs: an array (cut into batches of ``batch_size``), or an iterable of batches,
            each the inputs or a tuple whose first item is the inputs (``(x, y)``, a
            ``tf.data.Dataset``...).
        batch_size: The batch size for an array.

    Returns:
        The number of batches read (0: nothing changed).
    """
    import numpy as np

    layers = batch_norm_layers(model)
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    batches = 0
    try:
        for batch in _input_batches(data, batch_size, np):
            for layer in layers:
                layer.momentum = batches / (batches + 1)
            model(batch, training=True)
            batches += 1
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    return batches


def _input_batches(data: Any, batch_size: int, np: Any) -> Any:
    if isinstance(data, np.ndarray) or hasattr(data, "shape"):
        for start in range(0, len(data), batch_size):
            yield data[start : start + batch_size]
        return
    for batch in data:
        yield batch[0] if isinstance(batch, tuple) else batch
