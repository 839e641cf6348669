"""Assemble a Hugging Face Space repository from this checkout.

    python deployment/space/assemble.py OUT [--remote-server]

OUT receives the Space's README.md (front matter), app.py and requirements.txt, and the project's
client/ and fhe/ packages; unless --remote-server is given, also server/ and the models the demo's
two tabs use (models/sentiment and models/breast-cancer), so that the Space runs its own
fhe-server. Push OUT to the Space's git repository.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

SPACE = Path(__file__).resolve().parent
REPO = SPACE.parents[1]
SPACE_FILES = ("README.md", "app.py", "requirements.txt")
SPACE_MODELS = ("sentiment", "breast-cancer")
"""The bundles of the demo's text and tabular tabs."""
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")


def assemble(out: Path, remote_server: bool = False) -> list[str]:
    """Write the Space into `out` (which must not exist); return the top-level entries written."""
    out.mkdir(parents=True)
    for name in SPACE_FILES:
        shutil.copy2(SPACE / name, out / name)
    packages = ["client", "fhe"] if remote_server else ["client", "fhe", "server"]
    for package in packages:
        shutil.copytree(REPO / package, out / package, ignore=IGNORED)
    if not remote_server:
        for model in SPACE_MODELS:
            shutil.copytree(REPO / "models" / model, out / "models" / model)
    return sorted(path.name for path in out.iterdir())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="new directory for the Space repository")
    parser.add_argument(
        "--remote-server",
        action="store_true",
        help="leave out server/ and models/: the Space calls the server at FHE_SERVER_URL",
    )
    args = parser.parse_args()
    written = assemble(args.out, args.remote_server)
    print(f"Space assembled in {args.out}: {', '.join(written)}")


if __name__ == "__main__":
    main()
