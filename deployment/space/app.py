"""Hugging Face Space entry point: the encrypted sentiment demo.

With the Space variable FHE_SERVER_URL set, the demo calls that server. Without it, the Space starts
its own fhe-server on loopback over the bundles in models/ and the demo calls that one.
"""

import os

from client.demo.runner import run_demo
from client.demo.settings import DemoSettings

os.environ.setdefault("FHE_DEMO_HOST", os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"))
os.environ.setdefault("FHE_DEMO_PORT", os.environ.get("GRADIO_SERVER_PORT", "7860"))

if __name__ == "__main__":
    run_demo(DemoSettings(start_server="FHE_SERVER_URL" not in os.environ))
