"""Domain errors: one stable code and one status per class, and one mapping from what a backend
reports (a key missing, a crash, a refusal by code) to the caller's error, the same for FHE runs,
key checks and clear predictions."""

from __future__ import annotations

import pickle

import pytest

from server import errors
from server.compute import BrokerLost, Busy, RunRefused, TimedOut, WorkerCrashed, circuits
from server.compute.clear_workers import ClearWorkerCrashed, PredictionTimedOut
from server.compute.fair_share import OwnerQueueFull, QueueFull
from server.run_errors import clear_run_errors, fhe_run_errors, key_check_errors

pytestmark = pytest.mark.fast

CLASSES = [
    c
    for c in errors._all_classes(errors.ServiceError)
    if c is not errors.ServiceError and c.__module__ == errors.__name__
]
"""The domain errors (not a subclass elsewhere that keeps its code, such as the routes'
BodyTooLarge: which of them is imported must not change what these tests see)."""


def test_every_code_names_one_class() -> None:
    codes = [c.code for c in CLASSES]
    assert len(codes) > 40
    assert sorted(codes) == sorted(set(codes)), [c for c in codes if codes.count(c) > 1]
    assert all(400 <= c.status < 600 for c in CLASSES)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.code)
def test_a_code_from_elsewhere_takes_its_class_and_status(cls: type[errors.ServiceError]) -> None:
    error = errors.from_code(cls.code, "said by a worker")
    assert type(error) is cls and error.status == cls.status and error.message == "said by a worker"


def test_an_unknown_code_is_a_bad_gateway_and_no_status_is_given_per_instance() -> None:
    error = errors.from_code("teapot", "short and stout")
    assert (error.status, error.code) == (502, "worker_error")
    assert "teapot" in error.message
    with pytest.raises(TypeError):
        errors.UnknownKey("x", status=500)
    with pytest.raises(TypeError):
        errors.ServiceError("x", code="anything")


def test_key_missing_crosses_processes_and_is_no_key_error() -> None:
    """Pebble and Celery carry it pickled; a bug's KeyError is not taken for a missing key."""
    missing = pickle.loads(pickle.dumps(circuits.KeyMissing("k1")))
    assert isinstance(missing, circuits.KeyMissing) and missing.args == ("k1",)
    assert not isinstance(missing, KeyError)
    with pytest.raises(KeyError), fhe_run_errors("m"):
        raise KeyError("a bug")


OUTCOMES = [
    (QueueFull("full"), errors.Busy, errors.Busy, errors.Busy),
    (
        OwnerQueueFull("yours"),
        errors.TooManyRequests,
        errors.TooManyRequests,
        errors.TooManyRequests,
    ),
    (Busy("busy"), errors.Busy, errors.Busy, None),
    (BrokerLost("lost"), errors.Busy, errors.Busy, None),
    (circuits.StoreUnavailable("db"), errors.StateUnavailable, errors.StateUnavailable, None),
    (circuits.KeyMissing("k"), errors.UnknownKey, errors.UnknownKey, None),
    (TimedOut("late"), errors.FHETimeout, errors.FHETimeout, None),
    (RunRefused("dead_lettered", "set aside"), errors.DeadLettered, errors.DeadLettered, None),
    (RunRefused("unknown_model", "no m"), errors.UnknownModel, errors.UnknownModel, None),
    (circuits.BadInput("bad"), errors.MalformedCiphertext, errors.MalformedKeys, None),
    (WorkerCrashed("died"), errors.UnprocessableCiphertext, errors.UnprocessableKeys, None),
    (PredictionTimedOut("slow"), None, None, errors.PredictionTimeout),
    (ClearWorkerCrashed("died"), None, None, errors.PredictionCrashed),
]


@pytest.mark.parametrize(
    ("outcome", "run", "keys", "clear"), OUTCOMES, ids=lambda v: type(v).__name__
)
def test_each_backend_outcome_is_one_domain_error(
    outcome: Exception,
    run: type[errors.ServiceError] | None,
    keys: type[errors.ServiceError] | None,
    clear: type[errors.ServiceError] | None,
) -> None:
    for mapping, expected in (
        (fhe_run_errors("m"), run),
        (key_check_errors(), keys),
        (clear_run_errors(), clear),
    ):
        if expected is None:  # not an outcome of this backend: it passes through untouched
            with pytest.raises(type(outcome)), mapping:
                raise outcome
            continue
        with pytest.raises(expected) as raised, mapping:
            raise outcome
        assert raised.value.status == expected.status
    statuses = {e.status for e in (run, keys) if e is not None}
    if outcome.__class__ not in (circuits.BadInput, WorkerCrashed):
        assert len(statuses) <= 1, statuses  # the same status whether a ciphertext or keys
