"""Airlock as a mitmproxy script:  mitmdump -s addons/gate.py --set airlock_db=URL ...

`airlock run` does exactly this with sensible defaults; people who already run mitmproxy with
their own addons install Airlock into mitmproxy's environment (`pip install airlock-…whl`) and
load this file next to theirs. Every Airlock option is a typed mitmproxy option (`airlock_db`,
`airlock_mappings`, `airlock_policies`, `airlock_route`, `airlock_hold_timeout`,
`airlock_metrics_port`, `airlock_metrics_host`).
"""

try:
    from airlock.addons.gatekeeper import airlock_addons
except ImportError as missing:  # a script loaded from a checkout nobody installed
    raise ImportError(
        "Airlock is not installed in this Python: pip install -e <checkout> (or the wheel) into "
        "the environment mitmproxy runs from"
    ) from missing

addons = airlock_addons()
