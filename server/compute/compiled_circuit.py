"""A bundle's circuit compiled for this host with `concrete.compiler` alone (no torch,
`concrete.fhe` or Concrete-ML), cached on disk so that it is compiled once per host.

It does what concrete-python 2.10's `Server.load` / `Server.create` / `Server.run` do for a
server.zip saved via MLIR: the same compilation options, then the compiled program info is checked
against the bundle's `client.specs.json` (the client's keys were made for those parameters).

The compiled code depends on more than the MLIR: Concrete's compiler targets the host CPU (LLVM's
host CPU name and features, like `-march=native`), links with the system `ld`, and records the
absolute path of its runtime library in the shared object. So the cache key holds the server.zip
digest, the concrete-python version, the runtime library's path, the machine and the CPU's model
and flags. A cache made on another CPU is a miss and the circuit is compiled again here.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

from fhe.contract.server_zip import CompileSettings, ServerZip, installed, read_server_zip

READY_MARK = "compiled.json"
"""Written last in a compiled entry; an entry without it is incomplete and ignored."""

PROBE_MLIR = """
func.func @main(%arg0: !FHE.eint<2>) -> !FHE.eint<2> {
  return %arg0 : !FHE.eint<2>
}
"""
"""The smallest circuit: compiling it shows whether this host can compile and link at all."""


class CircuitUnavailable(Exception):
    """The bundle's circuit cannot run here, with the reason (its file, or this host)."""


def _cpu() -> str:
    """The CPU model and feature flags, which the compiled code is specialised for."""
    model = flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = " ".join(sorted(value.split()))
                if model and flags:
                    break
    except OSError:
        pass
    return f"{platform.machine()}|{model}|{flags}"


@cache
def host_fingerprint() -> str:
    """What of this host the compiled code depends on, hashed (the part of every cache key)."""
    from concrete.compiler import lookup_runtime_lib

    parts = [installed("concrete-python"), lookup_runtime_lib(), _cpu()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def cache_entry(cache_dir: Path, server_zip_sha256: str) -> Path:
    """Where the circuit of a server.zip with this digest is compiled for this host."""
    return cache_dir / f"{server_zip_sha256[:32]}-{host_fingerprint()}"


def compilation_options(settings: CompileSettings) -> Any:
    """`Server.create`'s Configuration -> CompilationOptions mapping (concrete-python 2.10)."""
    from concrete.compiler import (
        Backend,
        CompilationOptions,
        OptimizerMultiParameterStrategy,
        OptimizerStrategy,
        init_dfr,
    )

    options = CompilationOptions(Backend.CPU)
    options.simulation(False)
    options.set_loop_parallelize(settings.loop_parallelize)
    options.set_dataflow_parallelize(settings.dataflow_parallelize)
    options.set_auto_parallelize(settings.auto_parallelize)
    options.set_compress_evaluation_keys(settings.compress_evaluation_keys)
    options.set_compress_input_ciphertexts(settings.compress_input_ciphertexts)
    options.set_enable_overflow_detection_in_simulation(settings.detect_overflow_in_simulation)
    options.set_composable(settings.composable)
    if settings.auto_parallelize or settings.dataflow_parallelize:
        init_dfr()
    # Concrete-python 2.10's defaults: global_p_error 1e-5 and p_error unset (1.0) when neither
    # is given; an unset one of the two is 1.0 when the other is.
    global_p, p = settings.global_p_error, settings.p_error
    if global_p is None and p is None:
        global_p = 1 / 100_000
    options.set_global_p_error(global_p if global_p is not None else 1.0)
    options.set_p_error(p if p is not None else 1.0)
    options.set_display_optimizer_choice(settings.show_optimizer)
    strategies = {
        "v0": OptimizerStrategy.V0,
        "mono": OptimizerStrategy.DAG_MONO,
        "multi": OptimizerStrategy.DAG_MULTI,
    }
    options.set_optimizer_strategy(strategies[settings.parameter_selection_strategy])
    multi = {
        "precision": OptimizerMultiParameterStrategy.PRECISION,
        "precision_and_norm2": OptimizerMultiParameterStrategy.PRECISION_AND_NORM2,
    }
    options.set_optimizer_multi_parameter_strategy(multi[settings.multi_parameter_strategy])
    options.set_enable_tlu_fusing(settings.enable_tlu_fusing)
    options.set_print_tlu_fusing(settings.print_tlu_fusing)
    options.set_security_level(settings.security_level)
    return options


def _compile(mlir: str, options: Any, outdir: Path) -> Any:
    """Compile MLIR into a shared library in `outdir` (Concrete runs the system `ld`)."""
    from concrete.compiler import Compiler, lookup_runtime_lib

    compiler = Compiler(
        str(outdir),
        lookup_runtime_lib(),
        generate_shared_lib=True,
        generate_static_lib=False,
        generate_program_info=True,
        generate_compilation_feedback=True,
    )
    return compiler.compile(mlir, options)


def _program_info(library: Any) -> dict[str, Any]:
    return json.loads(library.get_program_info().serialize())


def _same_program(library: Any, bundle: ServerZip) -> None:
    """The parameters compiled here must be those the client's keys were made for."""
    shipped = dict(bundle.client_specs)
    shipped.pop("tfhers_specs", None)
    if _program_info(library) != shipped:
        raise CircuitUnavailable(
            "the circuit compiled here has other parameters than the bundle's client.specs.json "
            "(keys made for this bundle would not fit it)"
        )


def _set_aside(entry: Path) -> None:
    """Remove an entry without its mark (left half-deleted by hand): renamed away first, so no
    reader ever sees it change under it."""
    stale = Path(tempfile.mkdtemp(prefix=".stale-", dir=entry.parent))
    entry.rename(stale / entry.name)
    shutil.rmtree(stale, ignore_errors=True)


def compile_entry(bundle: ServerZip, cache_dir: Path) -> tuple[Path, bool]:
    """The cache entry of the bundle's circuit, compiled and published now unless it was there;
    returns it and whether it was compiled by this call.

    A new entry is compiled in a temporary directory beside it and renamed into place once whole,
    so another process (a restart, another worker) sees it complete or not at all; two processes
    compiling at once both succeed and one copy is kept.
    """
    entry = cache_entry(cache_dir, bundle.sha256)
    if (entry / READY_MARK).is_file():
        return entry, False
    cache_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".compiling-", dir=cache_dir))
    try:
        try:
            library = _compile(bundle.mlir, compilation_options(bundle.settings), work)
        except RuntimeError as error:
            reason = linker_hint(f"the circuit did not compile: {brief(error)}")
            raise CircuitUnavailable(reason) from None
        _same_program(library, bundle)
        mark = {
            "server_zip_sha256": bundle.sha256,
            "concrete_python": installed("concrete-python"),
            "host": host_fingerprint(),
        }
        (work / READY_MARK).write_text(json.dumps(mark))
        try:
            work.rename(entry)
        except OSError:  # another process published it first (theirs is as good), or stale
            if not (entry / READY_MARK).is_file():
                _set_aside(entry)
                work.rename(entry)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return entry, True


