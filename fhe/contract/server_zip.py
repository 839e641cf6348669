"""The one reader of Concrete-ML's `server.zip`: what the server compiles, checked before any
compiler sees it (stdlib only, so the API can refuse a bundle without loading Concrete).

A `server.zip` saved via MLIR (what `FHEModelDev.save()` writes) holds the circuit's MLIR, the
jsonpickle'd `fhe.Configuration` it was compiled with, `client.specs.json`, `versions.json`,
`is_simulated` and `composition_rules.json`. The server compiles the MLIR again with the same
options, as concrete-python 2.10's `Server.load` does; anything it would not reproduce faithfully
is refused with a reason rather than mis-run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from fhe.contract.concrete_zip import (
    UnreadableZip,
    member_json,
    read_members,
    recorded_versions,
)

KNOWN_LAYOUTS = {"concrete-ml": ("1.9.0",)}
"""Concrete-ML versions whose server.zip layout and configuration this reader knows."""

VERSION_MISMATCH = "Version mismatch"

REQUIRED = ("versions.json", "is_simulated", "configuration.json", "client.specs.json")

IGNORED_FIELDS = frozenset(
    {
        "verbose", "compiler_debug_mode", "compiler_verbose_mode", "show_graph",
        "show_bit_width_constraints", "show_bit_width_assignments", "show_assigned_graph",
        "show_mlir", "show_statistics", "dump_artifacts_on_unexpected_failures",
        "enable_unsafe_features", "use_insecure_key_cache", "insecure_key_cache_location",
        "auto_adjust_rounders", "auto_adjust_truncators", "single_precision", "show_progress",
        "progress_title", "progress_tag", "fhe_simulation", "fhe_execution",
        "comparison_strategy_preference", "bitwise_strategy_preference", "shifts_with_promotion",
        "multivariate_strategy_preference", "min_max_strategy_preference",
        "relu_on_bits_threshold", "relu_on_bits_chunk_size", "if_then_else_chunk_size",
        "additional_pre_processors", "additional_post_processors", "rounding_exactness",
        "approximate_rounding_config", "optimize_tlu_based_on_measured_bounds",
        "optimize_tlu_based_on_original_bit_width", "dynamic_indexing_check_out_of_bounds",
        "dynamic_assignment_check_out_of_bounds", "simulate_encrypt_run_decrypt",
        "auto_schedule_run", "optim_lsbs_with_lut",
    }
)  # fmt: skip
"""Configuration fields that shaped the MLIR when it was traced (so they are already in
circuit.mlir) or only print or debug: compiling the MLIR again does not read them."""

COMPILE_FIELDS = frozenset(
    {
        "use_gpu", "loop_parallelize", "dataflow_parallelize", "auto_parallelize",
        "compress_evaluation_keys", "compress_input_ciphertexts", "detect_overflow_in_simulation",
        "composable", "p_error", "global_p_error", "show_optimizer",
        "parameter_selection_strategy", "multi_parameter_strategy", "enable_tlu_fusing",
        "print_tlu_fusing", "keyset_restriction", "range_restriction", "security_level",
    }
)  # fmt: skip
"""The fields concrete-python 2.10's `Server.create` turns into compilation options."""

ENUMS = {
    "parameter_selection_strategy": (
        "concrete.fhe.compilation.configuration.ParameterSelectionStrategy",
        ("v0", "mono", "multi"),
    ),
    "multi_parameter_strategy": (
        "concrete.fhe.compilation.configuration.MultiParameterStrategy",
        ("precision", "precision_and_norm2"),
    ),
    "security_level": ("concrete.fhe.compilation.configuration.SecurityLevel", (128, 132)),
}


class UnsupportedServerZip(ValueError):
    """A server.zip this server does not compile, with the reason."""


