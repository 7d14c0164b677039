"""mitmproxy addons: the hooks that put Airlock's decisions on live flows (loaded by gate.py)."""
