"""One encrypted prediction's checks and circuit run, shared by the predict route and the jobs.

Each check raises the APIError a caller should see (status, stable code, message), so a job that
fails later records exactly what a synchronous call would have answered.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import cachetools
from starlette.concurrency import run_in_threadpool

from fhe.keyset import MalformedKeys, uploaded_keyset
from server import worker
from server.body import check_declared_length, read_body
from server.errors import APIError
from server.executor import Busy, RunRefused, TimedOut, WorkerCrashed
from server.keystore import StoredKey
from server.registry import FHEModel, Model

KEYGEN_HINT = "run `fhe-client keygen --model {model}` to generate and upload evaluation keys"


def find_model(state: Any, name: str) -> Model:
    """The model called `name`, or 404 naming the models there are."""
    model = state.registry.get(name)
    if model is None:
        names = [m.name for m in state.registry.all()]
        raise APIError(404, "unknown_model", f"no model named {name!r}; models here: {names}")
    return model


def ready_fhe(model: Model) -> FHEModel:
    """The model as an FHE model that can run, or 400 saying why not."""
    if not isinstance(model, FHEModel):
        raise APIError(400, "not_fhe", f"model {model.name!r} is a {model.kind} model, not FHE")
    if not model.ready:
        raise APIError(400, "model_unloadable", f"model {model.name!r} cannot load: {model.reason}")
    return model


def check_client_spec(model: FHEModel, client_spec: str | None) -> None:
    """400 without a client spec hash, 409 when it is not the model's."""
    if not client_spec:
        raise APIError(
            400,
            "missing_client_spec",
            f"the X-Client-Spec header (sha256 of client.zip) is required; server has "
            f"{model.client_spec}",
        )
    if client_spec != model.client_spec:
        raise APIError(
            409,
            "client_spec_mismatch",
            f"your client spec {client_spec} differs from the server's {model.client_spec} "
            f"for model {model.name!r}: download client.zip again and "
            + KEYGEN_HINT.format(model=model.name),
            client_spec=client_spec,
            server_client_spec=model.client_spec,
        )


def stored_key(
    state: Any, key_id: str | None, model: FHEModel, owner: str | None = None
) -> StoredKey:
    """The stored evaluation key for this model: 400 without an id, 404 unknown (or another
    token's: its existence is not revealed), 409 made for another client spec."""
    hint = KEYGEN_HINT.format(model=model.name)
    if not key_id:
        raise APIError(400, "missing_key_id", f"the X-Key-Id header is required; {hint}")
    stored = state.keystore.get(key_id)
    if stored is None or not stored.usable_by(owner):
        raise unknown_key(key_id, model)
    return stored


def unknown_key(key_id: str, model: FHEModel) -> APIError:
    """404 unknown_key: the caller should upload its keys again."""
    return APIError(
        404,
        "unknown_key",
        f"evaluation key {key_id} is unknown here or was evicted; "
        + KEYGEN_HINT.format(model=model.name),
        key_id=key_id,
    )


def keyset_differences(model: FHEModel, key_path: Path) -> list[str]:
    """What in the serialized keys at `key_path` differs from the model's key set (blocking)."""
    if model.keyset is None:
        return ["the model's client spec lists no key set"]
    try:
        return model.keyset.differences(uploaded_keyset(key_path.read_bytes()))
    except MalformedKeys as error:
        return [str(error)]


def fitting_specs(models: list[FHEModel], upload: Any) -> list[str]:
    """The client specs of the models whose key set the uploaded keys fit (blocking); 400 when
    they are not evaluation keys, 409 when they fit no model here."""
    try:
        uploaded = uploaded_keyset(upload.path.read_bytes())
    except MalformedKeys as error:
        raise APIError(400, "malformed_keys", str(error)) from None
    fitting = [
        m.client_spec
        for m in models
        if m.keyset is not None and m.client_spec and not m.keyset.differences(uploaded)
    ]
    if not fitting:
        raise APIError(
            409,
            "key_spec_mismatch",
            f"evaluation key {upload.key_id} fits the key set of no model here; generate keys "
            "from a model's client.zip (`fhe-client keygen --model NAME`)",
            differences=["fits no model here"],
        )
    return fitting


