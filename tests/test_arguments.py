"""Every bad argument of every public constructor is an error at construction, naming it.

Native classes raise ValueError; the drop-ins raise what Keras raises for the same value (a
clearer message, an instance of Keras's exception class).
"""

import os
import warnings

import keras
import pytest

import keras_ckpt
from keras_ckpt import naming, validation
from keras_ckpt.policies import AnyOf, KeepBest, KeepEvery, KeepLatest
from keras_ckpt.schedules import Chain, Scaled, StepDecay, WarmupCosine, plot_schedule


class InDir(str):
    """A path relative to the test's ``tmp_path``; ``DIR`` is ``tmp_path`` itself."""


DIR = InDir("")
A_FILE = "a-file"  # created in tmp_path before each construction


def resolve(value, tmp_path):
    if isinstance(value, InDir):
        return os.path.join(tmp_path, value) if value else str(tmp_path)
    return value


def case(constructor, args, kwargs, error, match):
    name = "-".join([constructor.__name__, *map(str, kwargs), *(type(a).__name__ for a in args)])
    return pytest.param(constructor, args, kwargs, error, match, id=name)


NUL = r"\\x00"  # how repr() shows a NUL, as a regex
Best = keras_ckpt.BestCheckpoint
Interval = keras_ckpt.IntervalCheckpoint
Resume = keras_ckpt.ResumeFromLatest
Backup = keras_ckpt.BackupAndRestore
Model = keras_ckpt.ModelCheckpoint
Stop = keras_ckpt.EarlyStopping
Scheduler = keras_ckpt.LearningRateScheduler
Reduce = keras_ckpt.ReduceLROnPlateau

