"""The README's "Adopt it in your project", followed step by step on a project this one did not shape.

tests/tutorial_project/ is a Channels project written the way the Channels tutorial
teaches: PostgreSQL straight, CONN_MAX_AGE = 60, sync views that query the ORM, a
consumer that saves each message. A copy of it gets the README's diffs, as they are in
the README, one step at a time: the checks flag it, then pass; the doctor passes
against the native stack's PgBouncer; and under the same short HTTP load the
unchanged project leaks server connections where the adopted one stays in the bound.
"""

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import websocket
from psycopg.conninfo import conninfo_to_dict

PROJECT = Path(__file__).resolve().parent.parent
TUTORIAL = Path(__file__).resolve().parent / "tutorial_project"
BOUND = 12
LOAD_CLIENTS, LOAD_SECONDS = 24, 6.0


def readme_diffs() -> list[str]:
    """The ```diff blocks of the README's "Adopt it in your project" section, in order."""
    readme = (PROJECT / "README.md").read_text()
    section = readme.split("## Adopt it in your project", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```diff\n(.*?)```", section, flags=re.S)


@pytest.fixture
def tutorial(tmp_path, stack, passfile_dsns):
    """A copy of the tutorial project and how to run manage.py and Daphne in it."""
    project = tmp_path / "mysite"
    shutil.copytree(TUTORIAL, project, ignore=shutil.ignore_patterns("__pycache__"))
    tls = conninfo_to_dict(stack.dsn("chat_app", through_pgbouncer=True))
    base_env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "PYTHONDONTWRITEBYTECODE": "1",
        "DJANGO_SETTINGS_MODULE": "mysite.settings",
        "DATABASE_NAME": "chat",
        "DATABASE_HOST": "127.0.0.1",
        # libpq's own variables: the tutorial's settings name no password and no TLS option.
        "PGPASSFILE": str(tmp_path / "pgpass"),
        **({"PGSSLMODE": tls["sslmode"], "PGSSLROOTCERT": tls["sslrootcert"]} if "sslmode" in tls else {}),
    }
    ports = {"postgres": str(stack.config.postgres_port), "pgbouncer": str(stack.config.pgbouncer_port)}

    class Tutorial:
        path = project
        port = stack.config.app_port + 100  # beside the stack's own ports, shifted with them

        @staticmethod
        def env(user: str, to: str) -> dict:
            return {**base_env, "DATABASE_USER": user, "DATABASE_PORT": ports[to]}

        @staticmethod
        def manage(*args: str, user: str = "chat_app", to: str = "postgres") -> subprocess.CompletedProcess:
            return subprocess.run(
                [sys.executable, "manage.py", *args],
                cwd=project,
                env=Tutorial.env(user, to),
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )

        @staticmethod
        def apply(diff: str) -> None:
            subprocess.run(["git", "apply", "--verbose", "-"], input=diff, cwd=project, text=True, check=True)

    migrated = Tutorial.manage("migrate", "--no-input", user="chat_owner")  # DDL straight, as the owner
    assert migrated.returncode == 0, migrated.stderr
    return Tutorial


class Daphne:
    """The tutorial project under Daphne, one process, stopped by PID."""

    def __init__(self, tutorial, *, to: str):
        self.url = f"http://127.0.0.1:{tutorial.port}"
        self.log = tutorial.path / f"daphne-{to}.log"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(tutorial.port),
                "mysite.asgi:application",
            ],
            cwd=tutorial.path,
            env=tutorial.env("chat_app", to),
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"Daphne exited during start-up:\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/chat/", timeout=2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(
                        f"Daphne did not answer within 30 s:\n{self.log.read_text()}"
                    ) from None
                time.sleep(0.2)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def room_page_load(daphne: Daphne) -> tuple[int, int]:
    """LOAD_CLIENTS clients loading a room's page (a sync view that queries the ORM) for
    LOAD_SECONDS. Returns how many answered 200 and how many 500 (the database refused)."""
    url = f"{daphne.url}/chat/lobby/"
    deadline = time.monotonic() + LOAD_SECONDS

    def client() -> tuple[int, int]:
        ok = failed = 0
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=10) as response:
                    ok += response.status == 200
            except urllib.error.HTTPError as error:
                if error.code != 500:
                    raise
                failed += 1
        return ok, failed

    with ThreadPoolExecutor(LOAD_CLIENTS) as pool:
        counts = [future.result() for future in [pool.submit(client) for _ in range(LOAD_CLIENTS)]]
    return sum(ok for ok, _ in counts), sum(failed for _, failed in counts)


