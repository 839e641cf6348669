"""Runs and threads follow the CPUs a process may really use: its cgroup quota and affinity, not
the node's cores (which is what `os.cpu_count()` says inside a container)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from server.cpu_quota import cgroup_quota
from tests.support.server_process import BIN


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.fast
def test_the_tightest_quota_of_either_cgroup_version_is_read(tmp_path: Path) -> None:
    v2 = tree(
        tmp_path / "v2",
        {
            "cpu.max": "max 100000\n",
            "kubepods/cpu.max": "400000 100000\n",
            "kubepods/pod/cpu.max": "150000 100000\n",
            "proc": "0::/kubepods/pod\n",
        },
    )
    assert cgroup_quota(v2, v2 / "proc") == 1.5
    v1 = tree(
        tmp_path / "v1",
        {
            "cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
            "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
            "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "200000\n",
            "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
            "proc": "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n",
        },
    )
    assert cgroup_quota(v1, v1 / "proc") == 2.0
    # A container without a cgroup namespace sees its host path; its own cgroup is the mount.
    hidden = tree(
        tmp_path / "hidden",
        {
            "cpu/cpu.cfs_quota_us": "100000\n",
            "cpu/cpu.cfs_period_us": "100000\n",
            "proc": "1:cpu:/kubepods/burstable/pod1/x\n",
        },
    )
    assert cgroup_quota(hidden, hidden / "proc") == 1.0
    none = tree(tmp_path / "none", {"cpu.max": "max 100000\n", "proc": "0::/\n"})
    assert cgroup_quota(none, none / "proc") is None


def startup_line(command: list[str], marker: str, cwd: Path) -> str:
    """The line of the process's output that holds `marker` (it is stopped after)."""
    process = subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 120
        assert process.stdout is not None
        for line in process.stdout:
            if marker in line:
                return line
            assert time.monotonic() < deadline, "no start-up line"
        raise AssertionError(f"the process ended without a line holding {marker!r}")
    finally:
        process.kill()
        process.wait()


def test_one_cpu_of_affinity_gives_one_thread_per_run(tiny_models: Path, tmp_path: Path) -> None:
    """`taskset -c 0` on this 2-core machine: the server runs 1 FHE run x 1 thread, a Celery
    worker 1 thread (before, both took the machine's 2)."""
    serve = startup_line(
        [
            "taskset",
            "-c",
            "0",
            str(BIN / "fhe-server"),
            "serve",
            "--dev",
            "--models",
            str(tiny_models),
            "--data-dir",
            str(tmp_path / "serve"),
            "--port",
            "0",
        ],
        "FHE run(s) at once",
        tmp_path,
    )
    assert "1 FHE run(s) at once x 1 thread(s)" in serve, serve
    worker = startup_line(
        [
            "taskset",
            "-c",
            "0",
            str(BIN / "fhe-server"),
            "worker",
            "--models",
            str(tiny_models),
            "--data-dir",
            str(tmp_path / "worker"),
            "--redis",
            "redis://127.0.0.1:9/0",
        ],
        "FHE run at once",
        tmp_path,
    )
    assert "1 FHE run at once x 1 thread(s)" in worker, worker


def test_a_cgroup_quota_of_one_cpu_gives_one_thread_per_run(
    tiny_models: Path, tmp_path: Path
) -> None:
    """A real cgroup (v1 here, as root) with a quota of 1.5 CPUs: the server, on both cores by
    affinity, runs 1 FHE run x 1 thread."""
    mount = Path("/sys/fs/cgroup/cpu")
    group = mount / f"fhe-test-{tmp_path.name}"
    try:
        group.mkdir()
    except OSError as error:
        pytest.skip(f"no writable cgroup v1 cpu controller here: {error}")
    try:
        (group / "cpu.cfs_period_us").write_text("100000")
        (group / "cpu.cfs_quota_us").write_text("150000")
        command = (
            f"echo $$ > {group}/cgroup.procs && exec {BIN / 'fhe-server'} serve --dev "
            f"--models {tiny_models} --data-dir {tmp_path / 'serve'} --port 0"
        )
        line = startup_line(["sh", "-c", command], "FHE run(s) at once", tmp_path)
        assert "1 FHE run(s) at once x 1 thread(s)" in line, line
    finally:
        for _ in range(50):  # whatever the server had started by then goes with it
            pids = (group / "cgroup.procs").read_text().split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            if not pids:
                break
            time.sleep(0.1)
        group.rmdir()
