"""Tier 1: pure logic on fabricated records, no Keras."""

import json
import math
import subprocess
import sys
from types import SimpleNamespace

import pytest

import keras_ckpt
from keras_ckpt import naming, ranking, validation
from keras_ckpt.policies import KeepAll, KeepBest
from keras_ckpt.records import CheckpointRecord, Manifest
from keras_ckpt.triggers import IntervalTrigger

PURE_MODULES = [
    "keras_ckpt",
    "keras_ckpt.decisions",
    "keras_ckpt.naming",
    "keras_ckpt.policies",
    "keras_ckpt.ranking",
    "keras_ckpt.records",
    "keras_ckpt.store",
    "keras_ckpt.swa",
    "keras_ckpt.triggers",
    "keras_ckpt.validation",
    "keras_ckpt.writer",
]


def test_pure_modules_import_no_keras():
    code = (
        "import sys\n"
        + "".join(f"import {name}\n" for name in PURE_MODULES)
        + "heavy = [m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules]\n"
        + "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_all_is_complete_and_sorted():
    assert keras_ckpt.__all__ == sorted(keras_ckpt.__all__)
    public = {name for name in keras_ckpt._EXPORTS}
    assert set(keras_ckpt.__all__) == public
    for name in keras_ckpt.__all__:
        assert getattr(keras_ckpt, name) is not None


def test_every_public_class_and_function_has_its_docstring():
    # A class attribute above the docstring silently makes __doc__ None (help() shows nothing).
    import keras_ckpt.schedules

    undocumented = [
        f"{module.__name__}.{name}"
        for module in (keras_ckpt, keras_ckpt.schedules)
        for name in getattr(module, "__all__", dir(module))
        if callable(getattr(module, name)) and not (getattr(module, name).__doc__ or "").strip()
    ]
    assert undocumented == []


# Ranking --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("monitor", "mode", "direction", "expected"),
    [
        ("val_loss", "auto", None, "min"),
        ("loss", "auto", None, "min"),
        ("val_accuracy", "auto", "up", "max"),
        ("val_mae", "auto", "down", "min"),
        ("val_custom", "auto", None, None),
        ("val_accuracy", "min", "up", "min"),
        ("val_loss", "max", None, "max"),
    ],
)
def test_resolve_mode(monitor, mode, direction, expected):
    assert ranking.resolve_mode(monitor, mode, direction) == expected


@pytest.mark.parametrize(
    ("current", "reference", "mode", "min_delta", "expected"),
    [
        (0.5, None, "min", 0.0, True),
        (0.5, 0.6, "min", 0.0, True),
        (0.6, 0.6, "min", 0.0, False),
        (0.55, 0.6, "min", 0.1, False),
        (0.45, 0.6, "min", 0.1, True),
        (0.7, 0.6, "max", 0.0, True),
        (0.65, 0.6, "max", 0.1, False),
        (math.nan, None, "min", 0.0, False),
        (math.nan, 0.5, "max", 0.0, False),
        (0.5, math.nan, "min", 0.0, True),
    ],
)
def test_is_improvement(current, reference, mode, min_delta, expected):
    assert ranking.is_improvement(current, reference, mode, min_delta) is expected


def test_ranked_puts_nan_last_and_keeps_older_on_ties():
    assert ranking.ranked([0.3, math.nan, 0.1, 0.3], "min") == [2, 0, 3, 1]
    assert ranking.ranked([0.3, math.nan, 0.1, 0.3], "max") == [0, 3, 2, 1]


@pytest.mark.parametrize(
    ("kept", "candidate", "k", "min_delta", "expected"),
    [
        ([], 1.0, 1, 0.0, True),
        ([0.5], 0.6, 1, 0.0, False),
        ([0.5], 0.4, 1, 0.0, True),
        ([0.5], 0.45, 1, 0.1, False),
        ([0.5], 0.6, 2, 0.0, True),
        ([0.5, 0.3], 0.6, 2, 0.0, False),
        ([0.5, 0.3], 0.4, 2, 0.0, True),
        ([0.5, 0.3], math.inf, 3, 0.0, False),
        ([], math.nan, 3, 0.0, False),
    ],
)
def test_enters_top_k(kept, candidate, k, min_delta, expected):
    assert ranking.enters_top_k(kept, candidate, k, "min", min_delta) is expected


