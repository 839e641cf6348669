"""Routes of the models: the listing, a model's card and the files its clients need:
the client spec, the fine-tuned embedder tensors, the tabular preprocessing."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse

from fhe.contract.bundle import CLIENT_ZIP
from fhe.contract.wire import ModelCard, ModelList
from server import errors
from server.deps import InferenceService, Registry
from server.routes.answers import STORES, binary, error_responses

router = APIRouter()


@router.get("/v1/models", response_model=ModelList, responses=error_responses())
async def list_models(registry: Registry) -> ModelList:
    """Every model with its kind, task, labels and status (unloadable ones with the reason)."""
    return ModelList(models=[model.summary() for model in registry.all()])


@router.get("/v1/models/{name}", response_model=ModelCard, responses=error_responses(404))
async def model_card(name: str, inference: InferenceService) -> ModelCard:
    """The model card as JSON: metrics, versions, client spec hash, card text."""
    return inference.model(name).card()


FILE_ERRORS = error_responses(400, 404, *STORES)
"""What a bundle file's route may answer: unknown model, a clear one, a file it has not."""


@router.get(
    "/v1/models/{name}/client.zip",
    response_class=FileResponse,
    responses={200: binary("application/zip", "the client spec (client.zip)"), **FILE_ERRORS},
)
async def client_spec(name: str, inference: InferenceService) -> FileResponse:
    """The FHE client spec clients generate keys and encrypt with."""
    model = inference.fhe_model(name)
    return FileResponse(
        model.path / CLIENT_ZIP,
        media_type="application/zip",
        filename=f"{model.name}-client.zip",
        headers={"X-Client-Spec": model.client_spec or ""},
    )


def _client_file(
    inference: InferenceService, name: str, what: str, missing: errors.ServiceError
) -> FileResponse:
    """A bundle file its clients download (`what`, as the bundle names it), with its sha256 for
    them to check; `missing` is raised when the model has none."""
    model = inference.fhe_model(name)
    found = model.client_file(what)
    if found is None:
        raise missing
    file, sha256 = found
    return FileResponse(
        model.path / file,
        media_type="application/octet-stream",
        filename=f"{model.name}-{file}",
        headers={"X-Content-SHA256": sha256},
    )


@router.get(
    "/v1/models/{name}/embedder-delta",
    response_class=FileResponse,
    responses={200: binary("application/octet-stream", "safetensors"), **FILE_ERRORS},
)
async def embedder_delta(name: str, inference: InferenceService) -> FileResponse:
    """The fine-tuned tensors of the model's client-side embedder (safetensors)."""
    missing = errors.NoEmbedderDelta(f"model {name!r} uses the base embedder, unchanged")
    return _client_file(inference, name, "embedder delta", missing)


@router.get(
    "/v1/models/{name}/embedder-onnx",
    response_class=FileResponse,
    responses={200: binary("application/octet-stream", "an ONNX model"), **FILE_ERRORS},
)
async def embedder_onnx(name: str, inference: InferenceService) -> FileResponse:
    """The model's client-side embedder exported to ONNX (its exact weights, delta included)."""
    missing = errors.NoEmbedderExport(f"model {name!r} ships no ONNX embedder")
    return _client_file(inference, name, "embedder onnx", missing)


@router.get(
    "/v1/models/{name}/tokenizer",
    response_class=FileResponse,
    responses={200: binary("application/octet-stream", "tokenizers' JSON"), **FILE_ERRORS},
)
async def tokenizer(name: str, inference: InferenceService) -> FileResponse:
    """The tokenizer (tokenizers' JSON) of the model's ONNX embedder."""
    missing = errors.NoEmbedderExport(f"model {name!r} ships no ONNX embedder")
    return _client_file(inference, name, "tokenizer", missing)


@router.get(
    "/v1/models/{name}/projection",
    response_class=FileResponse,
    responses={200: binary("application/octet-stream", "an .npz of float32 arrays"), **FILE_ERRORS},
)
async def projection(name: str, inference: InferenceService) -> FileResponse:
    """The client-side reduction of a text model's embedding (PCA, an .npz of float32 arrays)."""
    missing = errors.NoProjection(f"model {name!r} takes the whole embedding")
    return _client_file(inference, name, "projection", missing)


@router.get(
    "/v1/models/{name}/preprocessing",
    response_class=FileResponse,
    responses={200: binary("application/octet-stream", "a skops file"), **FILE_ERRORS},
)
async def preprocessing(name: str, inference: InferenceService) -> FileResponse:
    """The client-side preprocessing of a tabular model (skops), which clients load audited."""
    missing = errors.NoPreprocessing(f"model {name!r} has no client-side preprocessing")
    return _client_file(inference, name, "preprocessing", missing)


@router.get(
    "/v1/models/{name}/preprocessing.json",
    response_class=FileResponse,
    responses={200: binary("application/octet-stream", "plain parameters (JSON)"), **FILE_ERRORS},
)
async def plain_preprocessing(name: str, inference: InferenceService) -> FileResponse:
    """The same preprocessing as plain parameters (JSON), for clients without scikit-learn."""
    missing = errors.NoPreprocessing(
        f"model {name!r} has no client-side preprocessing in plain parameters"
    )
    return _client_file(inference, name, "plain preprocessing", missing)
