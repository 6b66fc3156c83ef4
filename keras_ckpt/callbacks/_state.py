"""The state protocol every keras_ckpt callback follows, and users' callbacks may follow too.

``state_dict()`` returns plain data (JSON-able, and NumPy arrays, which ResumeFromLatest writes
into the checkpoint's weights file rather than its JSON manifest; a state must not share an
array it changes later); ``load_state_dict(state)`` takes it back. Keras
callbacks reset their counters in ``on_train_begin``, so state loaded before that hook is kept
and applied after the reset; state loaded while training runs (ResumeFromLatest restores from
its own ``on_train_begin``, which may come after this callback's) is applied at once. Fields
added later are read with ``.get(key, default)``, so old checkpoints still load.
"""

from __future__ import annotations

from typing import Any


class Resumable:
    """Mixin: implement ``state_dict`` and ``_apply_state``; call ``_begin_training`` at the end
    of ``on_train_begin`` and ``_end_training`` in ``on_train_end``."""

    _training = False
    _pending_state: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def _apply_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Applied now if training is running, else after the next ``on_train_begin`` reset."""
        if self._training:
            self._apply_state(dict(state))
        else:
            self._pending_state = dict(state)

    def _begin_training(self) -> None:
        self._training = True
        if self._pending_state is not None:
            state, self._pending_state = self._pending_state, None
            self._apply_state(state)

    def _end_training(self) -> None:
        self._training = False
