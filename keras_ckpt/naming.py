"""Checkpoint file names from templates like ``"epoch{epoch:03d}-{val_loss:.4f}"``. Pure."""

from __future__ import annotations

import os
import string
from collections.abc import Mapping
from typing import Any

from keras_ckpt.records import (
    DEDUP_EXTENSION,
    LOCK_NAME,
    MANIFEST_NAME,
    SHARDED_EXTENSION,
    TEMP_PREFIX,
)

MODEL_EXTENSIONS = (".keras", ".h5")
WEIGHTS_EXTENSION = ".weights.h5"
# Keras's sharded weights: the index; its shards are ``<stem>_00000.weights.h5``, ... beside it.
SHARDED_WEIGHTS_EXTENSION = SHARDED_EXTENSION

# What the checkpoint store names for itself in a directory: its temporary files, its manifest
# and its lock. No checkpoint may be named like them.
RESERVED_NAMES = (MANIFEST_NAME, LOCK_NAME)

# The fields that are counters; every other field is a metric, a float in the logs.
INTEGER_FIELDS = ("epoch", "step", "batch")
_SAMPLE_INTEGER = 1
_SAMPLE_METRIC = 0.5


def template_fields(template: str, argument: str = "filename") -> list[str]:
    """The field names a template uses, in order.

    Args:
        template: A ``str.format`` template.
        argument: The argument the template came in, named by the errors.

    Raises:
        ValueError: If the template is not valid ``str.format`` syntax, or uses a positional
            field (``{}``, ``{0}``).

    Example:
        >>> template_fields("epoch{epoch:03d}-{val_loss:.4f}.keras")
        ['epoch', 'val_loss']
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        raise ValueError(
            f"Argument `{argument}` is not a valid format template ({error}). "
            f"Received: {argument}={template!r}"
        ) from None
    names = []
    for _, field_name, _, _ in parsed:
        if field_name is None:
            continue
        root = field_name.split(".")[0].split("[")[0]
        if not root or root.isdigit():
            raise ValueError(
                f"Argument `{argument}` must name its fields, like {{epoch}} or {{val_loss}}; "
                f"positional fields are not allowed. Received: {argument}={template!r}"
            )
        names.append(root)
    return names


def check_renders(template: str, argument: str = "filename") -> str:
    """Fills ``template`` once with sample values, so that a bad template fails now, not after
    an epoch of training; returns the sample.

    ``{epoch}``, ``{step}`` and ``{batch}`` get an int, every other field (a metric) a float, as
    in training. The file name (the last path component) must not be one the checkpoint store
    keeps for itself: a ``.keras_ckpt-tmp-`` prefix, ``keras_ckpt.json``, ``.keras_ckpt.lock``.

    Raises:
        ValueError: Naming ``argument``, if the template does not parse, a format spec or
            conversion does not apply to its field's type (``{epoch:s}``, ``{val_loss:d}``), or
            the name is reserved or holds a NUL.

    Example:
        >>> check_renders("epoch{epoch:03d}-{val_loss:.4f}.keras")
        'epoch001-0.5000.keras'
        >>> check_renders("e{epoch:s}.keras")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: Argument `filename` has a format spec that does not apply to its field ...
    """
    samples = {
        name: _SAMPLE_INTEGER if name in INTEGER_FIELDS else _SAMPLE_METRIC
        for name in template_fields(template, argument)
    }
    try:
        rendered = template.format(**samples)
    except ValueError as error:
        raise ValueError(
            f"Argument `{argument}` has a format spec that does not apply to its field ({error}); "
            "{epoch}, {step} and {batch} are integers, metrics are floats. "
            f"Received: {argument}={template!r}"
        ) from None
    name = os.path.basename(rendered)
    if "\0" in rendered:
        raise ValueError(
            f"Argument `{argument}` must not contain a NUL character. "
            f"Received: {argument}={template!r}"
        )
    if name.startswith(TEMP_PREFIX) or name in RESERVED_NAMES:
        reserved = ", ".join(repr(reserved) for reserved in (f"{TEMP_PREFIX}*", *RESERVED_NAMES))
        raise ValueError(
            f"Argument `{argument}` names a file that the checkpoint store keeps for itself "
            f"({reserved}); choose another name. Received: {argument}={template!r}"
        )
    return rendered


def format_filename(template: str, values: Mapping[str, Any]) -> str:
    """Fills ``template`` from ``values``.

    Raises:
        KeyError: If the template names a key that ``values`` lacks; the message lists the
            available keys.

    Example:
        >>> format_filename("epoch{epoch:02d}-{val_loss:.2f}.keras", {"epoch": 3, "val_loss": 0.25})
        'epoch03-0.25.keras'
    """
    missing = [name for name in template_fields(template) if name not in values]
    if missing:
        raise KeyError(
            f"Failed to format this callback filepath: {template!r}. Reason: no value for "
            f"{', '.join(repr(name) for name in missing)}; available keys: {sorted(values)}"
        )
    return template.format(**values)


def default_best_template(monitor: str) -> str:
    """BestCheckpoint's default file name: the epoch and the monitored value.

    Raises:
        ValueError: Naming ``monitor``, if the metric's name cannot be a field of a file name
            template (it holds a path separator, a NUL, or one of ``{}:!.[]``).

    Example:
        >>> default_best_template("val_loss")
        'epoch{epoch:03d}-val_loss{val_loss:.4f}'
    """
    template = "epoch{epoch:03d}-" + monitor + "{" + monitor + ":.4f}"
    separators = {character for character in (os.sep, os.altsep, "\0") if character}
    try:
        fits = template_fields(template) == ["epoch", monitor]
    except ValueError:
        fits = False
    if not fits or any(character in monitor for character in separators):
        raise ValueError(
            "Argument `monitor` cannot go into the default file name "
            "'epoch{epoch:03d}-<monitor>{<monitor>:.4f}': it holds a path separator, a NUL or "
            "one of '{}:!.[]'. Pass `filename` (a template without it) to use this metric. "
            f"Received: monitor={monitor!r}"
        )
    return template


def with_extension(
    template: str, save_weights_only: bool, sharded: bool = False, dedup: bool = False
) -> str:
    """Appends the Keras extension a template lacks; rejects one that contradicts the kind.

    ``sharded`` (a ``max_shard_size`` was given) asks for Keras's sharded weights,
    ``.weights.json``, which holds weights only. ``dedup`` (weights stored once) asks for a
    dedup index, ``.weights.dedup.json``, weights only too.

    Example:
        >>> with_extension("best-{epoch}", save_weights_only=True)
        'best-{epoch}.weights.h5'
        >>> with_extension("best-{epoch}", save_weights_only=True, sharded=True)
        'best-{epoch}.weights.json'
    """
    if dedup or template.endswith(DEDUP_EXTENSION):
        return dedup_template(template, save_weights_only, dedup)
    if sharded or template.endswith(SHARDED_WEIGHTS_EXTENSION):
        return sharded_template(template, "filename", save_weights_only, sharded)
    if template.endswith(WEIGHTS_EXTENSION):
        if not save_weights_only:
            raise ValueError(
                "Argument `filename` ends in `.weights.h5` but `save_weights_only=False` saves a "
                f"whole model (`.keras`). Received: filename={template!r}"
            )
        return template
    if template.endswith(MODEL_EXTENSIONS):
        if save_weights_only:
            raise ValueError(
                "Argument `filename` must end in `.weights.h5` (or have no extension) when "
                f"`save_weights_only=True`. Received: filename={template!r}"
            )
        return template
    return template + (WEIGHTS_EXTENSION if save_weights_only else ".keras")


def dedup_template(
    template: str, save_weights_only: bool, dedup: bool, argument: str = "filename"
) -> str:
    """``template`` for weights stored once (``dedup=True``): it ends in
    ``.weights.dedup.json`` (a native callback's ``filename`` may have no extension: it is
    added), with ``save_weights_only``.

    Raises:
        ValueError: Naming ``argument`` (and ``dedup`` or ``save_weights_only``).

    Example:
        >>> dedup_template("e{epoch}", True, True)
        'e{epoch}.weights.dedup.json'
    """
    if not dedup:
        raise ValueError(
            f"Argument `{argument}` ends in `{DEDUP_EXTENSION}` (weights stored once), which "
            f"needs `dedup=True`. Received: {argument}={template!r}, dedup=False"
        )
    if not save_weights_only:
        raise ValueError(
            "Argument `dedup=True` stores weights once, per variable: it saves weights only, "
            "not whole `.keras` models; pass `save_weights_only=True`. Received: "
            "dedup=True, save_weights_only=False"
        )
    if template.endswith(DEDUP_EXTENSION):
        return template
    known = (WEIGHTS_EXTENSION, SHARDED_WEIGHTS_EXTENSION, *MODEL_EXTENSIONS)
    if argument == "filename" and not template.endswith(known):
        return template + DEDUP_EXTENSION
    raise ValueError(
        f"Argument `{argument}` must end in `{DEDUP_EXTENSION}` when `dedup=True`. "
        f"Received: {argument}={template!r}"
    )


def sharded_template(template: str, argument: str, save_weights_only: bool, sharded: bool) -> str:
    """``template`` for Keras's sharded weights: with ``sharded`` (a ``max_shard_size``), it
    must end in ``.weights.json`` (a native callback's ``filename`` may have no extension: it
    is added) with ``save_weights_only``; without, it must not end in ``.weights.json``.

    Raises:
        ValueError: Naming ``argument`` (and ``max_shard_size`` or ``save_weights_only``).

    Example:
        >>> sharded_template("e{epoch}.weights.json", "filepath", True, True)
        'e{epoch}.weights.json'
    """
    if not sharded:
        raise ValueError(
            f"Argument `{argument}` ends in `{SHARDED_WEIGHTS_EXTENSION}` (Keras's sharded "
            "weights), which needs `max_shard_size` (the largest shard, in GB, e.g. 2.0). "
            f"Received: {argument}={template!r}, max_shard_size=None"
        )
    if not save_weights_only:
        raise ValueError(
            f"Argument `max_shard_size` saves sharded weights (`{SHARDED_WEIGHTS_EXTENSION}`), "
            f"which hold weights only: pass `save_weights_only=True`. Received: {argument}="
            f"{template!r}, save_weights_only=False"
        )
    if template.endswith(SHARDED_WEIGHTS_EXTENSION):
        return template
    if argument == "filename" and not template.endswith((WEIGHTS_EXTENSION, *MODEL_EXTENSIONS)):
        return template + SHARDED_WEIGHTS_EXTENSION
    raise ValueError(
        f"Argument `{argument}` must end in `{SHARDED_WEIGHTS_EXTENSION}` when `max_shard_size` "
        f"is set (Keras's sharded weights). Received: {argument}={template!r}"
    )


def next_free_name(filename: str, taken: set[str]) -> str:
    """``filename``, or with ``-v1``, ``-v2``, ... before its extension if that name is taken.

    Example:
        >>> next_free_name("best.weights.h5", {"best.weights.h5"})
        'best-v1.weights.h5'
    """
    if filename not in taken:
        return filename
    extensions = (WEIGHTS_EXTENSION, SHARDED_WEIGHTS_EXTENSION, DEDUP_EXTENSION, *MODEL_EXTENSIONS)
    extension = next((ext for ext in extensions if filename.endswith(ext)), "")
    stem = filename[: len(filename) - len(extension)]
    version = 1
    while f"{stem}-v{version}{extension}" in taken:
        version += 1
    return f"{stem}-v{version}{extension}"


def checked_template(
    filename: Any,
    save_weights_only: bool,
    varying_reason: str | None,
    sharded: bool = False,
    dedup: bool = False,
) -> str:
    """Validates a native callback's ``filename`` argument and adds the Keras extension.

    The template is filled once with sample values (``check_renders``), so that a format spec
    that cannot apply, or a name the store keeps for itself, is an error now.

    Args:
        filename: The template the user passed.
        save_weights_only: Which extension it must have.
        varying_reason: If set, the template must contain a field, and this says why (e.g.
            "`top_k` > 1"): a fixed name would make every save overwrite the last.

    Example:
        >>> checked_template("e{epoch}", save_weights_only=False, varying_reason=None)
        'e{epoch}.keras'
    """
    if not isinstance(filename, str) or not filename:
        raise ValueError(
            f"Argument `filename` must be a non-empty string. Received: filename={filename!r}"
        )
    if os.sep in filename or (os.altsep and os.altsep in filename):
        raise ValueError(
            "Argument `filename` must be a file name without directories. "
            f"Received: filename={filename!r}"
        )
    template = with_extension(filename, save_weights_only, sharded, dedup)
    check_renders(template, "filename")
    if not template_fields(template) and varying_reason:
        raise ValueError(
            f"Argument `filename` must contain a field such as {{epoch}} when {varying_reason}, "
            f"or every save would overwrite the last. Received: filename={filename!r}"
        )
    return template