def key_mismatch(model: FHEModel, key_id: str, differences: list[str]) -> APIError:
    """409 key_spec_mismatch naming what differs between the keys and the model's key set."""
    return APIError(
        409,
        "key_spec_mismatch",
        f"evaluation key {key_id} does not fit model {model.name!r} (client spec "
        f"{model.client_spec}): {'; '.join(differences[:8])}; "
        + KEYGEN_HINT.format(model=model.name),
        differences=differences,
    )


_CHECKS = asyncio.Semaphore(2)
"""Structural key checks read up to a whole key file: at most two at once."""
_MISFITS: cachetools.LRUCache[tuple[str, str], list[str]] = cachetools.LRUCache(maxsize=1024)
"""(key id, client spec) pairs found not to fit, so a refused key is not read again and again."""


async def fitting_key(
    state: Any, key_id: str | None, model: FHEModel, owner: str | None = None
) -> StoredKey:
    """The stored key, checked against the model's key set before any circuit sees it.

    A key uploaded for this model's client spec was checked at upload; any other key is checked
    the first time it is used with the model, and the result recorded, so Concrete is never
    handed keys that would abort its process.
    """
    stored = stored_key(state, key_id, model, owner)
    if stored.fits(model.client_spec):
        return stored
    pair = (stored.key_id, model.client_spec or "")
    differences = _MISFITS.get(pair)
    if differences is None:
        async with _CHECKS:
            with state.keystore.in_use(stored.key_id):
                try:
                    differences = await run_in_threadpool(keyset_differences, model, stored.path)
                except OSError:
                    raise unknown_key(stored.key_id, model) from None
        if differences:
            _MISFITS[pair] = differences
    if differences:
        raise key_mismatch(model, stored.key_id, differences)
    state.keystore.add_spec(stored.key_id, model.client_spec)
    return stored


async def read_fhe_request(
    request: Any,
    model: FHEModel,
    key_id: str | None,
    client_spec: str | None,
    limit: int,
    owner: str | None,
) -> tuple[StoredKey, bytes]:
    """The checks of an encrypted prediction, cheapest first, then its ciphertext body (no
    larger than the model's client spec allows a ciphertext to be), then the key's fit."""
    if model.max_ciphertext_bytes is not None:
        limit = min(limit, model.max_ciphertext_bytes)
    check_declared_length(request, limit, f"a ciphertext for model {model.name!r}")
    check_client_spec(model, client_spec)
    stored_key(request.app.state, key_id, model, owner)
    ciphertext = await read_body(request, limit, "ciphertext")
    if not ciphertext:
        raise APIError(400, "empty_body", "the body must hold a serialized ciphertext")
    # Checked last: from here to the job's row or the run's pin there is no await of the body,
    # so an upload streaming meanwhile cannot evict the key in between.
    key = await fitting_key(request.app.state, key_id, model, owner)
    return key, ciphertext


async def evaluate(
    state: Any, model: FHEModel, key: StoredKey, ciphertext: bytes
) -> tuple[bytes, float]:
    """Run the circuit on one ciphertext in a worker; returns the result and the FHE seconds."""
    try:
        with state.keystore.in_use(key.key_id):
            return await state.executor.run_circuit(
                str(model.path), key.key_id, str(key.path), ciphertext
            )
    except Busy as error:
        raise APIError(503, "busy", str(error), headers={"Retry-After": "2"}) from None
    except worker.BadInput as error:
        raise APIError(400, "malformed_ciphertext", str(error)) from None
    except KeyError:
        raise APIError(404, "unknown_key", "evaluation key was evicted; upload it again") from None
    except TimedOut as error:
        raise APIError(504, "fhe_timeout", str(error), headers={"Retry-After": "30"}) from None
    except RunRefused as error:
        raise APIError(error.status, error.code, str(error)) from None
    except WorkerCrashed as error:
        raise APIError(
            422,
            "unprocessable_ciphertext",
            f"{error}: the ciphertext or keys do not fit this model's circuit; other requests "
            "were not affected",
        ) from None
