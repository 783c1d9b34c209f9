"""One relay's probe as Prometheus metrics, the answer of the agent's blackbox-style `/probe?target=NAME`.

Named as blackbox_exporter names its probe metrics, so dashboards and alerts written for it read these too:
`probe_success` and `probe_duration_seconds` for the relay as a whole, and `probe_wgprobe_*` per path
(port, family) and stage. Stages that were not judged (an earlier stage they depend on failed) have no series: their
outcome says nothing of their own. Every name and help text is here; `result_metrics` is a pure function of a result.

The `port` label is the port probed unless a `port_label` function maps it (the agent passes one that names the
inventory's port slot, "51820" or "4000-33433", as the aggregator's `wgprobe_probe_success` does, so a port rotated
through a range is one series rather than a new one every scrape).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from probe.results import ServerResult

_PATH = ("port", "family")
_STAGE = ("port", "family", "stage")

SUCCESS = ("probe_success", "1 when every path of the relay passed every stage it was judged on, else 0.")
DURATION = ("probe_duration_seconds", "How long the probe of the relay took, in seconds.")
PATHS = ("probe_wgprobe_paths", "Paths (entry port and address family) probed.")
PATH_SUCCESS = ("probe_wgprobe_path_success", "1 when the path passed every stage it was judged on, else 0.")
PATH_REASON = (
    "probe_wgprobe_path_failure_reason",
    "1 for a failed path's reason (its first failing stage's); absent for paths that passed.",
)
STAGE_SUCCESS = (
    "probe_wgprobe_stage_success",
    "1 when the stage passed on the path, 0 when it failed; absent unjudged.",
)
STAGE_DURATION = (
    "probe_wgprobe_stage_duration_seconds",
    "Median round-trip time of the stage's answered packets on the path; where none was answered, the time it waited.",
)
STAGE_LOSS = ("probe_wgprobe_stage_loss_ratio", "Share of the stage's packets on the path that got no answer (0 to 1).")
STAGE_SENT = ("probe_wgprobe_stage_packets_sent", "Packets the stage sent on the path.")
STAGE_RECEIVED = ("probe_wgprobe_stage_packets_received", "Good answers the stage received on the path.")
NAMES = tuple(
    spec[0]
    for spec in (
        SUCCESS,
        DURATION,
        PATHS,
        PATH_SUCCESS,
        PATH_REASON,
        STAGE_SUCCESS,
        STAGE_DURATION,
        STAGE_LOSS,
        STAGE_SENT,
        STAGE_RECEIVED,
    )
)


class _ResultCollector(Collector):
    def __init__(self, result: ServerResult, port_label: Callable[[int], str]) -> None:
        self.result, self.port_label = result, port_label

    def collect(self) -> Iterator[Metric]:
        result = self.result
        yield GaugeMetricFamily(*SUCCESS, value=1.0 if result.ok else 0.0)
        yield GaugeMetricFamily(*DURATION, value=result.duration_seconds)
        families = {
            spec[0]: GaugeMetricFamily(*spec, labels=labels)
            for spec, labels in (
                (PATH_SUCCESS, _PATH),
                (PATH_REASON, (*_PATH, "reason")),
                (STAGE_SUCCESS, _STAGE),
                (STAGE_DURATION, _STAGE),
                (STAGE_LOSS, _STAGE),
                (STAGE_SENT, _STAGE),
                (STAGE_RECEIVED, _STAGE),
            )
        }
        seen: set[tuple[str, str]] = set()
        for path in result.paths:
            where = (self.port_label(path.port), path.family)
            if where in seen:  # two paths on one port slot and family: the first speaks, a series appears once
                continue
            seen.add(where)
            families[PATH_SUCCESS[0]].add_metric(list(where), 1.0 if path.ok else 0.0)
            if not path.ok and path.reason is not None:
                families[PATH_REASON[0]].add_metric([*where, path.reason.value], 1.0)
            stages_seen: set[str] = set()
            for stage in path.stages:
                if not stage.judged or stage.name in stages_seen:
                    continue
                stages_seen.add(stage.name)
                labels = [*where, stage.name.value]
                families[STAGE_SUCCESS[0]].add_metric(labels, 1.0 if stage.ok else 0.0)
                families[STAGE_DURATION[0]].add_metric(labels, stage.seconds)
                families[STAGE_LOSS[0]].add_metric(labels, stage.loss)
                families[STAGE_SENT[0]].add_metric(labels, float(stage.sent))
                families[STAGE_RECEIVED[0]].add_metric(labels, float(stage.received))
        yield GaugeMetricFamily(*PATHS, value=float(len(seen)))
        yield from families.values()


def result_metrics(result: ServerResult, *, port_label: Callable[[int], str] = str) -> bytes:
    """The text exposition (0.0.4) of one relay's result."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ResultCollector(result, port_label))
    return generate_latest(registry)
