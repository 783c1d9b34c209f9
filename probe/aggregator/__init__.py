"""The aggregator: many agents' results in, one health state per relay out.

    store = ResultStore(inventory, now=time.time, health=config.health)
    ingested = store.ingest_result(payload, topic)      # from the MQTT callback; never raises
    view = fleet_view(store)                            # /api/v1/servers
    registry = make_registry(store)                     # probe.aggregator.metrics: /metrics

The store (`store.py`), the health rules (`health.py`) and the views (`views.py`) are sans-I/O: a clock is injected,
nothing here opens a socket or starts a task. `metrics.py` imports prometheus_client and is imported only by what
serves /metrics. `testing.py` builds messages for tests.
"""

from probe.aggregator.health import AgentState, Exclusion, HealthState, Vote
from probe.aggregator.intake import DROP_REASONS, MAX_PAYLOAD, Ingested, Outcome
from probe.aggregator.records import AgentChange, Change, HealthChange
from probe.aggregator.store import ResultStore
from probe.aggregator.views import FleetView, ServerDetail, agent_views, fleet_view, server_detail

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