def watched(passfile_dsns, out: Path, load) -> tuple[int, tuple[int, int], list[str]]:
    """The connection watch running around `load`, as the README shows it: its peak, what the
    load returned (answered, failed) and the watch's lines."""
    watch = subprocess.Popen(
        [sys.executable, "-m", "pooled_postgres.watch", "--role", "chat_app", "--database", "chat",
         "--postgres-dsn", passfile_dsns["monitor"], "--pgbouncer-dsn", passfile_dsns["console"],
         "--every", "0.5", "--duration", str(LOAD_SECONDS + 4), "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        time.sleep(1)  # a sample before the load
        answers = load()
        output, _ = watch.communicate(timeout=60)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    peak = int(re.search(r"^peak (\d+) server connections", output, flags=re.M).group(1))
    assert sum(answers) > 100, (answers, output)
    return peak, answers, output.splitlines()


def test_the_readme_steps_take_the_tutorial_project_from_leaking_to_bounded(
    tutorial, passfile_dsns, tmp_path
):
    step_1, step_2 = readme_diffs()

    # Before: the project as the tutorial leaves it, served straight from PostgreSQL.
    daphne = Daphne(tutorial, to="postgres")
    try:
        peak_before, (_, failed_before), lines_before = watched(
            passfile_dsns, tmp_path / "before", lambda: room_page_load(daphne)
        )
    finally:
        daphne.stop()
    # A connection per request thread, kept (CONN_MAX_AGE = 60) after its thread is gone
    # until the garbage collector finds it: over the bound, and here on until PostgreSQL
    # refuses clients (`failed_before` pages answered 500).
    assert peak_before > BOUND, lines_before

    # Step 1: install the app; the checks name the leak.
    tutorial.apply(step_1)
    checked = tutorial.manage("check")
    assert checked.returncode == 1
    assert (
        "(pooled_postgres.E001) DATABASES['default'] keeps connections open (CONN_MAX_AGE=60)"
        in checked.stderr
    )

    # Step 2: the settings diff, pointed at PgBouncer; the checks pass and so does the doctor.
    tutorial.apply(step_2)
    checked = tutorial.manage("check", to="pgbouncer")
    assert checked.returncode == 0, checked.stderr
    assert "System check identified no issues" in checked.stdout
    doctor = tutorial.manage(
        "pooler_doctor",
        "--monitor-dsn",
        passfile_dsns["monitor"],
        "--pgbouncer-dsn",
        passfile_dsns["console"],
        to="pgbouncer",
    )
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert doctor.stdout.count("\nok   ") + doctor.stdout.startswith("ok   ") == 5, doctor.stdout

    # After: the same load, through PgBouncer, within the bound; chat still works end to end.
    daphne = Daphne(tutorial, to="pgbouncer")
    try:
        peak_after, (_, failed_after), lines_after = watched(
            passfile_dsns, tmp_path / "after", lambda: room_page_load(daphne)
        )
        alice = websocket.create_connection(
            daphne.url.replace("http", "ws") + "/ws/chat/lobby/", timeout=10, origin="http://127.0.0.1"
        )
        alice.send(json.dumps({"message": "hello through PgBouncer"}))
        assert json.loads(alice.recv()) == {"message": "hello through PgBouncer"}
        alice.close()
    finally:
        daphne.stop()
    assert peak_after <= BOUND, lines_after
    assert failed_after == 0, (failed_before, lines_after)
    assert "within the bound 12" in lines_after[-2]
    count = "from chat.models import Message; print(Message.objects.filter(message='{}').count())"
    saved = tutorial.manage("shell", "-v", "0", "-c", count.format("hello through PgBouncer"), to="pgbouncer")
    assert saved.stdout.strip() == "1", saved.stderr
