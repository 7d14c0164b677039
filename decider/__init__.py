"""The decider: decides and records every request (core.py), in a worker process or a thread
of the proxy (client.py), over typed messages (messages.py, wire.py)."""
