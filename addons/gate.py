"""Airlock as a mitmproxy script:  mitmdump -s addons/gate.py --set airlock_db=URL ...

`airlock run` does exactly this with sensible defaults; people who already run mitmproxy with
their own addons can load this file next to them. Every Airlock option is a typed mitmproxy
option (`airlock_db`, `airlock_mappings`, `airlock_policies`, `airlock_route`,
`airlock_hold_timeout`, `airlock_metrics_port`, `airlock_metrics_host`).
"""

import sys
from pathlib import Path

try:
    from addons.gatekeeper import airlock_addons
except ImportError:  # not pip-installed: import from the checkout this file lives in
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from addons.gatekeeper import airlock_addons

addons = airlock_addons()