CASES = [
    # BestCheckpoint -----------------------------------------------------------------------
    case(Best, (), {"directory": None}, ValueError, r"`directory`.*Received: directory=None"),
    case(Best, (), {"directory": 123}, ValueError, r"`directory`.*Received: directory=123"),
    case(Best, (), {"directory": b"x"}, ValueError, r"`directory`.*Received: directory=b'x'"),
    case(
        Best, (), {"directory": ""}, ValueError, r"`directory`.*not empty.*Received: directory=''"
    ),
    case(
        Best, (), {"directory": InDir("a\0b")}, ValueError, rf"`directory`.*directory='.*a{NUL}b'"
    ),
    case(
        Best,
        (),
        {"directory": InDir(f"{A_FILE}/sub")},
        ValueError,
        rf"Argument `directory` must be a directory.*is a file.*directory='.*{A_FILE}/sub'",
    ),
    case(Best, (DIR,), {"monitor": "val_a/b"}, ValueError, r"`monitor`.*monitor='val_a/b'"),
    case(Best, (DIR,), {"monitor": "val:loss"}, ValueError, r"`monitor`.*monitor='val:loss'"),
    case(Best, (DIR,), {"monitor": "{x}"}, ValueError, r"`monitor`.*monitor='\{x\}'"),
    case(Best, (DIR,), {"monitor": "a\0b"}, ValueError, rf"`monitor`.*monitor='a{NUL}b'"),
    case(Best, (DIR,), {"monitor": None}, ValueError, r"`monitor`.*Received: monitor=None"),
    case(Best, (DIR,), {"mode": "mx"}, ValueError, r"`mode` must be one of .*Received: mode='mx'"),
    case(Best, (DIR,), {"top_k": True}, ValueError, r"`top_k`.*Received: top_k=True"),
    case(Best, (DIR,), {"top_k": 0}, ValueError, r"`top_k`.*Received: top_k=0"),
    case(Best, (DIR,), {"min_delta": "0.1"}, ValueError, r"`min_delta`.*min_delta='0.1'"),
    case(Best, (DIR,), {"verbose": True}, ValueError, r"`verbose`.*Received: verbose=True"),
    case(Best, (DIR,), {"async_save": None}, ValueError, r"`async_save`.*async_save=None"),
    case(
        Best,
        (DIR,),
        {"filename": "e{epoch:s}"},
        ValueError,
        r"`filename` has a format spec .*Unknown format code 's'.*filename='e\{epoch:s\}\.keras'",
    ),
    case(
        Best,
        (DIR,),
        {"filename": "e{epoch}-{val_loss:d}"},
        ValueError,
        r"`filename`.*Unknown format code 'd'.*filename='e\{epoch\}-\{val_loss:d\}\.keras'",
    ),
    case(
        Best,
        (DIR,),
        {"filename": "e{epoch!z}"},
        ValueError,
        r"`filename`.*conversion.*filename='e\{epoch!z\}\.keras'",
    ),
    case(
        Best,
        (DIR,),
        {"filename": ".keras_ckpt-tmp-{epoch}"},
        ValueError,
        r"`filename` names a file that the checkpoint store keeps.*"
        r"filename='\.keras_ckpt-tmp-\{epoch\}\.keras'",
    ),
    case(Best, (DIR,), {"filename": "a\0{epoch}"}, ValueError, rf"`filename`.*filename='a{NUL}"),
    # IntervalCheckpoint -------------------------------------------------------------------
    case(Interval, (), {"directory": None}, ValueError, r"`directory`.*directory=None"),
    case(Interval, (), {"directory": ""}, ValueError, r"`directory`.*directory=''"),
    case(Interval, (), {"directory": InDir("a\0b")}, ValueError, rf"`directory`.*a{NUL}b'"),
    case(Interval, (DIR,), {"every_epochs": True}, ValueError, r"`every_epochs`.*=True"),
    case(Interval, (DIR,), {"every_steps": 0}, ValueError, r"`every_steps`.*every_steps=0"),
    case(Interval, (DIR,), {"every_seconds": -1}, ValueError, r"`every_seconds`.*=-1"),
    case(Interval, (DIR,), {"keep_last": True}, ValueError, r"`keep_last`.*keep_last=True"),
    case(
        Interval,
        (DIR,),
        {"retention": KeepLatest},
        ValueError,
        r"`retention`.*KeepLatest\(\.\.\.\), not the class.*retention=<class '.*KeepLatest'>",
    ),
    case(Interval, (DIR,), {"retention": "x"}, ValueError, r"`retention`.*retention='x'"),
    case(Interval, (DIR,), {"clock": None}, ValueError, r"`clock` must be callable.*clock=None"),
    case(Interval, (DIR,), {"clock": 3}, ValueError, r"`clock` must be callable.*clock=3"),
    case(Interval, (DIR,), {"clock": float}, ValueError, r"`clock`.*not a class.*clock=<class"),
    case(Interval, (DIR,), {"verbose": True}, ValueError, r"`verbose`.*verbose=True"),
    case(Interval, (DIR,), {"filename": "e{epoch:s}"}, ValueError, r"`filename`.*\{epoch:s\}"),
    case(
        Interval,
        (DIR,),
        {"filename": "e{epoch}-{val_loss:d}"},
        ValueError,
        r"`filename`.*Unknown format code 'd'.*\{val_loss:d\}",
    ),
    case(
        Interval,
        (DIR,),
        {"filename": ".keras_ckpt-tmp-{epoch}"},
        ValueError,
        r"`filename` names a file that the checkpoint store keeps.*\.keras_ckpt-tmp-\{epoch\}",
    ),
    # ResumeFromLatest ---------------------------------------------------------------------
    case(Resume, (), {"directory": None}, ValueError, r"`directory`.*directory=None"),
    case(Resume, (), {"directory": 123}, ValueError, r"`directory`.*directory=123"),
    case(Resume, (), {"directory": ""}, ValueError, r"`directory`.*directory=''"),
    case(Resume, (), {"directory": InDir("a\0b")}, ValueError, rf"`directory`.*a{NUL}b'"),
    case(Resume, (DIR,), {"save_freq": True}, ValueError, r"`save_freq`.*save_freq=True"),
    case(Resume, (DIR,), {"every_seconds": 0}, ValueError, r"`every_seconds`.*every_seconds=0"),
    case(Resume, (DIR,), {"keep_last": 0}, ValueError, r"`keep_last`.*keep_last=0"),
    case(Resume, (DIR,), {"clock": None}, ValueError, r"`clock` must be callable.*clock=None"),
    case(Resume, (DIR,), {"verbose": True}, ValueError, r"`verbose`.*verbose=True"),
    # BackupAndRestore (drop-in: Keras's exception classes, and its message for empty) ------
    case(Backup, (), {"backup_dir": ""}, ValueError, r"^Empty `backup_dir` argument passed$"),
    case(Backup, (), {"backup_dir": None}, ValueError, r"^Empty `backup_dir` argument passed$"),
    case(Backup, (), {"backup_dir": 123}, TypeError, r"`backup_dir`.*backup_dir=123"),
    case(Backup, (), {"backup_dir": b"d"}, TypeError, r"`backup_dir`.*backup_dir=b'd'"),
    case(Backup, (), {"backup_dir": InDir("a\0b")}, ValueError, rf"`backup_dir`.*a{NUL}b'"),
    case(
        Backup,
        (),
        {"backup_dir": InDir(f"{A_FILE}/sub")},
        ValueError,
        rf"Argument `backup_dir` must be a directory.*is a file.*backup_dir='.*{A_FILE}/sub'",
    ),
    # ModelCheckpoint (drop-in) ------------------------------------------------------------
    case(Model, (), {"filepath": None}, AttributeError, r"`filepath`.*Received: filepath=None"),
    case(Model, (), {"filepath": 123}, AttributeError, r"`filepath`.*Received: filepath=123"),
    case(Model, (), {"filepath": b"x.keras"}, TypeError, r"`filepath`.*filepath=b'x\.keras'"),
    case(Model, (), {"filepath": ""}, ValueError, r"`filepath`.*not empty.*filepath=''"),
    case(Model, (), {"filepath": InDir("a\0b.keras")}, ValueError, rf"`filepath`.*a{NUL}b"),
    case(
        Model,
        (),
        {"filepath": InDir("e{epoch:s}.keras")},
        ValueError,
        r"`filepath` has a format spec .*'s'.*filepath='.*e\{epoch:s\}\.keras'",
    ),
    case(
        Model,
        (),
        {"filepath": InDir("{val_loss:d}.keras")},
        ValueError,
        r"`filepath` has a format spec .*'d'.*filepath='.*\{val_loss:d\}\.keras'",
    ),
    case(
        Model,
        (),
        {"filepath": InDir(".keras_ckpt-tmp-{epoch}.keras")},
        ValueError,
        r"`filepath` names a file that the checkpoint store keeps.*"
        r"filepath='.*\.keras_ckpt-tmp-\{epoch\}\.keras'",
    ),
    case(Model, (), {"filepath": "{}.keras"}, ValueError, r"`filepath` must name its fields"),
    case(
        Model,
        (InDir("x.keras"),),
        {"initial_value_threshold": "x"},
        TypeError,
        r"`initial_value_threshold`.*initial_value_threshold='x'",
    ),
    case(Model, (InDir("{epoch}.keras"),), {"save_top_k": True}, ValueError, r"save_top_k=True"),
    case(
        Model,
        (InDir("{epoch}.keras"),),
        {"save_top_k": 2, "monitor": None},
        ValueError,
        r"`monitor`.*Received: monitor=None",
    ),
    # EarlyStopping (drop-in; a string for restore_best_weights is our directory) ----------
    case(Stop, (), {"restore_best_weights": ""}, ValueError, r"`restore_best_weights`.*=''"),
    case(
        Stop,
        (),
        {"restore_best_weights": "a\0b"},
        ValueError,
        rf"`restore_best_weights`.*restore_best_weights='a{NUL}b'",
    ),
    # LearningRateScheduler (drop-in: Keras raises TypeError calling such a schedule) ------
    case(Scheduler, (), {"schedule": 3}, TypeError, r"`schedule` must be callable.*schedule=3"),
    case(Scheduler, (), {"schedule": int}, TypeError, r"`schedule`.*not a class.*schedule=<class"),
    case(Scheduler, (), {"schedule": abs, "per": "batch"}, ValueError, r"`per`.*per='batch'"),
    # ReduceLROnPlateau keeps Keras's checks (factor) and reactions: nothing new to refuse.
    case(Reduce, (), {"factor": 1.5}, ValueError, r"factor >= 1\.0\. Received factor=1\.5"),
    # Retention policies -------------------------------------------------------------------
    case(KeepLatest, (), {"n": -1}, ValueError, r"`n` must be a positive integer.*n=-1"),
    case(KeepLatest, (), {"n": 0}, ValueError, r"`n`.*Received: n=0"),
    case(KeepLatest, (), {"n": "2"}, ValueError, r"`n`.*Received: n='2'"),
    case(KeepLatest, (), {"n": True}, ValueError, r"`n`.*Received: n=True"),
    case(KeepEvery, (), {"k": 0}, ValueError, r"`k` must be a positive integer.*k=0"),
    case(KeepEvery, (), {"k": 2.5}, ValueError, r"`k`.*Received: k=2\.5"),
    case(KeepEvery, (), {"k": 2, "by": "batch"}, ValueError, r"`by`.*Received: by='batch'"),
    case(KeepBest, (), {"n": 0, "monitor": "val_loss"}, ValueError, r"`n`.*n=0"),
    case(KeepBest, (), {"n": 2, "monitor": ""}, ValueError, r"`monitor`.*monitor=''"),
    case(
        KeepBest,
        (),
        {"n": 2, "monitor": "val_loss", "mode": "bogus"},
        ValueError,
        r"`mode` must be one of 'auto', 'min', 'max'\. Received: mode='bogus'",
    ),
    case(
        KeepBest,
        (),
        {"n": 2, "monitor": "val_accuracy", "mode": "auto"},
        ValueError,
        r"`mode` is 'auto'.*Received: monitor='val_accuracy', mode='auto'",
    ),
    case(AnyOf, ("x",), {}, ValueError, r"`policies\[0\]`.*Received: policies\[0\]='x'"),
    case(AnyOf, (KeepLatest(1), KeepLatest), {}, ValueError, r"`policies\[1\]`.*not the class"),
    case(AnyOf, (), {}, ValueError, r"`policies` must hold at least one.*Received: policies=\(\)"),
    # Schedules ----------------------------------------------------------------------------
    case(Chain, (None, [10]), {}, ValueError, r"`schedules`.*Received: schedules=None"),
    case(
        Chain,
        ([None, StepDecay(1.0, [5])], [10]),
        {},
        ValueError,
        r"`schedules\[0\]` must be callable.*schedules\[0\]=None",
    ),
    case(
        Chain,
        ([StepDecay(1.0, [5]), WarmupCosine], [10]),
        {},
        ValueError,
        r"`schedules\[1\]`.*not a class.*schedules\[1\]=<class",
    ),
    case(Scaled, (3, 0.5), {}, ValueError, r"`schedule` must be callable.*Received: schedule=3"),
    case(Scaled, (None, 0.5), {}, ValueError, r"`schedule`.*Received: schedule=None"),
    case(plot_schedule, (3,), {"steps": 10}, ValueError, r"`schedule`.*Received: schedule=3"),
]