# Policies -------------------------------------------------------------------------------


def fake(value, epoch=1):
    metrics = {} if value is None else {"val_loss": value}
    return SimpleNamespace(epoch=epoch, step=epoch * 10, metrics=metrics, time=float(epoch))


def test_keep_best_scripted_sequence():
    # Replays what a top-3 run keeps after each epoch of a scripted val_loss sequence.
    sequence = [0.9, 0.7, 0.8, 0.6, 0.95, 0.5, 0.65]
    policy = KeepBest(3, "val_loss", "min")
    kept = []
    for epoch, value in enumerate(sequence, start=1):
        kept.append(fake(value, epoch))
        flags = policy.keep(kept)
        kept = [record for record, flag in zip(kept, flags, strict=True) if flag]
    assert [r.metrics["val_loss"] for r in kept] == [0.6, 0.5, 0.65]


def test_keep_best_never_keeps_nan_or_missing():
    records = [fake(math.nan), fake(None), fake(0.4)]
    assert KeepBest(3, "val_loss", "min").keep(records) == [False, False, True]


def test_keep_best_max_mode():
    records = [fake(v) for v in (0.1, 0.9, 0.5)]
    assert KeepBest(1, "val_loss", "max").keep(records) == [False, True, False]


def test_keep_all():
    assert KeepAll().keep([fake(1.0), fake(None)]) == [True, True]


# Naming ---------------------------------------------------------------------------------


def test_template_fields_and_format():
    template = "epoch{epoch:03d}-{val_loss:.4f}-{step}.keras"
    assert naming.template_fields(template) == ["epoch", "val_loss", "step"]
    values = {"epoch": 3, "val_loss": 0.123456, "step": 30}
    assert naming.format_filename(template, values) == "epoch003-0.1235-30.keras"


def test_format_names_missing_key_and_available_keys():
    with pytest.raises(
        KeyError, match=r"no value for 'val_acc'.*available keys: \['epoch', 'loss'\]"
    ):
        naming.format_filename("{epoch}-{val_acc}.keras", {"epoch": 1, "loss": 0.1})


@pytest.mark.parametrize("template", ["{epoch", "{}.keras", "{0}.keras", "epoch}"])
def test_bad_template_syntax(template):
    with pytest.raises(ValueError, match="Argument `filename`"):
        naming.template_fields(template)


def test_with_extension():
    assert naming.with_extension("a", save_weights_only=False) == "a.keras"
    assert naming.with_extension("a", save_weights_only=True) == "a.weights.h5"
    assert naming.with_extension("a.keras", save_weights_only=False) == "a.keras"
    with pytest.raises(ValueError, match=r"must end in `.weights.h5`.*filename='a.keras'"):
        naming.with_extension("a.keras", save_weights_only=True)
    with pytest.raises(ValueError, match=r"save_weights_only=False.*filename='a.weights.h5'"):
        naming.with_extension("a.weights.h5", save_weights_only=False)


def test_next_free_name():
    assert naming.next_free_name("a.keras", set()) == "a.keras"
    assert naming.next_free_name("a.keras", {"a.keras", "a-v1.keras"}) == "a-v2.keras"
    assert naming.next_free_name("w.weights.h5", {"w.weights.h5"}) == "w-v1.weights.h5"


def test_default_best_template():
    template = naming.default_best_template("val_loss")
    assert (
        naming.format_filename(template, {"epoch": 7, "val_loss": 0.5}) == "epoch007-val_loss0.5000"
    )


# Triggers -------------------------------------------------------------------------------


def keras_save_freq(n):
    """The trigger of ``ModelCheckpoint(save_freq=n)``: Keras's count of batches."""
    return IntervalTrigger(every_steps=n, step_counting="since_last")


