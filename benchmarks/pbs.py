"""The FHE limit of a bundle: PBS count x single-PBS time / cores, beside its measured latency.

It times programmable bootstraps alone: a table lookup over a vector of encrypted integers of the
bundle's maximum bit width and PBS error probability, compiled by Concrete without parallelism, so
the time per element is the single-core cost of one PBS. Concrete picks the timer's parameters
itself; both sets of bootstrap key parameters are printed, so the comparison can be judged. Usage:

    .venv/bin/python -m benchmarks.pbs --bundle models/sentiment [--json docs/bench-pbs.json]
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from fhe.contract.bundle import read_metadata
from fhe.contract.keyset import read_client_specs
from fhe.contract.signals import ignore_sigpipe


def bootstrap_parameters(specs: dict) -> list[str]:
    """The bootstrap keys' parameters of a client spec, one short description each."""
    return [
        f"N={k['params']['polynomialSize']}, k={k['params']['glweDimension']}, "
        f"levels={k['params']['levelCount']}, n={k['params']['inputLweDimension']}"
        for k in specs["keyset"]["lweBootstrapKeys"]
    ]


def bundle_bootstrap_parameters(bundle: Path) -> list[str]:
    """The bootstrap key parameters Concrete chose for a bundle's circuit."""
    return bootstrap_parameters(read_client_specs(bundle / "client.zip"))


def single_pbs_seconds(
    bits: int,
    elements: int = 128,
    repeats: int = 5,
    p_error: float | None = None,
    parameters: list[str] | None = None,
) -> float:
    """Median single-core seconds of one PBS on a `bits`-bit encrypted integer.

    `p_error` is the error probability of one PBS (None: Concrete-ML's 2**-40, as for bundles
    compiled without one). When `parameters` is a list, the timer's bootstrap key parameters are
    appended to it.
    """
    from concrete import fhe

    table = fhe.LookupTable([(value * 7 + 3) % (1 << bits) for value in range(1 << bits)])

    @fhe.compiler({"x": "encrypted"})
    def lookup(x):
        return table[x]

    inputset = [np.random.default_rng(i).integers(0, 1 << bits, elements) for i in range(20)]
    configuration = fhe.Configuration(
        dataflow_parallelize=False,
        loop_parallelize=False,
        auto_parallelize=False,
        compress_evaluation_keys=True,
        p_error=p_error if p_error is not None else 2**-40,
        global_p_error=None,
    )
    circuit = lookup.compile(inputset, configuration)
    if parameters is not None:
        parameters += bootstrap_parameters(json.loads(circuit.client.specs.serialize()))
    circuit.keygen()
    sample = circuit.encrypt(inputset[0])
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        circuit.run(sample)
        ignore_sigpipe()
        seconds.append(time.perf_counter() - started)
    assert int(circuit.statistics["programmable_bootstrap_count"]) == elements
    return statistics.median(seconds) / elements


def main(
    bundle: Annotated[Path, typer.Option(help="bundle directory")] = Path("models/sentiment"),
    latency_json: Annotated[
        Optional[Path], typer.Option(help="benchmarks.latency JSON for the measured median")
    ] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="write results here")] = None,
) -> None:
    """Print the PBS limit of a bundle beside what it measures."""
    meta = read_metadata(bundle)
    bits = meta.circuit.max_bit_width or 8
    pbs = meta.circuit.pbs_count or 0
    cores = os.cpu_count() or 1
    timer_parameters: list[str] = []
    per_pbs = single_pbs_seconds(bits, p_error=meta.circuit.p_error, parameters=timer_parameters)
    measured = meta.metrics.fhe_seconds_median
    if latency_json is not None:
        rows = json.loads(latency_json.read_text())
        rows = rows if isinstance(rows, list) else [rows]
        measured = next(r["fhe_seconds_median"] for r in rows if r["model"] == meta.name)
    limit = pbs * per_pbs / cores
    results = {
        "model": meta.name,
        "pbs_count": pbs,
        "max_bit_width": bits,
        "p_error": meta.circuit.p_error,
        "single_pbs_seconds": per_pbs,
        "bundle_bootstrap_keys": bundle_bootstrap_parameters(bundle),
        "timer_bootstrap_keys": timer_parameters,
        "cores": cores,
        "limit_seconds": limit,
        "measured_fhe_seconds_median": measured,
        "measured_over_limit": measured / limit if limit else None,
    }
    for key, value in results.items():
        shown = f"{value:.6g}" if isinstance(value, float) else str(value)
        typer.echo(f"{key:28} {shown}")
    if json_out is not None:
        json_out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(typer.run(main))
