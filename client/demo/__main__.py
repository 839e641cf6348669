"""`python -m client.demo SESSIONS_DIR`: the demo page alone, configured by FHE_DEMO_* variables.

`fhe-client demo` runs it and deletes SESSIONS_DIR, where sessions keep their keys, after it ends.
"""

import sys
from pathlib import Path

from client.demo.runner import serve_page
from client.demo.settings import DemoSettings

serve_page(DemoSettings(), Path(sys.argv[1]))