def test_keras_batch_count_runs_across_epochs():
    # 5 batches per epoch, save every 15 batches: fires at the end of epochs 3, 6, 9.
    trigger = keras_save_freq(15)
    fired = [
        (epoch, batch)
        for epoch in range(10)
        for batch in range(5)
        if trigger.due_after_batch(batch)
    ]
    assert fired == [(2, 4), (5, 4), (8, 4)]


def test_keras_batch_count_with_steps_per_execution():
    # steps_per_execution=2 over 6 batches: Keras reports batches 1, 3, 5.
    trigger = keras_save_freq(4)
    assert [trigger.due_after_batch(batch) for batch in (1, 3, 5, 1, 3, 5)] == [
        False,
        True,
        False,
        True,
        False,
        True,
    ]


def test_keras_batch_count_restarts_with_start():
    trigger = keras_save_freq(2)
    trigger.due_after_batch(0)
    trigger.start(now=0.0)
    assert trigger.due_after_batch(0) is False


@pytest.mark.parametrize(
    ("step_counting", "due_steps"),
    [
        # Reported every 3 steps (steps_per_execution=3), every_steps=4: a multiple of 4 was
        # passed at steps 6, 9, 12; Keras counts 4 steps since the last firing: 6, 12.
        ("multiples", [6, 9, 12]),
        ("since_last", [6, 12]),
    ],
)
def test_step_countings_differ_when_steps_skip_multiples(step_counting, due_steps):
    trigger = IntervalTrigger(every_steps=4, step_counting=step_counting)
    steps = [3, 6, 9, 12]
    assert [step for step in steps if trigger.due_mid_epoch(step, now=0.0)] == due_steps


@pytest.mark.parametrize("step_counting", ["multiples", "since_last"])
def test_batch_indices_and_steps_agree(step_counting):
    # due_after_batch(batch) is due_mid_epoch(step) with the step counted from the indices.
    by_batch = IntervalTrigger(every_steps=3, step_counting=step_counting)
    by_step = IntervalTrigger(every_steps=3, step_counting=step_counting)
    batches = [1, 3, 4, 0, 2, 4]  # 5 batches per epoch, uneven reports
    steps = [2, 4, 5, 6, 8, 10]
    assert [by_batch.due_after_batch(b) for b in batches] == [
        by_step.due_mid_epoch(s, now=0.0) for s in steps
    ]


def test_keras_batch_count_with_a_time_trigger_needs_the_time():
    trigger = IntervalTrigger(every_steps=10, every_seconds=60.0, step_counting="since_last")
    trigger.start(now=100.0)
    assert trigger.due_after_batch(0, now=130.0) is False
    assert trigger.due_after_batch(1, now=160.0) is True
    with pytest.raises(ValueError, match="needs `now`"):
        trigger.due_after_batch(2)


def test_unknown_step_counting_is_refused():
    with pytest.raises(ValueError, match=r"`step_counting` must be one of .*'keras'"):
        IntervalTrigger(every_steps=2, step_counting="keras")


# Records --------------------------------------------------------------------------------


def test_record_round_trips_non_finite_metrics(tmp_path):
    record = CheckpointRecord(
        path=str(tmp_path / "a.keras"),
        epoch=2,
        step=20,
        batch=None,
        metrics={"loss": math.nan, "val_loss": math.inf, "mae": 0.5},
        time=1.0,
        size=3,
        sha256="ab",
        keras_version="3",
        kind="model",
        run="r",
        kept_by=("X",),
    )
    text = json.dumps(Manifest(records=[record]).to_json(), allow_nan=False)
    back = Manifest.from_json(json.loads(text), str(tmp_path)).records[0]
    assert math.isnan(back.metrics["loss"]) and back.metrics["val_loss"] == math.inf
    assert back.path == record.path and back.kept_by == ("X",) and back.epoch == 2


def test_manifest_rejects_foreign_json(tmp_path):
    with pytest.raises(ValueError, match="not a keras_ckpt manifest"):
        Manifest.from_json({"format": "other"}, str(tmp_path))


# Validation -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "3", None])
def test_positive_int_rejects(value):
    with pytest.raises(
        ValueError,
        match=rf"Argument `top_k` must be a positive integer\. Received: top_k={value!r}",
    ):
        validation.positive_int("top_k", value)


