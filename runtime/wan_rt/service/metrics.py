"""Prometheus metrics of `wan-rt api`: queue depth, jobs by state and seconds per stage read from the queue at each
scrape (so they cover every worker on every machine), and the API's own request counts and handling time."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, SummaryMetricFamily

from wan_rt.service.jobs import STATES


class QueueCollector:
    def __init__(self, queue):
        self.queue = queue

    def collect(self):
        counts = self.queue.counts()
        depth = GaugeMetricFamily("wan_rt_queue_depth", "Jobs waiting for a worker.")
        depth.add_metric([], counts.get("queued", 0))
        yield depth
        jobs = GaugeMetricFamily("wan_rt_jobs", "Jobs in the queue by state.", labels=["state"])
        for state in STATES:
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs
        stages = SummaryMetricFamily("wan_rt_stage_seconds", "Seconds per pipeline stage over the completed jobs.",
                                     labels=["stage"])
        for stage, (total, count) in sorted(self.queue.stage_seconds().items()):
            stages.add_metric([stage], count_value=count, sum_value=total)
        yield stages


class ApiMetrics:
    def __init__(self, queue):
        self.registry = CollectorRegistry()
        self.registry.register(QueueCollector(queue))
        self.requests = Counter("wan_rt_api_requests", "API requests by route and status.", ["route", "status"],
                                registry=self.registry)
        self.seconds = Histogram("wan_rt_api_request_seconds", "Seconds the API takes to answer, by route.",
                                 ["route"], registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
