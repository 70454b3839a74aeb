"""Prometheus metrics. Counts and timings only: never a label that could carry personal data."""

from prometheus_client import Counter, Gauge, Histogram

EVENTS_ACCEPTED = Counter("accord_events_accepted", "Events acknowledged by the tracking API")
REQUESTS_REJECTED = Counter("accord_requests_rejected", "Tracking requests refused", ["code"])
EVENTS_PROCESSED = Counter("accord_events_processed", "Events applied to profiles")
EVENTS_DUPLICATE = Counter("accord_events_duplicate", "Events dropped as resends of a stored messageId")
EVENTS_QUARANTINED = Counter("accord_events_quarantined", "Events sent to quarantine")
EVENTS_SUPPRESSED = Counter(
    "accord_events_suppressed", "Events dropped because they carry an erased person's identifier"
)
MERGES = Counter("accord_profile_merges", "Profiles merged into another")
WORKER_RETRIES = Counter("accord_worker_retries", "Worker transactions retried after a conflict")
INGEST_SECONDS = Histogram("accord_ingest_seconds", "Time to acknowledge a tracking request")
LOG_PENDING = Gauge("accord_log_pending_events", "Events in the event log waiting for a worker (read at scrape)")
QUARANTINE_WAITING = Gauge("accord_quarantine_waiting", "Quarantined events not yet replayed (read at scrape)")
PATTERNS_SWITCHED_OFF = Counter(
    "accord_patterns_switched_off",
    "User-written regular expressions switched off in a process after a match ran out of time",
    ["use"],
)
