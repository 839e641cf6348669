"""What can go wrong running a caller's bytes in a worker, as the caller's domain error.

One mapping for FHE runs, key checks and clear predictions, so each outcome of a backend (busy,
crashed, timed out, a key missing...) becomes the same error, with the same status, wherever it
happens; only what the bytes were (a ciphertext or keys) changes which malformed/unprocessable
error the caller gets.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from server import errors, metrics
from server.compute import Busy, RunRefused, TimedOut, WorkerCrashed, circuits
from server.compute.clear_workers import ClearWorkerCrashed, PredictionTimedOut
from server.compute.compiled_circuit import CircuitUnavailable
from server.compute.fair_share import OwnerQueueFull, QueueFull


def shared_turn_error(error: QueueFull | OwnerQueueFull) -> errors.ServiceError:
    """429 when the token has its share waiting, 503 when every waiting place is taken."""
    if isinstance(error, OwnerQueueFull):
        return errors.TooManyRequests(str(error), headers={"Retry-After": "2"})
    return errors.Busy(str(error), headers={"Retry-After": "2"})


@contextmanager
def _backend_errors() -> Iterator[None]:
    """The outcomes every FHE backend call shares."""
    try:
        yield
    except (QueueFull, OwnerQueueFull) as error:
        raise shared_turn_error(error) from None
    except Busy as error:
        raise errors.Busy(str(error), headers={"Retry-After": "2"}) from None
    except circuits.StoreUnavailable as error:
        raise errors.StateUnavailable(str(error), headers={"Retry-After": "5"}) from None
    except circuits.KeyMissing:
        raise errors.UnknownKey("evaluation key was evicted; upload it again") from None
    except TimedOut as error:
        raise errors.FHETimeout(str(error), headers={"Retry-After": "30"}) from None
    except RunRefused as error:
        raise errors.from_code(error.code, str(error)) from None


@contextmanager
def fhe_run_errors(model: str) -> Iterator[None]:
    """Running a ciphertext through `model`'s circuit."""
    with _backend_errors():
        try:
            yield
        except circuits.BadInput as error:
            raise errors.MalformedCiphertext(str(error)) from None
        except CircuitUnavailable as error:
            raise errors.CircuitUnavailable(
                f"model {model!r} cannot run on this server: {error}"
            ) from None
        except WorkerCrashed as error:
            metrics.WORKER_CRASHES.inc()
            raise errors.UnprocessableCiphertext(
                f"{error}: the ciphertext or keys do not fit this model's circuit; other "
                "requests were not affected",
            ) from None


@contextmanager
def key_check_errors() -> Iterator[None]:
    """Deserializing uploaded evaluation keys in a worker."""
    with _backend_errors():
        try:
            yield
        except circuits.BadInput as error:
            metrics.KEY_CHECKS.labels(result="malformed").inc()
            raise errors.MalformedKeys(str(error)) from None
        except WorkerCrashed as error:
            metrics.WORKER_CRASHES.inc()
            metrics.KEY_CHECKS.labels(result="crashed").inc()
            raise errors.UnprocessableKeys(
                f"the evaluation keys crashed a worker: {error}; other requests were not affected"
            ) from None


@contextmanager
def clear_run_errors() -> Iterator[None]:
    """Parsing or predicting a clear model's body in a clear worker."""
    try:
        yield
    except (QueueFull, OwnerQueueFull) as error:
        raise shared_turn_error(error) from None
    except PredictionTimedOut as error:
        raise errors.PredictionTimeout(str(error)) from None
    except ClearWorkerCrashed as error:
        metrics.WORKER_CRASHES.inc()
        raise errors.PredictionCrashed(str(error)) from None
