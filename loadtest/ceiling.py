"""The database's ceiling for the chat's write: pgbench running the message INSERT through PgBouncer.

Same SQL as a WebSocket message (Django's INSERT ... RETURNING id for one row),
same role, same PgBouncer, persistent connections: what PostgreSQL and the
pooler could take if the app cost nothing. `make bench` prints it next to the
configurations' messages/s.
"""

import glob
import os
import re
import subprocess
import tempfile
from pathlib import Path

# The statement Django sends for Message.objects.create(...), with a fixed room.
SCRIPT = (
    "INSERT INTO chat_message (room_id, author, text, client_id, created_at)\n"
    "VALUES (:room, 'pgbench', 'a message from pgbench', '', now()) RETURNING id;\n"
)


def pgbench_binary() -> str:
    """Debian keeps pgbench out of PATH, under the server's version directory."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"), key=_version_key)
    if found:
        return found[-1]
    return "pgbench"


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"/(\d+)/bin/", path))


def run(
    *,
    host: str,
    port: int,
    user: str,
    password: str,
    room_id: int,
    clients: int,
    seconds: int,
    ca_file: Path | None = None,
) -> dict[str, float]:
    """One pgbench run; returns tps and average latency (ms). With ``ca_file``, over TLS,
    the server's certificate and name checked against it, as the app connects."""
    tls = {"PGSSLMODE": "verify-full", "PGSSLROOTCERT": str(ca_file)} if ca_file else {"PGSSLMODE": "disable"}
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write(SCRIPT)
    try:
        result = subprocess.run(
            [
                pgbench_binary(),
                "--no-vacuum",
                "--host",
                host,
                "--port",
                str(port),
                "--username",
                user,
                "--file",
                script.name,
                "--client",
                str(clients),
                "--jobs",
                str(min(clients, os.cpu_count() or 1)),
                "--time",
                str(seconds),
                "--define",
                f"room={room_id}",
                "chat",
            ],
            env={**os.environ, "PGPASSWORD": password, **tls},
            capture_output=True,
            text=True,
            timeout=seconds + 60,  # bounded even if pgbench hangs on a dead server
        )
    finally:
        Path(script.name).unlink(missing_ok=True)
    if result.returncode:
        raise RuntimeError(f"pgbench failed ({result.returncode}): {result.stderr.strip()[-500:]}")
    tps = re.search(r"tps = ([\d.]+)", result.stdout)
    latency = re.search(r"latency average = ([\d.]+) ms", result.stdout)
    if not tps:
        raise RuntimeError(f"no tps in pgbench's output:\n{result.stdout[-500:]}")
    return {"tps": float(tps.group(1)), "latency_avg_ms": float(latency.group(1)) if latency else None}
