"""Compiling a Concrete-ML model and measuring its circuit for real: PBS count, bit width, keys,
ciphertext sizes and server run time, through Concrete-ML's own deployment client and server."""

from __future__ import annotations

import platform
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress

from fhe.contract.bundle import CLIENT_ZIP, SERVER_ZIP, client_spec_hash
from fhe.contract.signals import ignore_sigpipe

console = Console(stderr=True)


def compile_model(model: Any, inputset: np.ndarray, p_error: float | None = None) -> Any:
    """Compile with key and input ciphertext compression on (smaller uploads, same results).

    `p_error` is the error probability of one PBS; None keeps Concrete-ML's default (2**-40).
    A larger one lets Concrete pick smaller, faster parameters; simulation then injects errors
    at that rate, so the simulated accuracy shows what it costs.
    """
    from concrete.fhe import Configuration

    configuration = Configuration(compress_evaluation_keys=True, compress_input_ciphertexts=True)
    return model.compile(inputset, configuration=configuration, p_error=p_error)


def circuit_cost(circuit: Any) -> tuple[int, int]:
    """PBS count and maximum integer bit width of a compiled circuit."""
    pbs = int(circuit.statistics.get("programmable_bootstrap_count", 0))
    return pbs, int(circuit.graph.maximum_integer_bit_width())


@dataclass(frozen=True)
class RealRun:
    """A bundle run for real on a sample: decrypted outputs, per-row server seconds, keygen
    seconds and the byte sizes of the evaluation keys and of one input and output ciphertext."""

    outputs: np.ndarray
    seconds: list[float]
    keygen_seconds: float
    key_bytes: int
    size_in: int
    size_out: int

    def timings(self, compile_seconds: float) -> dict[str, Any]:
        """The Timings fields of a bundle's metrics."""
        return {
            "fhe_sample_size": len(self.seconds),
            "fhe_seconds_median": float(statistics.median(self.seconds)),
            "fhe_seconds_p90": float(np.percentile(self.seconds, 90)),
            "keygen_seconds": self.keygen_seconds,
            "evaluation_key_bytes": self.key_bytes,
            "ciphertext_in_bytes": self.size_in,
            "ciphertext_out_bytes": self.size_out,
            "compile_seconds": compile_seconds,
            "machine": machine_description(),
        }


def measure_real_fhe(bundle_dir: Path, x_sample: np.ndarray) -> RealRun:
    """Run the exported bundle through Concrete-ML's deployment client and server for real."""
    from concrete import fhe
    from concrete.ml.deployment import FHEModelClient, FHEModelServer

    with tempfile.TemporaryDirectory() as key_dir:
        client = FHEModelClient(str(bundle_dir), key_dir=key_dir)
        started = time.perf_counter()
        client.generate_private_and_evaluation_keys(force=True)
        serialized_keys = client.get_serialized_evaluation_keys()
        keygen_seconds = time.perf_counter() - started
        server = FHEModelServer(str(bundle_dir))
        keys = fhe.EvaluationKeys.deserialize(serialized_keys)
        probabilities, seconds = [], []
        size_in = size_out = 0
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("real FHE on the sample", total=len(x_sample))
            for row in x_sample:
                encrypted = client.quantize_encrypt_serialize(row[None, :])
                started = time.perf_counter()
                result = server.run(encrypted, keys)
                seconds.append(time.perf_counter() - started)
                ignore_sigpipe()
                probabilities.append(client.deserialize_decrypt_dequantize(result)[0])
                size_in, size_out = len(encrypted), len(result)
                progress.advance(task)
    return RealRun(
        np.array(probabilities), seconds, keygen_seconds, len(serialized_keys), size_in, size_out
    )


def machine_description() -> str:
    """A one-line description of the machine measurements were taken on."""
    import os

    return f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def export_circuit(model: Any, bundle_dir: Path) -> str:
    """Save a compiled model's client.zip and server.zip; return the client spec hash."""
    from concrete.ml.deployment import FHEModelDev

    bundle_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        FHEModelDev(scratch, model).save()
        for name in (CLIENT_ZIP, SERVER_ZIP):
            shutil.copyfile(Path(scratch) / name, bundle_dir / name)
    return client_spec_hash(bundle_dir)
