"""The random generators a run draws from, captured and restored: Python's, NumPy's and
PyTorch's global ones (data shuffling, augmentation, unseeded Dropout on PyTorch) and the model's
Keras seed generators (Dropout and other random layers, which Keras does not save)."""

from __future__ import annotations

import base64
import random
from typing import Any

import keras
import numpy as np

from keras_ckpt.keras_adapter import seed_generators


def host_generators() -> dict[str, Any]:
    """Python's and NumPy's global generators (and PyTorch's, on that backend) as of now."""
    version, python_state, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    generators: dict[str, Any] = {
        "python": [version, list(python_state), gauss],
        "numpy": [name, np.asarray(keys).tolist(), int(position), int(has_gauss), float(cached)],
    }
    if keras.backend.backend() == "torch":
        generators["torch"] = _torch_generators()
    return generators


def _torch_generators() -> dict[str, Any]:
    """PyTorch's global generators: its DataLoader shuffles NumPy inputs with the CPU one, and
    Keras's unseeded Dropout draws from the one of the device it runs on."""
    import torch

    def encode(state: Any) -> str:
        return base64.b64encode(state.numpy().tobytes()).decode("ascii")

    states: dict[str, Any] = {"cpu": encode(torch.get_rng_state())}
    if torch.cuda.is_available():
        states["cuda"] = [encode(s) for s in torch.cuda.get_rng_state_all()]
    return states


def set_torch_generators(states: dict[str, Any]) -> None:
    """Puts back PyTorch's global generators as ``_torch_generators`` captured them."""
    import torch

    def decode(text: str) -> Any:
        return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)

    torch.set_rng_state(decode(states["cpu"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([decode(s) for s in states["cuda"]])


def random_state(model: keras.Model, host: dict[str, Any]) -> dict[str, Any]:
    """``host`` (from ``host_generators``) plus the model's seed-generator states as of now."""
    state = {
        **host,
        "seed_generators": [
            keras.ops.convert_to_numpy(g.state.value).tolist() for g in seed_generators(model)
        ],
    }
    if keras.backend.backend() == "torch":
        # Training draws from these too (Dropout): a mid-epoch resume replays the pipeline from
        # the epoch-start states above, then continues training from these.
        state["torch_now"] = _torch_generators()
    return state


def set_random_state(model: keras.Model, state: dict[str, Any]) -> None:
    """Restores what ``random_state`` captured. Seed-generator states are restored only when
    the model has as many seed generators as were saved."""
    if "python" in state:
        version, python_state, gauss = state["python"]
        random.setstate((version, tuple(python_state), gauss))
    if "numpy" in state:
        name, keys, position, has_gauss, cached = state["numpy"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    if "torch" in state and keras.backend.backend() == "torch":
        set_torch_generators(state["torch"])
    set_seed_generators(model, state.get("seed_generators", []))


def set_seed_generators(model: keras.Model, saved: list[Any]) -> None:
    """Restores the model's seed-generator states as ``random_state`` captured them (only when
    the model has as many seed generators as were saved)."""
    generators = seed_generators(model)
    if len(saved) == len(generators):
        for generator, value in zip(generators, saved, strict=True):
            generator.state.assign(np.array(value, dtype=generator.state.dtype))