@dataclass(frozen=True)
class CompileSettings:
    """The compilation options a circuit was built with, as plain values."""

    loop_parallelize: bool
    dataflow_parallelize: bool
    auto_parallelize: bool
    compress_evaluation_keys: bool
    compress_input_ciphertexts: bool
    detect_overflow_in_simulation: bool
    composable: bool
    p_error: float | None
    global_p_error: float | None
    show_optimizer: bool
    parameter_selection_strategy: str
    multi_parameter_strategy: str
    enable_tlu_fusing: bool
    print_tlu_fusing: bool
    security_level: int


@dataclass(frozen=True)
class ServerZip:
    """A checked server.zip: its MLIR, options and the program info the client's keys fit."""

    path: Path
    sha256: str
    mlir: str
    settings: CompileSettings
    client_specs: dict[str, Any]
    versions: dict[str, str]


def _enum(field: str, value: Any) -> Any:
    """A jsonpickle'd Enum (`{"py/reduce": [{"py/type": T}, {"py/tuple": [v]}]}`), or v."""
    expected_type, allowed = ENUMS[field]
    if isinstance(value, dict):
        try:
            reduce = value["py/reduce"]
            kind, argument = reduce[0]["py/type"], reduce[1]["py/tuple"][0]
        except (KeyError, IndexError, TypeError):
            raise UnsupportedServerZip(f"configuration {field} is not an enum value") from None
        if kind != expected_type:
            raise UnsupportedServerZip(f"configuration {field} is a {kind}")
        value = argument
    if isinstance(value, bool) or value not in allowed:
        raise UnsupportedServerZip(f"configuration {field}={value!r} is not one of {allowed}")
    return value


def _flag(config: dict[str, Any], field: str) -> bool:
    value = config[field]
    if not isinstance(value, bool):
        raise UnsupportedServerZip(f"configuration {field}={value!r} is not true or false")
    return value


def _probability(config: dict[str, Any], field: str) -> float | None:
    value = config[field]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise UnsupportedServerZip(f"configuration {field}={value!r} is not a probability")
    return float(value)


def compile_settings(config: Any) -> CompileSettings:
    """The options `Server.create` would set from this configuration; refuses unknown fields,
    GPU circuits and restrictions (which this server does not reproduce)."""
    if not isinstance(config, dict):
        raise UnsupportedServerZip("configuration.json is not an object")
    unknown = sorted(set(config) - IGNORED_FIELDS - COMPILE_FIELDS)
    if unknown:
        raise UnsupportedServerZip(f"unknown configuration fields {unknown}")
    missing = sorted(COMPILE_FIELDS - set(config))
    if missing:
        raise UnsupportedServerZip(f"configuration lacks {missing}")
    if config["use_gpu"] is not False:
        raise UnsupportedServerZip("compiled for a GPU (use_gpu); this server runs on CPUs")
    for restriction in ("keyset_restriction", "range_restriction"):
        if config[restriction] is not None:
            raise UnsupportedServerZip(f"configuration sets {restriction}")
    show = config["show_optimizer"]
    return CompileSettings(
        loop_parallelize=_flag(config, "loop_parallelize"),
        dataflow_parallelize=_flag(config, "dataflow_parallelize"),
        auto_parallelize=_flag(config, "auto_parallelize"),
        compress_evaluation_keys=_flag(config, "compress_evaluation_keys"),
        compress_input_ciphertexts=_flag(config, "compress_input_ciphertexts"),
        detect_overflow_in_simulation=_flag(config, "detect_overflow_in_simulation"),
        composable=_flag(config, "composable"),
        p_error=_probability(config, "p_error"),
        global_p_error=_probability(config, "global_p_error"),
        show_optimizer=bool(show if show is not None else config.get("verbose", False)),
        parameter_selection_strategy=_enum(
            "parameter_selection_strategy", config["parameter_selection_strategy"]
        ),
        multi_parameter_strategy=_enum(
            "multi_parameter_strategy", config["multi_parameter_strategy"]
        ),
        enable_tlu_fusing=_flag(config, "enable_tlu_fusing"),
        print_tlu_fusing=_flag(config, "print_tlu_fusing"),
        security_level=int(_enum("security_level", config["security_level"])),
    )


