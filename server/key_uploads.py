"""Evaluation keys for their owners: accepting them (stream them in under the bounds, check that
they fit a model's key set and deserialize, store them for the token that sent them), saying
whether the server holds them, and deleting them.

Concrete aborts its whole process on keys made for another circuit, so no key reaches a worker
before its description has been compared with a model's key set (`fhe.contract.keyset`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

from fhe.contract.keyset import KeysetDescription, MalformedKeys, uploaded_keyset_file
from fhe.contract.wire import KeyStatus
from server import errors, metrics
from server.compute import Compute
from server.compute.fair_share import FairShare
from server.executors import KEY_WORK, run_in
from server.inference import key_mismatch
from server.models.registry import FHEModel, ModelRegistry
from server.run_errors import key_check_errors
from server.storage.calls import store_call
from server.storage.key import (
    KeyPinned,
    KeyTooLarge,
    QuotaExceeded,
    ReceivingFull,
    StoredKey,
    StoreFull,
    TooManyKeys,
    Upload,
    check_quota,
)
from server.storage.protocols import KeyStore


def described(upload: Upload) -> KeysetDescription:
    """The description of the uploaded keys (blocking); 400 when they are not evaluation keys.
    The file is mapped, not read: junk is refused from its first bytes."""
    try:
        return uploaded_keyset_file(upload.path)
    except MalformedKeys as error:
        metrics.KEY_CHECKS.labels(result="malformed").inc()
        raise errors.MalformedKeys(str(error)) from None


def fitting_specs(models: list[FHEModel], upload: Upload) -> list[str]:
    """The client specs of the models whose key set the uploaded keys fit (blocking); 400 when
    they are not evaluation keys, 409 when they fit no model here."""
    uploaded = described(upload)
    fitting = [
        m.client_spec
        for m in models
        if m.keyset is not None and m.client_spec and not m.keyset.differences(uploaded)
    ]
    metrics.KEY_CHECKS.labels(result="fits" if fitting else "misfit").inc()
    if not fitting:
        raise errors.KeySpecMismatch(
            f"evaluation key {upload.key_id} fits the key set of no model here; generate keys "
            "from a model's client.zip (`fhe-client keygen --model NAME`)",
            differences=["fits no model here"],
        )
    return fitting


@contextmanager
def quota_errors() -> Iterator[None]:
    """The store's refusals of a key as the caller's errors: 403 past the token's bytes, 429
    past its number of keys, 503 when pinned keys leave the store no room."""
    try:
        yield
    except QuotaExceeded as error:
        raise errors.KeyQuotaExceeded(str(error)) from None
    except TooManyKeys as error:
        raise errors.KeyCountExceeded(str(error)) from None
    except StoreFull as error:
        raise errors.KeyStoreFull(str(error), headers={"Retry-After": "30"}) from None


class KeyUploads:
    """The key-upload service over the registry, the key store and the compute backend."""

    def __init__(
        self,
        registry: ModelRegistry,
        keys: KeyStore,
        compute: Compute,
        fhe_share: FairShare,
        max_key_bytes: int,
        token_max_key_bytes: int,
        token_max_keys: int | None = None,
    ) -> None:
        self.registry = registry
        self.keys = keys
        self.compute = compute
        # The deserialization check takes an FHE worker: it waits its turn as runs do.
        self.fhe_share = fhe_share
        self._receiving: Counter[str | None] = Counter()
        self.max_key_bytes = max_key_bytes
        self.token_max_key_bytes = token_max_key_bytes
        self.token_max_keys = token_max_keys

    def model_with_spec(self, client_spec: str) -> FHEModel:
        """The ready model whose client.zip has this hash; 409 when none has."""
        for model in self.registry.all():
            if isinstance(model, FHEModel) and model.ready and model.client_spec == client_spec:
                return model
        raise errors.UnknownClientSpec(
            f"no model here has client spec {client_spec}; download client.zip again"
        )

    async def status(self, key_id: str, owner: str | None) -> KeyStatus:
        """What the server holds of the owner's key: its size, the models it was checked for,
        when the owner stored and last used it; 404 when it holds none (or another token's)."""
        stored = await store_call(self.keys.status, key_id, owner)
        if stored is None or not stored.usable_by(owner):
            raise errors.UnknownKey(
                f"evaluation key {key_id} is not held here (never uploaded, evicted or deleted); "
                "upload it again",
                key_id=key_id,
                held=False,
            )
        models = [
            m.name
            for m in self.registry.all()
            if isinstance(m, FHEModel) and m.client_spec and m.client_spec in stored.client_specs
        ]
        return KeyStatus(
            key_id=stored.key_id,
            held=True,
            bytes=stored.size,
            client_specs=list(stored.client_specs),
            models=models,
            created=stored.created,
            last_used=stored.last_used,
        )

    async def delete(self, key_id: str, owner: str | None) -> None:
        """Delete the owner's key (its bytes go once no token holds them); 404 when it holds
        none, 409 while queued or running work needs it."""
        try:
            deleted = await store_call(self.keys.delete, key_id, owner)
        except KeyPinned as error:
            raise errors.KeyInUse(str(error), headers={"Retry-After": "10"}) from None
        if not deleted:
            raise errors.UnknownKey(f"evaluation key {key_id} is not held here", key_id=key_id)

    async def upload(
        self, chunks: AsyncIterator[bytes], client_spec: str | None, owner: str | None
    ) -> tuple[StoredKey, bool]:
        """Receive, check and store one upload; returns the stored key and whether it is new.

        A token's uploads in progress may hold at most one upload's worth (`max_key_bytes`) of
        the bytes being received, so one token cannot fill the server's receiving bound."""
        spec_model = self.model_with_spec(client_spec) if client_spec else None
        counted = 0

        async def owned(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
            nonlocal counted
            async for chunk in chunks:
                if owner is not None and self._receiving[owner] + len(chunk) > self.max_key_bytes:
                    raise errors.TooManyRequests(
                        f"this token is already uploading {self._receiving[owner]} bytes of "
                        f"keys; one upload's worth ({self.max_key_bytes}) may arrive at once",
                        headers={"Retry-After": "10"},
                    )
                self._receiving[owner] += len(chunk)
                counted += len(chunk)
                yield chunk

        try:
            try:
                upload = await self.keys.receive(owned(chunks), self.max_key_bytes)
            except KeyTooLarge as error:
                raise errors.TooLarge(str(error)) from None
            except ReceivingFull as error:
                raise errors.Busy(str(error), headers={"Retry-After": "10"}) from None
            try:
                return await self._store(upload, spec_model, owner)
            finally:
                self.keys.discard(upload)
        finally:
            self._receiving[owner] -= counted
            if self._receiving[owner] <= 0:
                del self._receiving[owner]

    async def _store(
        self, upload: Upload, spec_model: FHEModel | None, owner: str | None
    ) -> tuple[StoredKey, bool]:
        """Check a received upload (non-empty, within the token's quotas, fitting the named
        client spec or, without one, some model here, deserializable) and only then store it:
        storing is what may evict other keys. Returns the key and whether it is new for `owner`."""
        if upload.size == 0:
            raise errors.EmptyBody("the body must hold serialized evaluation keys")
        existing = await store_call(self.keys.status, upload.key_id)
        if owner is not None and (existing is None or not existing.usable_by(owner)):
            held_keys, held_bytes = await store_call(self.keys.owner_usage, owner)
            with quota_errors():
                check_quota(
                    held_keys,
                    held_bytes,
                    upload.size,
                    self.token_max_key_bytes,
                    self.token_max_keys,
                )
        checked = await self._fitting(upload, spec_model, existing)
        if existing is None:
            await self._check_deserializes(upload, owner)
        with quota_errors():
            # Off the event loop: with a database this copies the key in and may wait for
            # another replica's upload to release the store lock.
            stored, created = await run_in(
                KEY_WORK,
                self.keys.add,
                upload,
                checked[0] if checked else None,
                owner,
                self.token_max_key_bytes,
                self.token_max_keys,
            )
        for spec in checked[1:]:
            await store_call(self.keys.add_spec, stored.key_id, spec)
        return await store_call(self.keys.status, stored.key_id, owner) or stored, created

    async def _fitting(
        self, upload: Upload, spec_model: FHEModel | None, existing: StoredKey | None
    ) -> list[str]:
        """The client specs the upload is checked against and fits; 409 when it fits none."""
        if spec_model is None:
            models = [m for m in self.registry.all() if isinstance(m, FHEModel) and m.ready]
            return await run_in(KEY_WORK, fitting_specs, models, upload)
        if existing is not None and existing.fits(spec_model.client_spec):
            return []
        uploaded = await run_in(KEY_WORK, described, upload)
        differences = (
            spec_model.keyset.differences(uploaded)
            if spec_model.keyset is not None
            else ["the model's client spec lists no key set"]
        )
        metrics.KEY_CHECKS.labels(result="misfit" if differences else "fits").inc()
        if differences:
            raise key_mismatch(spec_model, upload.key_id, differences)
        return [spec_model.client_spec]

    async def _check_deserializes(self, upload: Upload, owner: str | None) -> None:
        """Have a worker deserialize the keys when the owner's turn comes, mapping what can go
        wrong to the caller's error."""
        with key_check_errors():
            async with self.fhe_share.turn(owner):
                await self.compute.check_keys(upload.key_id, str(upload.path))