@pytest.mark.parametrize("value", [-0.1, math.nan, math.inf, True, "0"])
def test_non_negative_float_rejects(value):
    with pytest.raises(ValueError, match="Argument `min_delta` must be a finite number >= 0"):
        validation.non_negative_float("min_delta", value)


def test_one_of_message():
    with pytest.raises(
        ValueError,
        match=r"Argument `mode` must be one of 'auto', 'min', 'max'\. Received: mode='mx'",
    ):
        validation.one_of("mode", "mx", ranking.MODES)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, r"must be a number > 0\. Received: every_seconds=0"),
        (-1.5, r"must be a number > 0\. Received: every_seconds=-1\.5"),
        (math.nan, r"must be a number > 0\. Received: every_seconds=nan"),
        (math.inf, r"must be finite\. Received: every_seconds=inf"),
        (True, r"must be a number > 0\. Received: every_seconds=True"),
        ("60", r"must be a number > 0\. Received: every_seconds='60'"),
    ],
)
def test_positive_seconds_rejects(value, message):
    with pytest.raises(ValueError, match=rf"Argument `every_seconds` {message}"):
        validation.positive_seconds("every_seconds", value)


def test_optional_passes_none_and_checks_the_rest():
    assert validation.optional(validation.positive_seconds, "every_seconds", None) is None
    assert validation.optional(validation.positive_seconds, "every_seconds", 2) == 2.0
    with pytest.raises(ValueError, match="Received: every_seconds=0"):
        validation.optional(validation.positive_seconds, "every_seconds", 0)


@pytest.mark.parametrize("keras_class", [None, "ModelCheckpoint", "BackupAndRestore"])
@pytest.mark.parametrize("value", ["epoch", 1, 500])
def test_save_freq_accepts(keras_class, value):
    assert validation.save_freq(value, keras_class) == value


# One check, three messages: keras_ckpt's idiom for ResumeFromLatest, Keras's opening words
# for the drop-ins (the tests of those classes pin the rest).
SAVE_FREQ_MESSAGES = {
    None: r"Argument `save_freq` must be a positive integer\. Received: save_freq={value!r}",
    "ModelCheckpoint": r"Unrecognized save_freq: {value!r}\. .*Received: save_freq={value!r}",
    "BackupAndRestore": r"Invalid value for argument `save_freq`\. Received: save_freq={value}\.",
}


@pytest.mark.parametrize("keras_class", [None, "ModelCheckpoint", "BackupAndRestore"])
@pytest.mark.parametrize("value", [0, -3, True, 2.5, "batch", None])
def test_save_freq_rejects(keras_class, value):
    message = SAVE_FREQ_MESSAGES[keras_class].format(value=value)
    with pytest.raises(ValueError, match=message):
        validation.save_freq(value, keras_class)


def test_save_freq_false_is_only_backup_and_restore_s():
    assert validation.save_freq(False, "BackupAndRestore") is False
    with pytest.raises(ValueError, match="save_freq=False"):
        validation.save_freq(False, "ModelCheckpoint")
    with pytest.raises(validation.ArgumentTypeError, match="save_freq=False"):
        validation.save_freq(False)


def test_keras_mode_warns_and_falls_back_for_drop_ins():
    assert validation.keras_mode("EarlyStopping", "min") == "min"
    with pytest.warns(UserWarning, match="EarlyStopping mode 'mx' is unknown, fallback to auto"):
        assert validation.keras_mode("EarlyStopping", "mx") == "auto"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, None),
        (False, None),
        (0, None),
        ("runs/best", "runs/best"),
        (SimpleNamespace(directory="runs/best"), "runs/best"),
    ],
)
def test_restore_best_weights_names_a_directory_or_is_a_flag(value, expected):
    assert validation.restore_best_weights(value) == expected


@pytest.mark.parametrize("value", ["", [3], 1.0, SimpleNamespace(directory=None)])
def test_restore_best_weights_rejects(value):
    with pytest.raises(ValueError, match="`restore_best_weights`"):
        validation.restore_best_weights(value)
