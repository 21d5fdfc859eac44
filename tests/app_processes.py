"""The app's Daphne processes as a test sees them: which one a new socket lands on, and
what each reports on the metrics port (app/chat_site/metrics_server.py)."""

import contextlib
import signal
import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

# Longer than anything here takes to show (the pool is sampled every second).
SHOWS_WITHIN_S = 10.0


def scrape(stack) -> list[Sample]:
    with urllib.request.urlopen(stack.metrics_url, timeout=5) as response:
        text = response.read().decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def scrape_until(stack, done, timeout: float = SHOWS_WITHIN_S) -> list[Sample]:
    """The first scrape for which done(samples) holds, or the last one at the deadline
    (the caller's assertions then say what is wrong)."""
    deadline = time.monotonic() + timeout
    while not done(samples := scrape(stack)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return samples


def total(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of the samples of this name that carry these labels."""
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def per_process(samples: list[Sample], name: str) -> dict[int, float]:
    return {int(s.labels["pid"]): s.value for s in samples if s.name == name}


def wait_for_metrics(stack) -> None:
    """The metrics program starts beside Daphne; the stack waits for Daphne only."""
    deadline = time.monotonic() + SHOWS_WITHIN_S
    while True:
        try:
            scrape(stack)
            return
        except urllib.error.URLError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@contextlib.contextmanager
def served_by(stack, pid: int):
    """New connections go to this Daphne process: the others are stopped meanwhile."""
    others = [other for other in stack.daphne_pids() if other != pid]
    for other in others:
        stack.kill_worker(other, signal.SIGSTOP)
    try:
        yield
    finally:
        for other in others:
            stack.kill_worker(other, signal.SIGCONT)
