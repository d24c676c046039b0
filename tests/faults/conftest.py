"""The fault tests' fixtures: a FaultRedis of the test's own, and the service's
processes on it (tests/faults/fault_harness.py), stopped and removed whatever the
test's outcome.

- `store`: the FaultRedis (state store, and broker on "redis"). `appendfsync`
  is `everysec`; `@pytest.mark.parametrize("fsync", [...])` on a test changes it.
- `system`: a System on `store`, no process started yet. Its broker is `broker`:
  "redis" unless the test parametrizes `broker` (`BROKERS` for both). Extra
  environment for every process it starts comes from the closest
  `@pytest.mark.system_env(NAME="value")` (on the test or the module's
  `pytestmark`); a value known only at run time (a fake API's URL) goes into
  `system.env` before the processes start.

Teardown runs in reverse: every process of the System is stopped (and its
RabbitMQ virtual host deleted) before the FaultRedis is killed and its directory
removed.
"""

from __future__ import annotations

import pytest

from tests.faults.fault_harness import FaultRedis, System


@pytest.fixture
def fsync() -> str:
    return "everysec"


@pytest.fixture
def broker() -> str:
    return "redis"


@pytest.fixture
def store(fsync):
    server = FaultRedis(fsync=fsync).start()
    yield server
    server.cleanup()


@pytest.fixture
def system(request, store, broker):
    marker = request.node.get_closest_marker("system_env")
    system = System(store, broker, dict(marker.kwargs) if marker else None)
    yield system
    system.stop_all()
