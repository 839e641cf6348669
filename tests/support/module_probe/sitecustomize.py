"""Loaded at start-up by every Python process whose PYTHONPATH holds this directory (the API, its
pool workers, a Celery worker and its children): records, once a second and at exit, which of the
heavy ML packages the process has imported, so a test can read what real server processes held.

Each process writes $FHE_MODULE_PROBE_DIR/<pid>.json: its command line and the imported modules
whose names start with torch, transformers, xgboost, sklearn, concrete.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
import time

WATCHED = ("torch", "transformers", "xgboost", "sklearn", "concrete")


def _write() -> None:
    folder = os.environ.get("FHE_MODULE_PROBE_DIR")
    if not folder:
        return
    modules = sorted(name for name in list(sys.modules) if name.split(".")[0] in WATCHED)
    record = {"pid": os.getpid(), "argv": sys.argv, "modules": modules}
    path = os.path.join(folder, f"{os.getpid()}.json")
    partial = f"{path}.partial"
    try:
        with open(partial, "w", encoding="utf-8") as handle:
            json.dump(record, handle)
        os.replace(partial, path)
    except OSError:
        pass


def _every_second() -> None:
    while True:
        time.sleep(1.0)
        _write()


def _start() -> None:
    threading.Thread(target=_every_second, daemon=True, name="module-probe").start()


if os.environ.get("FHE_MODULE_PROBE_DIR"):
    atexit.register(_write)
    _start()
    # A forked child (Celery's prefork pool) has no threads of its parent: start its own.
    os.register_at_fork(after_in_child=_start)
