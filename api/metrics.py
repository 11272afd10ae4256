"""What the API counts: requests by route template (never the raw path), open streams and
waiting claims."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUESTS = Counter(
    "pao_http_requests",
    "HTTP requests answered, by method, route template and status",
    ["method", "route", "status"],
)
HTTP_SECONDS = Histogram(
    "pao_http_request_duration_seconds",
    "Time to answer, by method and route template (a stream counts until it closes)",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
STREAMS_OPEN = Gauge("pao_api_streams_open", "Live run streams this API process serves")
CLAIMS_WAITING = Gauge(
    "pao_api_claims_waiting", "Long-polling claims waiting for work in this API process"
)
UNMATCHED = "unmatched"
"""The route label of a request no route matched: one value, whatever the path."""
