"""The demo behind ``keras-ckpt demo``: best-model tracking on a tiny model, start to finish."""

from __future__ import annotations

import os

import numpy as np

from keras_ckpt.records import CheckpointRecord


def make_data(seed: int, samples: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """A small noisy regression problem: y = x . w + noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(samples, 8)).astype("float32")
    w = rng.normal(size=(8, 1)).astype("float32")
    y = x @ w + 0.3 * rng.normal(size=(samples, 1)).astype("float32")
    return x, y


def run_demo(
    directory: str, epochs: int = 8, top_k: int = 3, seed: int = 0
) -> list[CheckpointRecord]:
    """Trains a tiny model with ``BestCheckpoint(top_k=top_k)`` into ``directory``.

    Returns this run's kept checkpoints, best first.
    """
    import keras

    from keras_ckpt.callbacks.best_checkpoint import BestCheckpoint

    keras.utils.set_random_seed(seed)
    x, y = make_data(seed)
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse", metrics=["mae"])
    best = BestCheckpoint(directory, monitor="val_loss", top_k=top_k)
    model.fit(
        x, y, validation_split=0.25, epochs=epochs, batch_size=32, verbose=0, callbacks=[best]
    )
    return sorted(best.kept, key=lambda r: r.metrics["val_loss"])


def main(directory: str, epochs: int, top_k: int, seed: int) -> int:
    records = run_demo(directory, epochs=epochs, top_k=top_k, seed=seed)
    print(f"Trained {epochs} epochs; kept the {len(records)} best checkpoints in {directory}:")
    print(f"  {'file':<34} {'epoch':>5} {'val_loss':>9} {'bytes':>8}")
    for record in records:
        print(
            f"  {record.filename:<34} {record.epoch:>5} "
            f"{record.metrics['val_loss']:>9.4f} {record.size:>8}"
        )
    best_link = os.path.join(directory, "best.keras")
    print(f"Best model: {records[0].path}")
    print(f"  also at {best_link} (a hard link, no extra bytes)")
    print(f"Load it with keras_ckpt.load_best({directory!r})")
    print(f"  or, without keras_ckpt, keras.saving.load_model({best_link!r})")
    return 0
