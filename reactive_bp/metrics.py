"""Observability for strategy operators: ``BackpressureMeter`` and a Prometheus exporter.

Every lossy or buffering operator (``on_backpressure_*``, ``sample*``,
``throttle*``, ``debounce``, ``buffer_timeout``) and every push source
(``SourceQueue(meter=...)``; a ``Flow.create`` producer can ``meter.attach(
emitter.stats)``) keeps a ``BufferStats`` per subscription: produced,
delivered, dropped (in total and by reason), refused (offers answered
``FULL``), current and peak depth, and the time spent backpressured. The counters are plain
attributes written by the operator and read by anyone, so reading them costs
the hot path nothing (no lock is taken; a reader may see one counter a step
ahead of another while items are moving).

A flow is cold: each subscription gets its own operator and its own stats. To
read them, hand the operator a meter::

    meter = BackpressureMeter("ingest")
    flow = source.on_backpressure_buffer(1024, OverflowStrategy.DROP_OLDEST, meter=meter)
    ...
    meter.stats.dropped              # the current subscription's counters
    meter.totals()["dropped"]        # summed over every subscription seen

and, with the ``metrics`` extra installed, export it::

    from reactive_bp.metrics import register_prometheus
    register_prometheus(meter)       # on prometheus_client's default registry

``prometheus_client`` is imported only when ``register_prometheus`` or
``PrometheusCollector`` is used, so the core package does not need it.
"""

from __future__ import annotations

import operator
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from ._core._push import BufferStats

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

__all__ = ["BackpressureMeter", "PrometheusCollector", "register_prometheus"]

_COUNTERS = ("produced", "delivered", "dropped", "refused", "backpressured_seconds")


class BackpressureMeter:
    """Collects the ``BufferStats`` of every subscription of the operators it is given to.

    Args:
        name: The label the exporter uses (``stream="name"``); one meter per
            place in the pipeline reads best.
        keep: How many subscriptions' stats are kept individually; older ones
            are folded into the totals, so a flow resubscribed forever (a
            retry loop) does not grow the meter.

    Example:
        >>> meter = BackpressureMeter("clicks")
        >>> Flow.range(10).on_backpressure_drop(meter=meter).take(3).to_list()
        [0, 1, 2]
        >>> meter.stats.delivered
        3
    """

    __slots__ = ("_lock", "_retired", "_stats", "keep", "name")

    def __init__(self, name: str, *, keep: int = 16) -> None:
        if type(keep) is not int or keep < 1:
            raise ValueError(f"keep must be an int >= 1, got {keep!r}")
        self.name = name
        self.keep = keep
        self._lock = threading.Lock()
        # Guarded by _lock: the newest `keep` stats, oldest first ...
        self._stats: list[BufferStats] = []
        # ... and the sum of the counters of those that were folded away.
        self._retired: dict[str, object] = _zero()

    def attach(self, stats: BufferStats) -> None:
        """Start following ``stats`` (operators call this once per subscription)."""
        with self._lock:
            self._stats.append(stats)
            while len(self._stats) > self.keep:
                _add(self._retired, self._stats.pop(0).snapshot())

    @property
    def stats(self) -> BufferStats | None:
        """The newest subscription's stats (``None`` before the first subscription)."""
        with self._lock:
            return self._stats[-1] if self._stats else None

    def all(self) -> list[BufferStats]:
        """The stats of the subscriptions still kept individually, oldest first."""
        with self._lock:
            return list(self._stats)

    def totals(self) -> dict[str, object]:
        """The counters summed over every subscription (depths: current ones; peak: max)."""
        with self._lock:
            total = dict(self._retired)
            total["dropped_by_reason"] = dict(self._retired["dropped_by_reason"])  # type: ignore[call-overload]
            for key in _EXTRA_SERIES:
                if key in total:
                    total[key] = dict(total[key])  # type: ignore[call-overload]
            kept = [stats.snapshot() for stats in self._stats]
        for snapshot in kept:
            _add(total, snapshot)
        total["subscriptions"] = self._count_seen(kept)
        return total

    def _count_seen(self, kept: Sequence[dict[str, object]]) -> int:
        retired = self._retired["subscriptions"]
        assert isinstance(retired, int)
        return retired + len(kept)

    def __repr__(self) -> str:
        return f"BackpressureMeter({self.name!r}, subscriptions={len(self._stats)})"


def _zero() -> dict[str, object]:
    return {
        "produced": 0,
        "delivered": 0,
        "dropped": 0,
        "dropped_by_reason": {},
        "refused": 0,
        "depth": 0,
        "peak_depth": 0,
        "backpressured_seconds": 0.0,
        "subscriptions": 0,
    }


def _add(total: dict[str, object], snapshot: dict[str, object]) -> None:
    """Add one ``BufferStats.snapshot()`` into ``total`` (in place)."""
    for key in (*_COUNTERS, "depth"):
        total[key] = _num(total[key]) + _num(snapshot[key])
    total["peak_depth"] = max(_num(total["peak_depth"]), _num(snapshot["peak_depth"]))
    by_reason = total["dropped_by_reason"]
    assert isinstance(by_reason, dict)
    more = snapshot["dropped_by_reason"]
    assert isinstance(more, dict)
    for reason, count in more.items():
        by_reason[reason] = by_reason.get(reason, 0) + count
    for key, combine in _EXTRA_SERIES.items():
        extra = snapshot.get(key)
        if not extra:
            continue
        assert isinstance(extra, dict)
        into = total.setdefault(key, {})
        assert isinstance(into, dict)
        for name, value in extra.items():
            into[name] = combine(into[name], value) if name in into else value
    if "subscriptions" in total and "subscriptions" not in snapshot:
        total["subscriptions"] = _num(total["subscriptions"]) + 1