def installed(package: str) -> str:
    """The installed version of a distribution, or "not installed"."""
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def version_mismatch(versions: dict[str, Any]) -> str | None:
    """Why circuits built with these versions cannot run here, or None: the concrete-python that
    built it must be the one installed, and Concrete-ML's layout one this reader knows."""
    differences = []
    built = versions.get("concrete-python")
    if built != installed("concrete-python"):
        differences.append(f"concrete-python: {built} != {installed('concrete-python')}")
    known = KNOWN_LAYOUTS["concrete-ml"]
    if versions.get("concrete-ml") not in known:
        differences.append(f"concrete-ml: {versions.get('concrete-ml')} != {' or '.join(known)}")
    if differences:
        return VERSION_MISMATCH + " (bundle != this server): " + "; ".join(differences)
    return None


def _json(files: dict[str, bytes], name: str) -> Any:
    try:
        return member_json(files, name)
    except UnreadableZip as error:
        raise UnsupportedServerZip(str(error)) from None


def _one_circuit(specs: Any) -> None:
    """client.specs.json must describe one circuit, with no TFHE-rs interoperation."""
    try:
        circuits = specs["circuits"]
    except (KeyError, TypeError):
        raise UnsupportedServerZip("client.specs.json lists no circuits") from None
    if not isinstance(circuits, list) or len(circuits) != 1:
        count = len(circuits) if isinstance(circuits, list) else "no"
        raise UnsupportedServerZip(f"{count} circuits (this server runs exactly one)")
    tfhers = specs.get("tfhers_specs") or {}
    if not isinstance(tfhers, dict):
        raise UnsupportedServerZip("client.specs.json has malformed tfhers_specs")
    for per_function in tfhers.values():
        values = per_function.values() if isinstance(per_function, dict) else [per_function]
        for types in values:
            listed = types if isinstance(types, list) else [types]
            if any(t is not None for t in listed):
                raise UnsupportedServerZip("TFHE-rs interoperation specs")


def read_server_zip(path: Path) -> ServerZip:
    """Read and check a server.zip; UnsupportedServerZip says what this server will not run."""
    try:  # hashed in blocks, then read under the zip reader's bounds, through one handle
        with path.open("rb") as handle:
            digest = hashlib.sha256()
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
            handle.seek(0)
            files = read_members(handle)
    except (OSError, UnreadableZip) as error:
        raise UnsupportedServerZip(f"server.zip is unreadable: {error}") from None
    missing = [name for name in REQUIRED if name not in files]
    if missing:
        raise UnsupportedServerZip(f"server.zip lacks {missing}")
    try:
        versions = recorded_versions(files)
    except UnreadableZip as error:
        raise UnsupportedServerZip(str(error)) from None
    mismatch = version_mismatch(versions)
    if mismatch:
        raise UnsupportedServerZip(mismatch)
    if "circuit.mlir" not in files:
        raise UnsupportedServerZip(
            "server.zip was not saved via MLIR (no circuit.mlir); save it with "
            "FHEModelDev(...).save(via_mlir=True) so that this server compiles it for its host"
        )
    if files["is_simulated"].strip() != b"0":
        raise UnsupportedServerZip("server.zip holds a simulated circuit")
    rules = _json(files, "composition_rules.json") if "composition_rules.json" in files else None
    if rules:
        raise UnsupportedServerZip("composition rules (this server runs one function)")
    specs = _json(files, "client.specs.json")
    _one_circuit(specs)
    settings = compile_settings(_json(files, "configuration.json"))
    if settings.composable:
        raise UnsupportedServerZip("a composable circuit (this server runs one function)")
    try:
        mlir = files["circuit.mlir"].decode()
    except UnicodeDecodeError:
        raise UnsupportedServerZip("circuit.mlir is not text") from None
    return ServerZip(
        path=path,
        sha256=digest.hexdigest(),
        mlir=mlir,
        settings=settings,
        client_specs=specs,
        versions=versions,
    )