class CompiledCircuit:
    """One bundle's circuit, loaded from the compile cache, ready to run ciphertexts."""

    def __init__(self, server_zip: Path, cache_dir: Path) -> None:
        from concrete.compiler import Library, ServerProgram

        try:
            bundle = read_server_zip(server_zip)
        except ValueError as error:
            raise CircuitUnavailable(str(error)) from None
        entry, self.compiled = compile_entry(bundle, cache_dir)
        library = Library(str(entry))
        if not self.compiled:  # a cached entry: checked as a fresh one was before it was kept
            _same_program(library, bundle)
        circuits = library.get_program_info().get_circuits()
        self.function = circuits[0].get_name()
        self.circuit = ServerProgram(library, False).get_server_circuit(self.function)
        self.entry = entry

    def run(self, ciphertext: bytes, keys: Any) -> bytes:
        """Evaluate the circuit on one serialized ciphertext with deserialized keys."""
        from concrete.compiler import TransportValue

        results = self.circuit.call([TransportValue.deserialize(ciphertext)], keys)
        if len(results) != 1:
            raise CircuitUnavailable(f"the circuit gave {len(results)} outputs, not one")
        return results[0].serialize()


def deserialize_keys(data: bytes) -> Any:
    """Evaluation keys as the circuit takes them (Concrete's ServerKeyset)."""
    from concrete.compiler import ServerKeyset

    return ServerKeyset.deserialize(data)


def probe_host(cache_dir: Path) -> str | None:
    """Why this host cannot compile circuits (no linker, say), or None when it can."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    work = tempfile.mkdtemp(prefix=".probe-", dir=cache_dir)
    try:
        settings = CompileSettings(
            loop_parallelize=False,
            dataflow_parallelize=False,
            auto_parallelize=False,
            compress_evaluation_keys=False,
            compress_input_ciphertexts=False,
            detect_overflow_in_simulation=False,
            composable=False,
            p_error=None,
            global_p_error=None,
            show_optimizer=False,
            parameter_selection_strategy="multi",
            multi_parameter_strategy="precision",
            enable_tlu_fusing=True,
            print_tlu_fusing=False,
            security_level=128,
        )
        _compile(PROBE_MLIR, compilation_options(settings), Path(work))
    except RuntimeError as error:
        return linker_hint(f"this host cannot compile circuits: {brief(error)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return None


def brief(error: Exception) -> str:
    """The compiler's message in one line: its first line cut short and its last (a failed link
    says the command, then the shell's `ld: not found`)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if len(lines) == 1:
        return lines[0][:400]
    first = lines[0] if len(lines[0]) <= 120 else lines[0][:120] + "..."
    return f"{first} {lines[-1][:200]}"


def linker_hint(reason: str) -> str:
    """The reason, with what to do when the cause is a missing system linker."""
    if "ld" in reason and "not found" in reason:
        return reason + " (install binutils: Concrete links each circuit with the system `ld`)"
    return reason
