"""What messaging exports for dashboards: deliveries by final outcome, and the depth of each
queue of the send pipeline, read from Redis when Prometheus scrapes.

Every replica reports the same queue depths (the queues are shared): aggregate them with max(),
not sum(). Dead letters are not a gauge: they live in one Cassandra partition that would have to
be counted on each scrape; `rapport_messaging_deliveries_total{status="DEAD"}` gives their rate.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Iterator

import structlog
from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from services.common.metrics import MetricGroup, bounded_label
from services.messaging.adapters.redis_queue import MessagingQueue
from services.messaging.domain.delivery import Delivery, DeliveryStatus

log = structlog.get_logger("rapport.messaging")

QUEUE_DEPTH = "rapport_messaging_queue_depth"
_QUEUE_DEPTH_DOC = (
    "Deliveries waiting in the send pipeline (shared by all replicas): scheduled (due set), "
    "send_queued (in the send stream, not yet read), send_in_flight (read, not acknowledged), "
    "audience_pending and audience_in_flight (retargeting members not yet synced)"
)


class DeliveryMetrics(MetricGroup):
    """Deliveries that reached a final status (SENT, SKIPPED, CANCELLED, DEAD)."""

    def __init__(self) -> None:
        self._outcomes = Counter(
            "rapport_messaging_deliveries_total",
            "Deliveries that reached a final status, by channel, trigger kind, status and reason (empty when SENT)",
            ["channel", "trigger", "status", "reason"],
            registry=None,
        )
        super().__init__(self._outcomes)

    def finished(self, delivery: Delivery) -> None:
        reason = "" if delivery.status is DeliveryStatus.SENT else bounded_label(delivery.reason)
        self._outcomes.labels(
            bounded_label(delivery.channel), bounded_label(delivery.kind), delivery.status.value, reason
        ).inc()


class QueueDepths:
    """A collector of the queue depths. Prometheus scrapes in the metrics server's thread; the
    Redis reads run on the service's event loop, in one round trip, within `timeout_s`."""

    def __init__(self, queue: MessagingQueue, loop: asyncio.AbstractEventLoop, timeout_s: float = 2.0) -> None:
        self._queue = queue
        self._loop = loop
        self._timeout_s = timeout_s

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(QUEUE_DEPTH, _QUEUE_DEPTH_DOC, labels=["queue"])

    def collect(self) -> Iterator[Metric]:
        try:
            asyncio.get_running_loop()
            return  # on an event loop (a test collecting in-process): waiting on it would deadlock
        except RuntimeError:
            pass
        reading = self._queue.depths()
        try:
            future = asyncio.run_coroutine_threadsafe(reading, self._loop)
        except RuntimeError:  # the loop is closed: the service is stopping
            reading.close()
            return
        try:
            depths = future.result(self._timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            log.warning("queue_depths_timeout", timeout_s=self._timeout_s)
            return
        except Exception as error:
            log.warning("queue_depths_failed", error=type(error).__name__)
            return
        family = GaugeMetricFamily(QUEUE_DEPTH, _QUEUE_DEPTH_DOC, labels=["queue"])
        for queue, depth in depths.items():
            family.add_metric([queue], depth)
        yield family
