"""Reading per-partition lag from Prometheus (I/O), e.g. kafka_exporter or kafka-lag-exporter series.

Prometheus gives lag, not offsets: the sample built here carries each partition's lag as its end
offset with a committed offset of 0, and the reconcile loop does not derive produce/consume rates or
stuck-partition verdicts from such samples (they would be rates of lag, not of traffic). The
`drainTime` policy then works from lag alone, with its "no rate measured yet" rules.
"""

from __future__ import annotations

import math
import time

from prometheus_api_client import PrometheusConnect
from urllib3.util.retry import Retry

from lagpilot_operator.core.observations import LagSample, PartitionOffsets
from lagpilot_operator.kafka.kafka_lag import LagReadError


class PrometheusUnavailable(LagReadError):
    reason = "PrometheusUnavailable"


class MetricMissing(LagReadError):
    reason = "MetricMissing"


def render_query(template: str, *, group: str, topics: list[str], namespace: str) -> str:
    """Fill `{group}`, `{topic}` (regex alternation of the topics) and `{namespace}` placeholders."""
    topic_pattern = "|".join(topics)
    return (template.replace("{group}", group).replace("{topic}", topic_pattern)
            .replace("{topics}", topic_pattern).replace("{namespace}", namespace))


# Without a requests timeout a Prometheus that accepts the connection and never answers would hold
# the resource's reconcile (and a thread) forever. Connect fails fast; reading waits for the query's
# own server-side timeout plus a margin; one retry for a dropped connection, not the client's three.
CONNECT_TIMEOUT_SECONDS = 3.0
READ_MARGIN_SECONDS = 2.0
RETRIES = 1


def http_timeouts(query_timeout: float) -> tuple[float, float]:
    """(connect, read) seconds for one HTTP attempt of a query the server gives `query_timeout`."""
    return CONNECT_TIMEOUT_SECONDS, query_timeout + READ_MARGIN_SECONDS


def read_lag(url: str, query: str, timeout: float = 10.0) -> LagSample:
    sampled_at = time.time()
    try:
        prometheus = PrometheusConnect(url=url, disable_ssl=False, timeout=http_timeouts(timeout),
                                       retry=Retry(total=RETRIES, backoff_factor=0.2,
                                                   status_forcelist=(502, 503, 504)))
        result = prometheus.custom_query(query, params={"timeout": f"{max(1, int(timeout))}s"})
    except Exception as exc:  # the client raises requests' and its own exception types alike
        raise PrometheusUnavailable(f"Prometheus at {url} did not answer the lag query "
                                    f"({type(exc).__name__}: {exc}); check lag.prometheus.url") from exc
    partitions: list[PartitionOffsets] = []
    for series in result:
        labels = series.get("metric", {})
        value = float(series["value"][1])
        if "topic" not in labels or "partition" not in labels or math.isnan(value):
            continue
        lag = max(0, int(value))  # kafka_exporter reports -1 for a partition never committed
        partitions.append(PartitionOffsets(topic=labels["topic"], partition=int(labels["partition"]),
                                           end_offset=lag, committed=0))
    if not partitions:
        raise MetricMissing(f"the lag query returned no series with topic and partition labels: {query}")
    partitions.sort(key=lambda p: (p.topic, p.partition))
    return LagSample(time=sampled_at, partitions=tuple(partitions))
