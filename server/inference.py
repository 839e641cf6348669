"""The inference service: find the model, check the client spec and the key, run, answer.

The predict routes and the job runner both call it, so a job that fails later records exactly what
a synchronous call would have answered. It raises domain errors (`server.errors`), never HTTP ones.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import cachetools

from fhe.contract.keyset import MalformedKeys, uploaded_keyset_file
from server import errors, metrics
from server.compute import Compute
from server.compute.clear_workers import ClearWorkers
from server.compute.fair_share import FairShare, OwnerQueueFull, QueueFull
from server.executors import KEY_WORK, run_in
from server.models.clear import ClearModel, InvalidInputs
from server.models.clear_inputs import parse_inputs
from server.models.clear_worker import Answer, ClearSource
from server.models.registry import FHEModel, Model, ModelRegistry
from server.run_errors import clear_run_errors, fhe_run_errors, shared_turn_error
from server.storage.calls import store_call
from server.storage.job import Job
from server.storage.key import StoredKey
from server.storage.protocols import KeyStore

KEYGEN_HINT = "run `fhe-client keygen --model {model}` to generate and upload evaluation keys"
KEY_CHECKS_AT_ONCE = 2
"""Structural key checks map a whole key file (and, with a database, spool it): at most this
many at once."""


def keyset_differences(model: FHEModel, path: Path) -> list[str]:
    """What in the serialized keys of the file at `path` differs from the model's key set
    (blocking; the file is mapped, never read whole into memory)."""
    if model.keyset is None:
        return ["the model's client spec lists no key set"]
    try:
        return model.keyset.differences(uploaded_keyset_file(path))
    except MalformedKeys as error:
        return [str(error)]


def stored_key_differences(keys: KeyStore, key_id: str, model: FHEModel) -> list[str]:
    """`keyset_differences` of a stored key (blocking); OSError when it is gone."""
    with keys.key_file(key_id) as path:
        return keyset_differences(model, path)


def key_mismatch(model: FHEModel, key_id: str, differences: list[str]) -> errors.KeySpecMismatch:
    """409 key_spec_mismatch naming what differs between the keys and the model's key set."""
    return errors.KeySpecMismatch(
        f"evaluation key {key_id} does not fit model {model.name!r} (client spec "
        f"{model.client_spec}): {'; '.join(differences[:8])}; "
        + KEYGEN_HINT.format(model=model.name),
        differences=differences,
    )


def unknown_key(key_id: str, model: FHEModel) -> errors.UnknownKey:
    """404 unknown_key: the caller should upload its keys again."""
    return errors.UnknownKey(
        f"evaluation key {key_id} is unknown here or was evicted; "
        + KEYGEN_HINT.format(model=model.name),
        key_id=key_id,
    )


def parsed_inputs(body: bytes) -> Any:
    """The `inputs` of a clear model's JSON body; 400 invalid_inputs for anything else."""
    try:
        return parse_inputs(body)
    except InvalidInputs as error:
        raise errors.InvalidInputsError(str(error)) from None


def clear_error(model: ClearModel, kind: str, message: str) -> errors.ServiceError:
    """The caller's error for a clear worker's answer other than "ok"."""
    if kind == "too_large":
        return errors.InputsTooLarge(message)
    if kind == "invalid":
        return errors.InvalidInputsError(message)
    if kind == "unloadable":
        return errors.ModelUnloadable(f"model {model.name!r} cannot load: {message}")
    return errors.PredictionFailedError(message)


