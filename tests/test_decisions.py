"""Tier 1: the early-stopping and plateau decisions on fabricated values, no Keras.

The expected outcomes marked "Keras 3.15" were read from ``keras.callbacks.EarlyStopping`` and
``keras.callbacks.ReduceLROnPlateau`` driven with the same values; the drop-ins must match them.
"""

import dataclasses
import math

import pytest

from keras_ckpt.decisions import (
    DIVERGENCE_THRESHOLD,
    NON_FINITE,
    PATIENCE,
    PLATEAU,
    STOPPING_THRESHOLD,
    PlateauRule,
    PlateauState,
    StoppingRule,
    StoppingState,
    after_reduction,
    decide_plateau,
    decide_stop,
)

NAN = math.nan


def run_stopping(values, rule, state=None):
    """Decides epoch after epoch until a reason comes; returns the state and every reason."""
    state = state or StoppingState()
    reasons = []
    for epoch, value in enumerate(values):
        state, reason = decide_stop(state, epoch, value, rule)
        reasons.append(reason)
        if reason is not None:
            break
    return state, reasons


# Early stopping -------------------------------------------------------------------------

SEQUENCE = [0.9, 0.8, 0.85, 0.86, 0.7, 0.75, 0.76, 0.77, 0.78, 0.79]


@pytest.mark.parametrize(
    ("values", "arguments", "stopped_epoch", "best", "best_epoch", "wait"),
    [
        (SEQUENCE, {"patience": 2}, 3, 0.8, 1, 2),
        (SEQUENCE, {"patience": 0}, 2, 0.8, 1, 1),
        ([0.9, 0.8, 0.79, 0.78, 0.77, 0.76], {"patience": 1, "min_delta": 0.05}, 2, 0.8, 1, 1),
        (
            [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05],
            {"patience": 2, "baseline": 0.1},
            0,
            0.05,
            9,
            0,
        ),
        ([0.5, 0.4, 0.3], {"patience": 5, "baseline": 0.1}, 0, 0.3, 2, 3),
        (
            [0.9, 0.95, 0.97, 0.98, 0.7, 0.99, 0.99, 0.99],
            {"patience": 1, "start_from_epoch": 3},
            5,
            0.7,
            4,
            1,
        ),
        ([0.5, 0.6, 0.7, 0.4, 0.8, 0.9, 0.95], {"patience": 2}, 2, 0.5, 0, 2),
        ([0.5, 0.6, 0.7, 0.8], {"patience": 2, "mode": "max"}, 0, 0.8, 3, 0),
        # Keras's NaN quirks (check_finite=False): a first NaN becomes a best nothing beats; a
        # later NaN never improves.
        ([NAN, 0.5, 0.4, 0.3], {"patience": 2, "check_finite": False}, 2, NAN, 0, 2),
        ([0.5, NAN, 0.6, 0.4, 0.7], {"patience": 2, "check_finite": False}, 2, 0.5, 0, 2),
    ],
)
def test_stopping_matches_keras(values, arguments, stopped_epoch, best, best_epoch, wait):
    # Keras 3.15: stopped_epoch, best, best_epoch and wait when training ends.
    rule = StoppingRule(**{"mode": "min", **arguments})
    state, reasons = run_stopping(values, rule)
    assert state.stopped_epoch == stopped_epoch
    assert state.best == pytest.approx(best, nan_ok=True)
    assert (state.best_epoch, state.wait) == (best_epoch, wait)
    assert state.stopping_reason == (PATIENCE if stopped_epoch else None)
    assert reasons[-1] == state.stopping_reason


@pytest.mark.parametrize(
    ("values", "arguments", "reason", "stopped_epoch"),
    [
        ([0.5, 0.4, 0.3, 0.29], {"stopping_threshold": 0.3}, STOPPING_THRESHOLD, 3),
        (
            [0.5, 0.6, 0.3, 0.19],
            {"mode": "max", "divergence_threshold": 0.2},
            DIVERGENCE_THRESHOLD,
            3,
        ),
        ([0.5, 0.6, 0.7], {"mode": "max", "stopping_threshold": 0.65}, STOPPING_THRESHOLD, 2),
        ([0.5, 0.9, 1.1], {"divergence_threshold": 1.0}, DIVERGENCE_THRESHOLD, 2),
        ([0.5, NAN], {}, NON_FINITE, 1),
        ([0.5, math.inf], {}, NON_FINITE, 1),
        ([NAN], {}, NON_FINITE, 0),  # thresholds apply from epoch 0, unlike patience
        # Checked before the thresholds: NaN passes no threshold.
        ([0.5, NAN], {"stopping_threshold": 0.1, "divergence_threshold": 1.0}, NON_FINITE, 1),
    ],
)
def test_thresholds_stop_at_once(values, arguments, reason, stopped_epoch):
    rule = StoppingRule(**{"mode": "min", "patience": 10, **arguments})
    state, reasons = run_stopping(values, rule)
    assert reasons[-1] == state.stopping_reason == reason
    assert state.stopped_epoch == stopped_epoch


