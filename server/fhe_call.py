"""One encrypted prediction's checks and circuit run, shared by the predict route and the jobs.

Each check raises the APIError a caller should see (status, stable code, message), so a job that
fails later records exactly what a synchronous call would have answered.
"""

from __future__ import annotations

from typing import Any

from server import worker
from server.body import check_declared_length, read_body
from server.errors import APIError
from server.executor import Busy, WorkerCrashed
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
        raise APIError(
            404,
            "unknown_key",
            f"evaluation key {key_id} is unknown here or was evicted; {hint}",
            key_id=key_id,
        )
    if not stored.fits(model.client_spec):
        made_for = ", ".join(stored.client_specs)
        raise APIError(
            409,
            "key_spec_mismatch",
            f"evaluation key {key_id} was made for client spec {made_for}, but model "
            f"{model.name!r} has {model.client_spec}; {hint}",
        )
    return stored


async def read_fhe_request(
    request: Any,
    model: FHEModel,
    key_id: str | None,
    client_spec: str | None,
    limit: int,
    owner: str | None,
) -> tuple[StoredKey, bytes]:
    """The checks of an encrypted prediction, cheapest first, then its ciphertext body."""
    check_declared_length(request, limit, "ciphertext")
    check_client_spec(model, client_spec)
    key = stored_key(request.app.state, key_id, model, owner)
    ciphertext = await read_body(request, limit, "ciphertext")
    if not ciphertext:
        raise APIError(400, "empty_body", "the body must hold a serialized ciphertext")
    return key, ciphertext


async def evaluate(
    state: Any, model: FHEModel, key: StoredKey, ciphertext: bytes
) -> tuple[bytes, float]:
    """Run the circuit on one ciphertext in a worker; returns the result and the FHE seconds."""
    try:
        return await state.executor.run_circuit(
            str(model.path), key.key_id, str(key.path), ciphertext
        )
    except Busy as error:
        raise APIError(503, "busy", str(error), headers={"Retry-After": "2"}) from None
    except worker.BadInput as error:
        raise APIError(400, "malformed_ciphertext", str(error)) from None
    except KeyError:
        raise APIError(404, "unknown_key", "evaluation key was evicted; upload it again") from None
    except WorkerCrashed as error:
        raise APIError(
            422,
            "unprocessable_ciphertext",
            f"{error}: the ciphertext or keys do not fit this model's circuit",
        ) from None
