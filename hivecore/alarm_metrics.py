"""The alarms' and notifications' Prometheus series (a source of :class:`hivecore.metrics.Metrics`,
read at scrape time from :meth:`actors.alarms.AlarmWatch.alarms` / ``statistics()`` and
:meth:`actors.webhooks.Webhooks.statistics`; ``docs/operations.md`` lists them)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

if TYPE_CHECKING:
    from actors.alarms import AlarmWatch
    from actors.webhooks import Webhooks

ALARM_KINDS = ("manager_unread", "unacked", "crash_loop", "stuck", "disk", "approval", "notify")
LEVELS = ("warn", "crit")


def families(alarms: AlarmWatch, webhooks: Webhooks | None) -> Iterator[Metric]:
    """``hivecore_alarms_active{kind,level}`` (every pair, from zero), ``hivecore_alarms_raised_total``,
    ``hivecore_agents_held`` and, with notifications configured, ``hivecore_notifications_total
    {outcome}`` (delivered, failed, retried, dropped; summed over the endpoints: a label per URL
    would put a secret's host in every scrape)."""
    counts = dict.fromkeys(((k, lv) for k in ALARM_KINDS for lv in LEVELS), 0)
    for alarm in alarms.alarms():
        key = (alarm.kind if alarm.kind in ALARM_KINDS else "other", alarm.level)
        counts[key] = counts.get(key, 0) + 1
    active = GaugeMetricFamily(
        "hivecore_alarms_active", "Alarms raised now, by kind and level", labels=["kind", "level"]
    )
    for (kind, level), n in sorted(counts.items()):
        active.add_metric([kind, level], n)
    yield active
    stats = alarms.statistics()
    yield CounterMetricFamily(
        "hivecore_alarms_raised",
        "Alarms raised (or worsened) since the daemon started",
        value=stats.raised_total,
    )
    yield GaugeMetricFamily(
        "hivecore_agents_held", "Agents held stopped after a crash loop", value=stats.holds
    )
    if webhooks is None:
        return
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
