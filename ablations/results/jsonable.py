"""Values as valid JSON: non-finite floats (which JSON cannot hold) become null."""

from __future__ import annotations

import math
from typing import Any


def json_safe(value: Any) -> Any:
    """Non-finite floats → None, recursively, so that the value is valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
