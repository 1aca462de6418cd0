"""The notifications' Prometheus series (a source of :class:`hivecore.metrics.Metrics`, read at
scrape time from :meth:`actors.webhooks.Webhooks.statistics`; ``docs/operations.md`` lists them).
The alarms' own series are the metrics collector's (``hivecore_alarms_active`` …)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

if TYPE_CHECKING:
    from actors.webhooks import Webhooks


def families(webhooks: Webhooks) -> Iterator[Metric]:
    """``hivecore_notifications_total{outcome}`` (delivered, failed, retried, dropped; summed over the
    endpoints: a label per URL would put a secret's host in every scrape) and
    ``hivecore_notifications_queued``."""
    sent = CounterMetricFamily(
        "hivecore_notifications", "Notifications by outcome, over every --notify-url", labels=["outcome"]
    )
    endpoints = webhooks.statistics()
    sent.add_metric(["delivered"], sum(s.delivered for s in endpoints))
    sent.add_metric(["failed"], sum(s.failed for s in endpoints))
    sent.add_metric(["retried"], sum(s.retries for s in endpoints))
    sent.add_metric(["dropped"], sum(s.dropped for s in endpoints))
    yield sent
    yield GaugeMetricFamily(
        "hivecore_notifications_queued", "Notices waiting to be sent", value=sum(s.queued for s in endpoints)
    )
