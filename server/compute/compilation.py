"""Every served circuit compiled once at start-up, before readiness, in a process of its own.

The API process never imports Concrete: a short-lived child compiles each FHE bundle's circuit
into the host's circuit cache (or finds it there), one bundle at a time, so a bundle that crashes
the compiler costs only that bundle. A bundle that cannot load becomes unloadable with its reason
and its requests get 503; when some bundle failed, the child also compiles the smallest circuit to
tell whether the host itself cannot compile (no linker), which keeps readiness failing while no
circuit can run. Workers then load circuits from the cache.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import Callable
from pathlib import Path

from pebble import ProcessExpired, ProcessPool

from server.compute import circuits
from server.models.registry import FHEModel

log = logging.getLogger("fhe_server")

COMPILE_TIMEOUT_SECONDS = 600.0
"""One circuit's compilation; the shipped ones take under a second."""


class CircuitCompilation:
    """Compiles the models' circuits at start-up and answers readiness while it does."""

    def __init__(self, cache_dir: Path) -> None:
        self.models: list[FHEModel] = []
        self.cache_dir = cache_dir
        self.tried = 0
        self.done = False
        self.host_problem: str | None = None
        self._pool: ProcessPool | None = None

    def start(self) -> None:
        """Start the compiling child now, so that it loads Concrete's compiler while the API
        reads its models directory (the two overlap on two cores)."""
        self._pool = ProcessPool(max_workers=1, context=multiprocessing.get_context("spawn"))
        self._pool.schedule(circuits.load_compiler)

    async def run(
        self, models: list[FHEModel], then: Callable[[list[FHEModel]], None] | None = None
    ) -> None:
        """Compile each model's circuit, mark those that cannot load, probe the host when one
        failed; then call `then` with the models that loaded."""
        self.models = models
        pool = self._pool or ProcessPool(
            max_workers=1, context=multiprocessing.get_context("spawn")
        )
        self._pool = None
        if not self.models:
            pool.stop()
            self.done = True
            return
        try:
            for model in self.models:
                reason = await self._one(pool, model)
                if reason is not None:
                    model.circuit_error = reason
                    log.warning("model %s: circuit unavailable: %s", model.name, reason)
                self.tried += 1
            if any(model.circuit_error for model in self.models):
                self.host_problem = await self._probe(pool)
        finally:
            pool.close()
            await asyncio.to_thread(pool.join)
        loaded = [model for model in self.models if model.ready]
        log.warning(
            "circuits: %d of %d loaded, compiled cache in %s",
            len(loaded),
            len(self.models),
            self.cache_dir,
        )
        self.done = True
        if then is not None:
            then(loaded)

    async def _one(self, pool: ProcessPool, model: FHEModel) -> str | None:
        future = pool.schedule(
            circuits.compile_circuit,
            args=(str(model.path), str(self.cache_dir)),
            timeout=COMPILE_TIMEOUT_SECONDS,
        )
        try:
            return await asyncio.wrap_future(future)
        except ProcessExpired as expired:
            return f"the circuit compiler stopped ({expired})"
        except TimeoutError:
            return f"the circuit did not compile within {COMPILE_TIMEOUT_SECONDS:g} s"
        except Exception as error:  # anything else the child raised: this bundle's, not the API's
            return f"the circuit could not be compiled: {type(error).__name__}: {error}"

    async def _probe(self, pool: ProcessPool) -> str | None:
        future = pool.schedule(
            circuits.host_problem, args=(str(self.cache_dir),), timeout=COMPILE_TIMEOUT_SECONDS
        )
        try:
            return await asyncio.wrap_future(future)
        except Exception as error:  # a crash or time-out of the smallest circuit is the host's
            return f"this host cannot compile circuits: {type(error).__name__}: {error}"

    def close(self) -> None:
        """Stop the child if the server stops before compilation ran."""
        if self._pool is not None:
            self._pool.stop()
            self._pool = None

    async def check(self) -> str | None:
        """Readiness: None once every circuit was tried and, if none loaded, the host is not the
        cause; otherwise why not ready."""
        if not self.done:
            return f"compiling circuits ({self.tried} of {len(self.models)} tried)"
        if self.host_problem and not any(model.ready for model in self.models):
            return self.host_problem
        return None
