"""The service's one clock: epoch milliseconds, the unit of every timestamp it
stores (`updated_at`, `created_at`, `last_webhook_update`, zset scores)."""

from __future__ import annotations

import time


def now_ms() -> int:
    return int(time.time() * 1000)
