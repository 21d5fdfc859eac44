"""What bounds the capacity run: the cores each kind of process keeps busy at full load,
and Daphne's memory per open WebSocket, sampled while the run goes on.

CPU comes from the kernel's accounting as in loadtest/cpu.py, except Locust's: while it
runs it has not been reaped, so it is read as this process's live children. Memory is
the Daphne processes' resident size (/proc/PID/statm): its growth from before the run,
at its largest, divided by the most users connected at once.
"""

import os
import threading
import time

from loadtest import cpu

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
SAMPLE_EVERY_S = 5.0


def cpu_seconds(stack) -> dict[str, float]:
    """CPU seconds so far of each kind, Locust counted while it runs."""
    processes = cpu.process_table()
    seconds = {
        kind: cpu.tree_seconds(stack.pid(service), processes) for kind, service in cpu.SERVICES.items()
    }
    own = os.getpid()
    seconds[cpu.LOAD_GENERATOR] = cpu.tree_seconds(own, processes) - processes[own][1]
    return seconds


def daphne_bytes(stack) -> int:
    total = 0
    for pid in stack.daphne_pids():
        try:
            with open(f"/proc/{pid}/statm") as statm:
                total += int(statm.read().split()[1]) * PAGE_BYTES
        except OSError:  # ended meanwhile
            pass
    return total


class Headroom(threading.Thread):
    """Samples from start() until stop(); figures() then says what the run used."""

    def __init__(self, stack):
        super().__init__(name="headroom")
        self.stack = stack
        self.samples: list[tuple[float, dict[str, float], int]] = []
        self.error: BaseException | None = None
        self.stopped = threading.Event()
        self.before_bytes = daphne_bytes(stack)
        self.started = time.monotonic()

    def run(self) -> None:
        try:
            while not self.stopped.is_set():
                self.samples.append((time.monotonic(), cpu_seconds(self.stack), daphne_bytes(self.stack)))
                self.stopped.wait(SAMPLE_EVERY_S)
        except BaseException as error:  # raised again by figures(), in the caller's thread
            self.error = error

    def stop(self) -> None:
        self.stopped.set()
        self.join()

    def figures(self, full_load_after_s: float, users: int) -> dict:
        """Cores busy per kind from ``full_load_after_s`` after the start to the last sample
        (Locust starts within a sample's time, hence one more), and Daphne's memory."""
        if self.error is not None:
            raise self.error
        window = [s for s in self.samples if s[0] >= self.started + full_load_after_s + SAMPLE_EVERY_S]
        if len(window) < 2 or not users:
            return {}
        (first_at, first, _), (last_at, last, _) = window[0], window[-1]
        largest = max(size for _, _, size in self.samples)
        return {
            "cores_busy_at_full_load": {
                kind: round((last[kind] - first[kind]) / (last_at - first_at), 2) for kind in cpu.KINDS
            },
            "daphne_mib_peak": round(largest / 2**20),
            "daphne_kib_per_socket": round((largest - self.before_bytes) / 1024 / users, 1),
        }
