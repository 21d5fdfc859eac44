"""The gate's rules: a run fails when PostgreSQL saw more app connections than the
configs promise, or when too many requests failed.

Applied at the end of every Locust run (summary.py), by `make bench`'s table, and
by `python -m loadtest.gate` on a finished run.
"""

BOUNDED, UNBOUNDED, UNKNOWN = "bounded", "unbounded", "unknown"


def verdict(peak: int | None, bound: int | None) -> str:
    if peak is None or bound is None:
        return UNKNOWN  # no monitor, or it never got a reading: nothing is proven
    return BOUNDED if peak <= bound else UNBOUNDED


def peak_from_samples(samples: list[dict]) -> int | None:
    readings = [s["app_server_connections"] for s in samples if s.get("app_server_connections") is not None]
    return max(readings) if readings else None


def reasons_to_fail(summary: dict, max_fail_ratio: float) -> list[str]:
    """Why this run fails the gate; empty when it passes."""
    reasons = []
    peak, bound = summary.get("server_connections_peak"), summary["server_connection_bound"]
    if bound is None:
        pass  # run without the monitor (e.g. Locust's web UI by hand): only failures are gated
    elif peak is None:
        reasons.append("no server-connection reading: set MONITOR_POSTGRES_DSN (a pg_monitor role)")
    elif peak > bound:
        reasons.append(f"peak app-role server connections {peak} exceed the bound {bound}")
    requests, failures = summary.get("requests", 0), summary.get("failures", 0)
    if not requests:
        reasons.append("no requests were made")
    elif failures / requests > max_fail_ratio:
        reasons.append(
            f"{failures} of {requests} requests failed ({failures / requests:.2%}), "
            f"more than the allowed {max_fail_ratio:.2%}"
        )
    return reasons
