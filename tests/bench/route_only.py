"""The benchmark's "bare mitmproxy": nothing but the name-resolution route to the local upstream.

Routing patches only name resolution (once per upstream connection), so bare mitmdump and
Airlock reach the upstream the same way.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from airlock.addons.routing import Routing

addons = [Routing()]
