"""summary.json: one run's numbers, computed from Locust's statistics and the monitor's samples.

Latency and messages/s cover the full-load window (all users connected, until the
stop), so a ramp-up does not flatter or hide anything; requests and failures
cover the whole run, ramp-up included.
"""

from dataclasses import dataclass, field

from locust.stats import (
    RequestStats,
    StatsEntry,
    calculate_response_time_percentile,
    diff_response_time_dicts,
)

from loadtest.verdicts import peak_from_samples, reasons_to_fail, verdict

MESSAGE = ("message", "WS")  # (name, request_type) of a message round trip in Locust's stats


@dataclass
class Snapshot:
    """A message-latency histogram at one moment, to subtract from a later one."""

    response_times: dict[int, int] = field(default_factory=dict)
    successes: int = 0

    @classmethod
    def of(cls, stats: RequestStats) -> "Snapshot":
        entry = stats.entries.get(MESSAGE)
        if entry is None:
            return cls()
        return cls(dict(entry.response_times), entry.num_requests - entry.num_failures)


def percentiles(response_times: dict[int, int]) -> dict[str, float] | None:
    count = sum(response_times.values())
    if not count:
        return None
    return {
        f"p{round(p * 100)}": calculate_response_time_percentile(response_times, count, p)
        for p in (0.5, 0.95, 0.99)
    }


def entry_figures(entry: StatsEntry) -> dict:
    figures = {"requests": entry.num_requests, "failures": entry.num_failures}
    if entry.num_requests:
        figures.update(mean_ms=round(entry.avg_response_time, 1), **(percentiles(entry.response_times) or {}))
    return figures


def connection_figures(samples: list[dict]) -> dict:
    pools = [s["pgbouncer_pool"] for s in samples if s.get("pgbouncer_pool")]
    return {
        "server_connections_peak": peak_from_samples(samples),
        # Of those, the app's own (not PgBouncer's): the leak, when there is one.
        "server_connections_direct_peak": max(
            (s["app_direct"] for s in samples if s.get("app_direct") is not None), default=None
        ),
        "pgbouncer_clients_peak": max((p["cl_active"] + p["cl_waiting"] for p in pools), default=None),
        "pgbouncer_waiting_peak": max((p["cl_waiting"] for p in pools), default=None),
        "pgbouncer_maxwait_peak_s": max((p["maxwait"] for p in pools), default=None),
        "users_peak": max((s.get("users") or 0 for s in samples), default=0),
        "monitor_samples": len(samples),
        "monitor_gaps": sum(1 for s in samples if s.get("app_server_connections") is None),
    }


def build(
    *,
    stats: RequestStats,
    samples: list[dict],
    after: dict | None,
    full_load: Snapshot | None,
    stopped: Snapshot,
    started_s: float,
    full_load_s: float | None,
    stopped_s: float,
    bound: int | None,
    max_fail_ratio: float,
    **facts,
) -> dict:
    """The summary; ``facts`` (config, description, users, scenario...) are copied in as given.

    Times are seconds on one monotonic clock: start, all users connected, stop.
    """
    window_start = full_load or Snapshot()
    window_s = stopped_s - (full_load_s if full_load is not None else started_s)
    window_times = diff_response_time_dicts(stopped.response_times, window_start.response_times)
    total = stats.total
    first = {key: facts.pop(key) for key in ("config", "description", "target", "users") if key in facts}
    summary = {
        **first,
        "duration_s": round(stopped_s - started_s, 1),
        "full_load_s": round(window_s, 1) if full_load is not None else 0.0,
        "requests": total.num_requests,
        "failures": total.num_failures,
        "failure_ratio": round(total.num_failures / total.num_requests, 6) if total.num_requests else None,
        **connection_figures(samples),
        "server_connection_bound": bound,
        "server_connections_after": after.get("app_server_connections") if after else None,
        "latency_ms": percentiles(window_times),
        "latency_ms_whole_run": percentiles(stopped.response_times),
        "messages_per_s": round((stopped.successes - window_start.successes) / window_s, 1)
        if window_s > 0
        else None,
        "requests_by_name": {
            f"{entry.method} {entry.name}": entry_figures(entry)
            for entry in sorted(stats.entries.values(), key=lambda e: (e.method, e.name))
        },
        "errors": [
            {"request": f"{error.method} {error.name}", "error": str(error.error), "count": error.occurrences}
            for error in sorted(stats.errors.values(), key=lambda e: -e.occurrences)[:10]
        ],
    }
    summary["verdict"] = verdict(summary["server_connections_peak"], bound)
    reasons = reasons_to_fail(summary, max_fail_ratio)
    summary["gate"] = {"passed": not reasons, "reasons": reasons, "max_fail_ratio": max_fail_ratio}
    return {**summary, **facts}
