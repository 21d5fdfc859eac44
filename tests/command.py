"""One way for the test harnesses (Compose, Swarm) to run a command: with a time limit,
its output returned, and shown in the failure when it exits non-zero."""

import subprocess


def run(argv, *, timeout: float, env: dict | None = None, check: bool = True, input: str | None = None):
    """A command with a time limit; its output is returned, and shown when it fails.
    Without ``input`` it reads nothing (stdin is /dev/null), so it can never wait on ours."""
    result = subprocess.run(
        [str(arg) for arg in argv],
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    if check and result.returncode:
        raise AssertionError(
            f"{' '.join(map(str, argv))} exited {result.returncode}\n"
            f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
        )
    return result