# Optional extra series a stats owner may add to its snapshot (``{name: value}``),
# and how the values of several subscriptions combine: "gauges" add up (like
# depth: requests in flight), "maxima" take the largest (a latency percentile:
# the largest of several groups' p99 bounds the p99 of their union).
_EXTRA_SERIES: dict[str, Callable[[float, float], float]] = {"gauges": operator.add, "maxima": max}


def _num(value: object) -> float:
    assert isinstance(value, int | float)
    return value


class PrometheusCollector:
    """A ``prometheus_client`` collector that reads meters at scrape time.

    Nothing is counted twice and nothing runs per item: each scrape reads
    ``meter.totals()``. Exposed families (``stream`` is the meter's name):

    * ``<namespace>_produced_total``, ``_delivered_total`` (counters)
    * ``<namespace>_dropped_total{reason=...}`` (counter, one series per reason)
    * ``<namespace>_refused_total`` (counter: offers answered ``FULL``, the
      producer kept the item)
    * ``<namespace>_backpressured_seconds_total`` (counter)
    * ``<namespace>_queue_depth`` and ``_queue_peak_depth`` (gauges)
    * ``<namespace>_<name>`` (gauges) for each extra series a stats owner adds to
      its snapshot under ``"gauges"`` (summed over subscriptions) or ``"maxima"``
      (the largest): ``LoadShedding`` adds ``in_flight`` and ``wait_seconds_p50``,
      ``_p90``, ``_p99``, ``_max``
    """

    def __init__(self, meters: Sequence[BackpressureMeter], namespace: str = "reactive_bp") -> None:
        _require_prometheus()
        self._meters = list(meters)
        self._namespace = namespace

    def add(self, meter: BackpressureMeter) -> None:
        """Export one more meter."""
        self._meters.append(meter)

    def collect(self) -> Iterator[Metric]:
        """Yield the metric families (called by ``prometheus_client`` on each scrape)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        ns = self._namespace
        produced = CounterMetricFamily(f"{ns}_produced", "Items received", labels=["stream"])
        delivered = CounterMetricFamily(
            f"{ns}_delivered", "Items delivered downstream", labels=["stream"]
        )
        dropped = CounterMetricFamily(
            f"{ns}_dropped", "Items dropped, by reason", labels=["stream", "reason"]
        )
        refused = CounterMetricFamily(
            f"{ns}_refused",
            "Offers refused because the buffer was full (the producer kept the item)",
            labels=["stream"],
        )
        pressured = CounterMetricFamily(
            f"{ns}_backpressured_seconds",
            "Time spent backpressured (buffer full or an item waiting for demand)",
            labels=["stream"],
        )
        depth = GaugeMetricFamily(f"{ns}_queue_depth", "Items held now", labels=["stream"])
        peak = GaugeMetricFamily(f"{ns}_queue_peak_depth", "Most items held", labels=["stream"])
        read: list[tuple[str, dict[str, object]]] = []
        for meter in self._meters:
            total = meter.totals()
            read.append((meter.name, total))
            label = [meter.name]
            produced.add_metric(label, _num(total["produced"]))
            delivered.add_metric(label, _num(total["delivered"]))
            refused.add_metric(label, _num(total["refused"]))
            pressured.add_metric(label, _num(total["backpressured_seconds"]))
            depth.add_metric(label, _num(total["depth"]))
            peak.add_metric(label, _num(total["peak_depth"]))
            by_reason = total["dropped_by_reason"]
            assert isinstance(by_reason, dict)
            for reason, count in sorted(by_reason.items()):
                dropped.add_metric([meter.name, reason], count)
        yield from (produced, delivered, dropped, refused, pressured, depth, peak)
        yield from self._extra_families(read)

    def _extra_families(self, read: list[tuple[str, dict[str, object]]]) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        families: dict[str, GaugeMetricFamily] = {}
        for stream, total in read:
            for key in _EXTRA_SERIES:
                extra = total.get(key)
                if not isinstance(extra, dict):
                    continue
                for name, value in sorted(extra.items()):
                    family = families.get(name)
                    if family is None:
                        how = "sum" if key == "gauges" else "largest"
                        family = families[name] = GaugeMetricFamily(
                            f"{self._namespace}_{name}",
                            f"{name} ({how} over subscriptions)",
                            labels=["stream"],
                        )
                    family.add_metric([stream], _num(value))
        yield from families.values()

    def describe(self) -> list[Metric]:
        """No up-front description: families are built at scrape time."""
        return []


def register_prometheus(
    *meters: BackpressureMeter,
    registry: CollectorRegistry | None = None,
    namespace: str = "reactive_bp",
) -> PrometheusCollector:
    """Export ``meters`` through ``prometheus_client`` (the ``metrics`` extra).

    Returns the collector (``collector.add(meter)`` exports more later). Uses
    the default registry unless ``registry`` is given.

    Example::

        meter = BackpressureMeter("ingest")
        register_prometheus(meter)
        prometheus_client.start_http_server(8000)
    """
    _require_prometheus()
    from prometheus_client import REGISTRY

    collector = PrometheusCollector(meters, namespace)
    (REGISTRY if registry is None else registry).register(collector)
    return collector


def _require_prometheus() -> None:
    try:
        import prometheus_client  # noqa: F401
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the Prometheus exporter needs prometheus-client: pip install 'reactive-bp[metrics]'"
        ) from error
