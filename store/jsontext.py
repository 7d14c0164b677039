"""JSON text for the store: orjson (C, about ten times faster), the stdlib as the fallback.

The fallback covers what orjson refuses (integers beyond 64 bits, say), so an odd request body
can never make a write fail.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def to_json(value: Any, sort_keys: bool = False) -> str:
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort_keys else 0).decode()
    except (TypeError, orjson.JSONEncodeError):
        # ASCII escapes: lone surrogates from undecodable bytes become \\udcxx, not a failed insert.
        return json.dumps(value, sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=True)