@pytest.mark.parametrize(("constructor", "args", "kwargs", "error", "match"), CASES)
def test_bad_argument_is_refused_at_construction(tmp_path, constructor, args, kwargs, error, match):
    (tmp_path / A_FILE).write_text("in the way")
    args = [resolve(value, tmp_path) for value in args]
    kwargs = {key: resolve(value, tmp_path) for key, value in kwargs.items()}
    with pytest.raises(error, match=match):
        constructor(*args, **kwargs)
    assert sorted(path.name for path in tmp_path.iterdir()) == [A_FILE]  # nothing created


KERAS_DROP_INS = {
    Backup: keras.callbacks.BackupAndRestore,
    Model: keras.callbacks.ModelCheckpoint,
    Scheduler: keras.callbacks.LearningRateScheduler,
    Stop: keras.callbacks.EarlyStopping,
    Reduce: keras.callbacks.ReduceLROnPlateau,
}


@pytest.mark.parametrize(
    ("constructor", "kwargs"),
    [
        (Backup, {"backup_dir": ""}),
        (Backup, {"backup_dir": None}),
        (Backup, {"backup_dir": 123}),
        (Backup, {"backup_dir": b"d"}),
        (Backup, {"backup_dir": "b", "save_freq": "batch"}),
        (Model, {"filepath": None}),
        (Model, {"filepath": 123}),
        (Model, {"filepath": b"x.keras"}),
        (Model, {"filepath": ""}),
        (Model, {"filepath": "x.keras", "save_freq": "batch"}),
        (Reduce, {"factor": 1.5}),
    ],
)
def test_drop_in_errors_are_what_keras_raises(constructor, kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(Exception) as keras_error:
            KERAS_DROP_INS[constructor](**kwargs)
        with pytest.raises(type(keras_error.value)):
            constructor(**kwargs)


@pytest.mark.parametrize(
    ("reader", "directory", "match"),
    [
        (keras_ckpt.list_checkpoints, None, r"`directory`.*Received: directory=None"),
        (keras_ckpt.list_checkpoints, "", r"`directory`.*not empty.*Received: directory=''"),
        (keras_ckpt.load_best, "", r"`directory`.*Received: directory=''"),
        (keras_ckpt.latest_checkpoint, "a\0b", r"`directory`.*directory='a\\x00b'"),
    ],
)
def test_readers_refuse_what_is_not_a_directory(reader, directory, match):
    with pytest.raises(ValueError, match=match):  # "" used to read the current folder
        reader(directory)


def test_a_wrong_type_is_a_value_error_and_a_type_error():
    with pytest.raises(validation.ArgumentTypeError) as caught:
        validation.positive_int("top_k", "3")
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, TypeError)


