"""`python -m workers.flower`: Flower for operators, never open to the network by accident.

Basic auth comes from FLOWER_BASIC_AUTH (`user:password[,user2:password2]`),
which Flower reads itself. Without it Flower listens on loopback only, and
asking for another address without auth is refused at start. Any other
FLOWER_* variable is a Flower option (FLOWER_PERSISTENT, FLOWER_URL_PREFIX...).

Workers send task events only while someone watches: Flower switches them on
(its enable_events timer, every few seconds) and the events queue expires
when Flower is gone (celeryconfig), so the pipeline pays nothing without it.
"""

from __future__ import annotations

import os
import shutil
import sys

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def command(environ: dict[str, str]) -> list[str]:
    address = environ.get("FLOWER_ADDRESS", "").strip() or "127.0.0.1"
    if not environ.get("FLOWER_BASIC_AUTH", "").strip() and address not in LOOPBACK:
        raise SystemExit(
            f"refusing to serve Flower on {address} without FLOWER_BASIC_AUTH "
            "(user:password); set it, or leave FLOWER_ADDRESS on loopback"
        )
    port = environ.get("FLOWER_PORT", "").strip() or "5555"
    celery = shutil.which("celery") or os.path.join(os.path.dirname(sys.executable), "celery")
    return [
        celery,
        "-A",
        "workers.flower_app",  # kombu's own transports: Flower's broker page knows them
        "flower",
        f"--address={address}",
        f"--port={port}",
        # memory stays bounded however long Flower runs
        "--max_tasks=10000",
    ]


def main() -> None:
    from webhook_ingest.config import ConfigError, read_secret_files

    try:
        read_secret_files(os.environ)  # FLOWER_BASIC_AUTH_FILE, before it is looked at
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None
    args = command(dict(os.environ))
    os.execv(args[0], args)  # noqa: S606 - argv, no shell


if __name__ == "__main__":
    main()