class Inference:
    """Checks and runs predictions over the models, the key store and the compute backends
    (FHE runs through a fair share across tokens, clear predictions in their own workers)."""

    def __init__(
        self,
        registry: ModelRegistry,
        keys: KeyStore,
        compute: Compute,
        fhe_share: FairShare,
        clear: ClearWorkers,
        workers_record_runs: bool = False,
    ) -> None:
        self.registry = registry
        self.keys = keys
        self.compute = compute
        self.fhe_share = fhe_share
        self.clear = clear
        # Each run is counted once in fhe_run_seconds, where it ran: Celery workers record
        # their own runs (and key cache hits), this process only the runs of its own pool.
        self.workers_record_runs = workers_record_runs
        self._checks = asyncio.Semaphore(KEY_CHECKS_AT_ONCE)
        self._misfits: cachetools.LRUCache[tuple[str, str], list[str]] = cachetools.LRUCache(
            maxsize=1024
        )

    def model(self, name: str) -> Model:
        """The model called `name`, or 404 naming the models there are."""
        model = self.registry.get(name)
        if model is None:
            names = [m.name for m in self.registry.all()]
            raise errors.UnknownModel(f"no model named {name!r}; models here: {names}")
        return model

    def fhe_model(self, name: str) -> FHEModel:
        """The model as an FHE model that can run, or 400 saying why not."""
        model = self.model(name)
        if not isinstance(model, FHEModel):
            raise errors.NotFHE(f"model {model.name!r} is a {model.kind} model, not FHE")
        if model.reason is not None:
            raise errors.ModelUnloadable(f"model {model.name!r} cannot load: {model.reason}")
        if model.circuit_error is not None:
            raise errors.CircuitUnavailable(
                f"model {model.name!r} cannot run on this server: {model.circuit_error}"
            )
        return model

    @staticmethod
    def ready_clear(model: ClearModel) -> ClearModel:
        """The clear model when it loaded; 400 saying why it did not otherwise."""
        if not model.ready:
            raise errors.ModelUnloadable(f"model {model.name!r} cannot load: {model.load_error}")
        return model

    @staticmethod
    def check_client_spec(model: FHEModel, client_spec: str | None) -> None:
        """400 without a client spec hash, 409 when it is not the model's."""
        if not client_spec:
            raise errors.MissingClientSpec(
                f"the X-Client-Spec header (sha256 of client.zip) is required; server has "
                f"{model.client_spec}",
            )
        if client_spec != model.client_spec:
            raise errors.ClientSpecMismatch(
                f"your client spec {client_spec} differs from the server's {model.client_spec} "
                f"for model {model.name!r}: download client.zip again and "
                + KEYGEN_HINT.format(model=model.name),
                client_spec=client_spec,
                server_client_spec=model.client_spec,
            )

    async def stored_key(self, key_id: str | None, model: FHEModel, owner: str | None) -> StoredKey:
        """The stored evaluation key: 400 without an id, 404 unknown (or another token's: its
        existence is not revealed)."""
        if not key_id:
            raise errors.MissingKeyId(
                "the X-Key-Id header is required; " + KEYGEN_HINT.format(model=model.name)
            )
        stored = await store_call(self.keys.get, key_id, owner)
        if stored is None or not stored.usable_by(owner):
            raise unknown_key(key_id, model)
        return stored

    async def fitting_key(
        self, key_id: str | None, model: FHEModel, owner: str | None = None
    ) -> StoredKey:
        """The stored key, checked against the model's key set before any circuit sees it.

        A key uploaded for this model's client spec was checked at upload; any other key is
        checked the first time it is used with the model and the result recorded (a misfit is
        remembered), so Concrete is never handed keys that would abort its process.
        """
        stored = await self.stored_key(key_id, model, owner)
        if stored.fits(model.client_spec):
            return stored
        pair = (stored.key_id, model.client_spec or "")
        differences = self._misfits.get(pair)
        if differences is None:
            async with self._checks:
                with self.keys.in_use(stored.key_id):
                    try:
                        differences = await run_in(
                            KEY_WORK, stored_key_differences, self.keys, stored.key_id, model
                        )
                    except OSError:
                        raise unknown_key(stored.key_id, model) from None
            if differences:
                self._misfits[pair] = differences
            metrics.KEY_CHECKS.labels(result="misfit" if differences else "fits").inc()
        if differences:
            raise key_mismatch(model, stored.key_id, differences)
        await store_call(self.keys.add_spec, stored.key_id, model.client_spec)
        return stored

    def check_room(self, model: Model, owner: str | None) -> None:
        """429 or 503 before the body is read, when the owner's run could not wait its turn."""
        share = self.clear.share if isinstance(model, ClearModel) else self.fhe_share
        try:
            share.check_room(owner)
        except (QueueFull, OwnerQueueFull) as error:
            raise shared_turn_error(error) from None

    async def run_fhe(
        self,
        model: FHEModel,
        key: StoredKey,
        ciphertext: bytes,
        owner: str | None = None,
        bounded: bool = True,
        queued_since: float | None = None,
    ) -> tuple[bytes, float]:
        """Run the circuit on one ciphertext in a worker when the owner's turn comes; returns
        the result and FHE seconds. `queued_since` (a job's first run: when it was accepted)
        times its wait up to its turn, not up to its claim."""
        asked = time.perf_counter()
        with fhe_run_errors(model.name), self.keys.in_use(key.key_id):
            async with self.fhe_share.turn(owner, bounded):
                turn = time.time()
                result, seconds, key_cached = await self.compute.run_circuit(
                    str(model.path), key.key_id, str(key.path or ""), ciphertext
                )
        if queued_since is not None:  # once, for the run that went through
            metrics.QUEUE_WAIT.observe(max(0.0, turn - queued_since))
        metrics.RUN_TURNAROUND.labels(model=model.name).observe(time.perf_counter() - asked)
        if not self.workers_record_runs:
            metrics.record_run(model.name, seconds, key_cached)
        return result, seconds

    async def clear_answer(
        self, model: ClearModel, payload: bytes, owner: str | None, bounded: bool = True
    ) -> Answer:
        """Parse, bound and predict a clear model's JSON body in a clear worker, when the
        owner's turn comes: the worker's plain answer (see `clear_worker.Answer`)."""
        started = time.perf_counter()
        with clear_run_errors():
            answer = await self.clear.predict(ClearSource.of(model), payload, owner, bounded)
        if answer[0] == "ok":
            metrics.CLEAR_SECONDS.labels(model=model.name).observe(time.perf_counter() - started)
        return answer

    async def run_clear(
        self, model: ClearModel, payload: bytes, owner: str | None, bounded: bool = True
    ) -> dict[str, Any]:
        """`{"output", "warnings"}` of one clear prediction; 4xx when it cannot be made."""
        self.ready_clear(model)
        kind, value, extra = await self.clear_answer(model, payload, owner, bounded)
        if kind == "ok":
            return {"output": value, "warnings": extra}
        raise clear_error(model, kind, value)

    async def check_clear(self, model: ClearModel, payload: bytes, owner: str | None) -> None:
        """400 or 413 now, for a body the model's job would refuse (parsed in a worker)."""
        self.ready_clear(model)
        with clear_run_errors():
            kind, value, _ = await self.clear.check(ClearSource.of(model), payload, owner)
        if kind != "ok":
            raise clear_error(model, kind, value)

    async def run_job(self, job: Job, payload: bytes) -> tuple[bytes, str, float | None]:
        """Run one job as its synchronous call would, checking again what may have changed;
        returns the result, its media type and the FHE seconds."""
        if job.kind == "clear":
            model = self.model(job.model)
            if not isinstance(model, ClearModel):
                raise errors.ModelChanged(f"model {job.model!r} is no longer a clear model")
            if job.attempts == 1:
                metrics.QUEUE_WAIT.observe(max(0.0, time.time() - job.created))
            answer = await self.run_clear(model, payload, job.owner, bounded=False)
            return json.dumps(answer).encode(), "application/json", None
        fhe_model = self.fhe_model(job.model)
        self.check_client_spec(fhe_model, job.client_spec)
        key = await self.fitting_key(job.key_id, fhe_model, job.owner)
        first = job.created if job.attempts == 1 else None
        result, seconds = await self.run_fhe(
            fhe_model, key, payload, job.owner, bounded=False, queued_since=first
        )
        return result, "application/octet-stream", seconds
