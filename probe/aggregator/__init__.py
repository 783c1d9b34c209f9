"""The aggregator: many agents' results in, one health state per relay out.

    store = ResultStore(inventory, now=time.time, health=config.health)
    ingested = store.ingest_result(payload, topic)      # from the MQTT callback; never raises
    view = fleet_view(store)                            # /api/v1/servers
    registry = make_registry(store)                     # probe.aggregator.metrics: /metrics

The store (`store.py`), the health rules (`health.py`) and the views (`views.py`) are sans-I/O: a clock is injected,
nothing here opens a socket or starts a task. `metrics.py` imports prometheus_client and is imported only by what
serves /metrics. `testing.py` builds messages for tests.

The names below are loaded when first asked for (PEP 562), not when the package is: importing one module of the
package (`probe serve` needs only `cli`, the agent only `config`) must not build every model of the store and the
views.
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what type checkers see; at run time __getattr__ below imports each name's module when asked
    from probe.aggregator.health import AgentState, Exclusion, HealthState, Vote
    from probe.aggregator.intake import DROP_REASONS, MAX_PAYLOAD, Ingested, Outcome
    from probe.aggregator.records import AgentChange, Change, HealthChange
    from probe.aggregator.store import ResultStore
    from probe.aggregator.views import FleetView, ServerDetail, agent_views, fleet_view, server_detail

# Each exported name and the module it lives in.
_HOMES = {
    "AgentState": "health",
    "Exclusion": "health",
    "HealthState": "health",
    "Vote": "health",
    "DROP_REASONS": "intake",
    "MAX_PAYLOAD": "intake",
    "Ingested": "intake",
    "Outcome": "intake",
    "AgentChange": "records",
    "Change": "records",
    "HealthChange": "records",
    "ResultStore": "store",
    "FleetView": "views",
    "ServerDetail": "views",
    "agent_views": "views",
    "fleet_view": "views",
    "server_detail": "views",
}

__all__ = [
    "DROP_REASONS",
    "MAX_PAYLOAD",
    "AgentChange",
    "AgentState",
    "Change",
    "Exclusion",
    "FleetView",
    "HealthChange",
    "HealthState",
    "Ingested",
    "Outcome",
    "ResultStore",
    "ServerDetail",
    "Vote",
    "agent_views",
    "fleet_view",
    "server_detail",
]

if not TYPE_CHECKING:  # hidden from mypy: a module __getattr__ would let it accept any name, typos included

    def __getattr__(name: str) -> object:
        home = _HOMES.get(name)
        if home is None:  # AttributeError, so that `from probe.aggregator import http` imports the submodule
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
        globals()[name] = value  # the next access is a plain lookup
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