def test_a_threshold_stop_leaves_wait_and_best_alone():
    before = StoppingState(wait=2, best=0.4, best_epoch=3)
    rule = StoppingRule(mode="min", patience=5, stopping_threshold=0.2)
    state, reason = decide_stop(before, 6, 0.1, rule)
    assert reason == STOPPING_THRESHOLD
    assert (state.wait, state.best, state.best_epoch, state.new_best) == (2, 0.4, 3, False)


def test_thresholds_ignore_min_delta():
    rule = StoppingRule(mode="min", min_delta=0.5, patience=10, stopping_threshold=0.3)
    assert decide_stop(StoppingState(), 0, 0.29, rule)[1] == STOPPING_THRESHOLD


def test_without_check_finite_nan_is_judged_as_keras_does():
    rule = StoppingRule(mode="min", patience=10, check_finite=False)
    state, reason = decide_stop(StoppingState(best=0.5), 1, NAN, rule)
    assert reason is None and (state.best, state.wait) == (0.5, 1)


def test_patience_never_stops_at_epoch_zero():
    rule = StoppingRule(mode="min", patience=0)
    state, reason = decide_stop(StoppingState(best=0.1), 0, 0.5, rule)  # a resumed best
    assert reason is None and state.wait == 1


def test_epochs_before_start_from_epoch_change_nothing():
    before = StoppingState(wait=1, best=0.5, new_best=True)
    state, reason = decide_stop(before, 2, NAN, StoppingRule(mode="min", start_from_epoch=3))
    assert reason is None
    assert state == dataclasses.replace(before, new_best=False)


@pytest.mark.parametrize(
    ("values", "new_best"),
    [
        ([0.5, 0.4, 0.45, 0.3], [True, True, False, True]),
        ([0.5, 0.5, 0.49], [True, False, True]),  # an equal value is no improvement
    ],
)
def test_new_best_marks_each_improvement(values, new_best):
    rule = StoppingRule(mode="min", patience=10)
    state, flags = StoppingState(), []
    for epoch, value in enumerate(values):
        state, _ = decide_stop(state, epoch, value, rule)
        flags.append(state.new_best)
    assert flags == new_best


def test_a_resumed_state_stops_where_the_whole_run_does():
    rule = StoppingRule(mode="min", patience=3)
    values = [0.9, 0.8, 0.85, 0.7, 0.75, 0.76, 0.8, 0.9, 0.95, 0.99]
    whole, _ = run_stopping(values, rule)
    first, _ = run_stopping(values[:5], rule)
    saved = StoppingState.from_state_dict(first.state_dict())
    state = saved
    for epoch in range(5, len(values)):
        state, reason = decide_stop(state, epoch, values[epoch], rule)
        if reason is not None:
            break
    assert state == whole


def test_the_decision_does_not_change_its_input():
    before = StoppingState()
    decide_stop(before, 0, 0.5, StoppingRule(mode="min"))
    assert before == StoppingState()
    with pytest.raises(dataclasses.FrozenInstanceError):
        before.wait = 3


@pytest.mark.parametrize("mode", ["auto", "mx", None])
def test_rules_take_a_resolved_mode_only(mode):
    with pytest.raises(ValueError, match=rf"Argument `mode` must be one of 'min', 'max'.*{mode!r}"):
        StoppingRule(mode=mode)
    with pytest.raises(ValueError, match=r"Argument `mode` must be one of 'min', 'max'"):
        PlateauRule(mode=mode)


# State dicts: the format EarlyStopping and ReduceLROnPlateau always wrote ------------------


def test_stopping_state_dict_keeps_its_format():
    state = StoppingState(wait=2, best=0.5, best_epoch=3, stopped_epoch=7, stopping_reason=PATIENCE)
    assert state.state_dict() == {
        "wait": 2,
        "best": 0.5,
        "best_epoch": 3,
        "stopped_epoch": 7,
        "stopping_reason": "patience",
    }
    assert StoppingState.from_state_dict(state.state_dict()) == state


@pytest.mark.parametrize(
    ("saved", "expected"),
    [
        ({}, StoppingState()),
        ({"wait": 2, "best": 0.5}, StoppingState(wait=2, best=0.5)),  # an older, shorter dict
        ({"best": None}, StoppingState()),
        ({"best": "inf", "wait": "3"}, StoppingState(wait=3, best=math.inf)),  # manifest text
    ],
)
def test_stopping_state_loads_old_and_partial_dicts(saved, expected):
    assert StoppingState.from_state_dict(saved) == expected