@pytest.mark.parametrize(
    "template", ["keras_ckpt.json", ".keras_ckpt.lock", ".keras_ckpt-tmp-{epoch}", "sub/a\0b"]
)
def test_the_store_s_own_names_are_refused(template):
    with pytest.raises(ValueError, match=r"Argument `filepath`.*Received: filepath="):
        naming.check_renders(template, "filepath")


@pytest.mark.parametrize(
    ("template", "rendered"),
    [
        ("e{epoch:03d}-s{step:06d}-b{batch:d}", "e001-s000001-b1"),
        ("{val_loss:.2f}-{epoch:.1f}", "0.50-1.0"),
        ("{val_top-5:.3f}", "0.500"),
    ],
)
def test_good_templates_pass_the_check(template, rendered):
    assert naming.check_renders(template) == rendered


@pytest.mark.parametrize(
    ("monitor", "mode", "resolved", "kept"),
    [
        ("val_loss", "auto", "min", [False, True, False]),
        ("loss", "auto", "min", [False, True, False]),
        ("val_accuracy", "max", "max", [True, False, False]),
    ],
)
def test_keep_best_resolves_auto_as_the_callbacks_do(monitor, mode, resolved, kept):
    from types import SimpleNamespace as Record

    policy = KeepBest(1, monitor, mode)
    assert policy.mode == resolved
    assert policy.keep([Record(metrics={monitor: value}) for value in (0.3, 0.1, 0.2)]) == kept
    assert KeepBest(2, "val_loss") == KeepBest(2, "val_loss", "min")  # "auto" is the default
