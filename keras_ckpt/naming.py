"""Checkpoint file names from templates like ``"epoch{epoch:03d}-{val_loss:.4f}"``. Pure."""

from __future__ import annotations

import os
import string
from collections.abc import Mapping
from typing import Any

MODEL_EXTENSIONS = (".keras", ".h5")
WEIGHTS_EXTENSION = ".weights.h5"


def template_fields(template: str) -> list[str]:
    """The field names a template uses, in order.

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
            f"Argument `filename` is not a valid format template ({error}). "
            f"Received: filename={template!r}"
        ) from None
    names = []
    for _, field_name, _, _ in parsed:
        if field_name is None:
            continue
        root = field_name.split(".")[0].split("[")[0]
        if not root or root.isdigit():
            raise ValueError(
                "Argument `filename` must name its fields, like {epoch} or {val_loss}; "
                f"positional fields are not allowed. Received: filename={template!r}"
            )
        names.append(root)
    return names


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
    """BestCheckpoint's default file name: the epoch and the monitored value."""
    return "epoch{epoch:03d}-" + monitor + "{" + monitor + ":.4f}"


def with_extension(template: str, save_weights_only: bool) -> str:
    """Appends the Keras extension a template lacks; rejects one that contradicts the kind.

    Example:
        >>> with_extension("best-{epoch}", save_weights_only=True)
        'best-{epoch}.weights.h5'
    """
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


def next_free_name(filename: str, taken: set[str]) -> str:
    """``filename``, or with ``-v1``, ``-v2``, ... before its extension if that name is taken.

    Example:
        >>> next_free_name("best.weights.h5", {"best.weights.h5"})
        'best-v1.weights.h5'
    """
    if filename not in taken:
        return filename
    extension = next(
        (ext for ext in (WEIGHTS_EXTENSION, *MODEL_EXTENSIONS) if filename.endswith(ext)), ""
    )
    stem = filename[: len(filename) - len(extension)]
    version = 1
    while f"{stem}-v{version}{extension}" in taken:
        version += 1
    return f"{stem}-v{version}{extension}"


def checked_template(filename: Any, save_weights_only: bool, varying_reason: str | None) -> str:
    """Validates a native callback's ``filename`` argument and adds the Keras extension.

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
    template = with_extension(filename, save_weights_only)
    if not template_fields(template) and varying_reason:
        raise ValueError(
            f"Argument `filename` must contain a field such as {{epoch}} when {varying_reason}, "
            f"or every save would overwrite the last. Received: filename={filename!r}"
        )
    return template