def test_stopping_state_reads_nan_from_the_manifest():
    assert math.isnan(StoppingState.from_state_dict({"best": "nan"}).best)


@pytest.mark.parametrize(
    ("saved", "expected"),
    [
        ({}, PlateauState()),
        ({"wait": 1, "cooldown_counter": 2, "best": 0.5}, PlateauState(1, 2, 0.5)),
        ({"best": "-inf"}, PlateauState(best=-math.inf)),
    ],
)
def test_plateau_state_round_trips(saved, expected):
    state = PlateauState.from_state_dict(saved)
    assert state == expected
    assert list(state.state_dict()) == ["wait", "cooldown_counter", "best"]
    assert PlateauState.from_state_dict(state.state_dict()) == state


# Plateau --------------------------------------------------------------------------------

PLATEAU_VALUES = [0.9, 0.8, 0.8, 0.8, 0.7, 0.7, 0.7, 0.7, 0.6, 0.6]
F, T = False, True


@pytest.mark.parametrize(
    ("arguments", "reduced", "final"),
    [
        ({"patience": 1, "cooldown": 1}, [F, F, T, T, F, T, T, T, F, T], (0, 1, 0.6)),
        ({"patience": 2}, [F, F, F, T, F, F, T, F, F, F], (1, 0, 0.6)),
        ({"patience": 0, "cooldown": 2}, [F, F, T, F, F, T, F, T, F, T], (0, 2, 0.6)),
        (
            {"patience": 1, "cooldown": 3, "min_delta": 0.15},
            [F, T, F, F, F, T, F, F, T, F],
            (0, 2, 0.7),
        ),
    ],
)
def test_plateau_matches_keras(arguments, reduced, final):
    # Keras 3.15: the epochs at which the rate was lowered, then (wait, cooldown_counter, best).
    rule = PlateauRule(mode="min", **arguments)
    state, flags = PlateauState(), []
    for value in PLATEAU_VALUES:
        state, reason = decide_plateau(state, value, rule)
        if reason is not None:
            state = after_reduction(state, rule)
        flags.append(reason == PLATEAU)
    assert flags == reduced
    assert (state.wait, state.cooldown_counter) == final[:2]
    assert state.best == pytest.approx(final[2])


def test_plateau_asks_again_while_nothing_could_be_reduced():
    # At min_lr the callback reduces nothing and does not call after_reduction.
    rule = PlateauRule(mode="min", patience=2, cooldown=5)
    state, reasons = PlateauState(best=0.5), []
    for value in [0.6, 0.6, 0.6, 0.6]:
        state, reason = decide_plateau(state, value, rule)
        reasons.append(reason)
    assert reasons == [None, PLATEAU, PLATEAU, PLATEAU]
    assert (state.wait, state.cooldown_counter) == (4, 0)


@pytest.mark.parametrize(
    ("before", "value", "expected"),
    [
        # In cooldown: one epoch less, wait reset, nothing counted.
        (PlateauState(wait=3, cooldown_counter=2, best=0.5), 0.6, PlateauState(0, 1, 0.5)),
        # An improvement still becomes best during cooldown.
        (PlateauState(wait=0, cooldown_counter=2, best=0.5), 0.4, PlateauState(0, 1, 0.4)),
        # The last cooldown epoch already counts towards patience.
        (PlateauState(wait=0, cooldown_counter=1, best=0.5), 0.6, PlateauState(1, 0, 0.5)),
        # Keras's NaN quirks: a first NaN becomes best; nothing beats it.
        (PlateauState(), NAN, PlateauState(0, 0, NAN)),
        (PlateauState(best=NAN), 0.1, PlateauState(1, 0, NAN)),
    ],
)
def test_plateau_cooldown_and_nan(before, value, expected):
    state, _ = decide_plateau(before, value, PlateauRule(mode="min", patience=10))
    assert (state.wait, state.cooldown_counter) == (expected.wait, expected.cooldown_counter)
    assert state.best == pytest.approx(expected.best, nan_ok=True)


def test_plateau_in_max_mode_with_min_delta():
    rule = PlateauRule(mode="max", patience=1, min_delta=0.1)
    state, reason = decide_plateau(PlateauState(best=0.5), 0.55, rule)
    assert reason == PLATEAU and state.best == 0.5
    state, reason = decide_plateau(PlateauState(best=0.5), 0.65, rule)
    assert reason is None and state.best == 0.65


def test_after_reduction_starts_the_cooldown():
    state = after_reduction(PlateauState(wait=4, best=0.3), PlateauRule(mode="min", cooldown=3))
    assert state == PlateauState(wait=0, cooldown_counter=3, best=0.3)
    assert state.in_cooldown and not PlateauState().in_cooldown
