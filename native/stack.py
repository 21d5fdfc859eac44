"""The stack as local processes: PostgreSQL, PgBouncer, Redis and Daphne on loopback.

Python prepares (state directory, secrets, staged service folders), starts each
service in the order native/services.py declares and waits until it is ready;
supervisord (native/supervisor.py) runs, stops and restarts the processes. On
request, Prometheus and its two exporters join them (make monitoring).
"""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from native.layout import (
    POOLED_POSTGRES,
    PROJECT,
    SYSTEM_PATH,
    SYSTEM_PYTHON,
    AppRun,
    Config,
    Layout,
    StackError,
)
from native.profiles import PROFILES, SHIPPED, Profile
from native.services import LONG_RUNNING, MONITORING, SERVICES, Service, service
from native.supervisor import Supervisor, tail
from probes.connections import APP_DATABASE, app_pool, pool_server_connections

# Folders copied into the state directory at every start, where the service user
# can read them even when the checkout is private to the invoking user.
STAGED = ("postgres", "pgbouncer", "redis", "lib", "app", "monitoring")
# Directories of run/ each service writes into (its socket, runtime config, pid).
SERVICE_RUN_DIRS = ("postgres", "pgbouncer", "redis", "app", *(each.name for each in MONITORING))
# Who gets a directory of secrets (secrets/generate.py): natively all are the service user.
SECRET_CONSUMERS = ("postgres", "pgbouncer", "redis", "app", "migrate", "monitor", "proxy")


class Stack(Layout):
    def __init__(self, config: Config | None = None):
        super().__init__(config)
        self.supervisor = Supervisor(self)

    # --- lifecycle ---------------------------------------------------------------------

    def up(
        self, profile: Profile = SHIPPED, extra_env: dict[str, str] | None = None, *, monitoring: bool = False
    ) -> None:
        """Start every service that is not running, in order, each once the one before is ready;
        with ``monitoring``, Prometheus and its exporters after them."""
        app = AppRun(profile, tuple(sorted((extra_env or {}).items())))
        self.prepare()
        self.supervisor.write_config(app)
        self.supervisor.start()
        self.supervisor.apply_config()  # e.g. the app in another profile: replaced
        for each in SERVICES:
            if each.one_shot:
                self._run_to_completion(each)
            else:
                self._ensure_running(each)
        self._record(app)
        if monitoring:
            self.start_monitoring()

    def start_monitoring(self) -> None:
        """Prometheus and its exporters, on the running stack, each once the one before is ready:
        Debian's binaries, fetched into a cache the first time (native/fetch-monitoring.sh)."""
        script = PROJECT / "native" / "fetch-monitoring.sh"
        fetched = subprocess.run([str(script), str(self.monitoring_root)], check=False)
        if fetched.returncode:
            raise StackError(f"{script.name} failed (exit code {fetched.returncode}); its messages are above")
        for each in MONITORING:
            self._ensure_running(each)

    def restart_app(self, profile: Profile, extra_env: dict[str, str] | None = None) -> None:
        """Restart the app in a profile, with PgBouncer's idle server connections closed in between.

        PgBouncer keeps idle server connections for server_idle_timeout: left from the
        previous configuration, they would count in the next one's peak.
        """
        app = AppRun(profile, tuple(sorted((extra_env or {}).items())))
        self.supervisor.stop("app")
        self._close_idle_server_connections()
        self._stage()
        self.supervisor.write_config(app)
        self.supervisor.apply_config()
        self._ensure_running(service("app"))
        self._record(app)

    def restart(self, name: str) -> None:
        """Stop a service and start it again, waiting until it is ready (fault injection)."""
        self.supervisor.stop(name)
        self._ensure_running(service(name))

    def stop(self, name: str) -> None:
        self.supervisor.stop(name)

    def down(self) -> None:
        self.supervisor.shutdown()
        self.path("run", "app.json").unlink(missing_ok=True)

    def destroy(self) -> None:
        """Stop everything and delete the state directory (data and secrets)."""
        self.down()
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- what runs ---------------------------------------------------------------------

    def pid(self, name: str) -> int | None:
        return self.supervisor.program_pid(name)

    def status(self) -> dict[str, int | None]:
        return {name: self.pid(name) for name in LONG_RUNNING}

    def running_app(self) -> tuple[Profile, dict[str, str]] | None:
        """The app's profile and extra settings, while it runs."""
        record = self.path("run", "app.json")
        if not self.pid("app") or not record.exists():
            return None
        run = json.loads(record.read_text())
        return PROFILES[run["profile"]], run["extra_env"]

    def running_profile(self) -> str | None:
        running = self.running_app()
        return running[0].name if running else None

    def daphne_pids(self) -> list[int]:
        """The Daphne processes the app's own supervisord runs."""
        app = self.pid("app")
        if app is None:
            return []
        children = Path(f"/proc/{app}/task/{app}/children").read_text().split()
        return [int(pid) for pid in children if "daphne" in _cmdline(int(pid))]

    def kill_worker(self, pid: int, sig: int = signal.SIGKILL) -> None:
        """Signal one of the app's Daphne processes, and only such a process."""
        if pid not in self.daphne_pids():
            raise StackError(f"{pid} is not one of this stack's Daphne processes")
        os.kill(pid, sig)

    # --- logs --------------------------------------------------------------------------

    def _logs(self) -> list[Path]:
        return sorted(self.path("logs").glob("*.log"))

    def log_tails(self, lines: int = 30) -> str:
        """The last lines of every service's log, each under its file name (for a failure report)."""
        return "\n".join(f"--- {log.name} (last {lines} lines)\n{tail(log, lines)}" for log in self._logs())

    def log_marks(self) -> dict[str, int]:
        """Where every log ends now: give it to ``logs_since`` for what was written after."""
        return {str(log): log.stat().st_size for log in self._logs()}

    def logs_since(self, marks: dict[str, int], lines: int = 80) -> str:
        """What each log got since ``marks`` (at most its last ``lines``), under the log's name."""
        sections = []
        for log in self._logs():
            start = marks.get(str(log), 0)
            with log.open("rb") as handle:
                if handle.seek(0, os.SEEK_END) < start:
                    start = 0  # rotated meanwhile: all of the new file is new
                handle.seek(start)
                text = handle.read().decode(errors="replace")
            if text.strip():
                new = text.splitlines()
                cut = f", last {lines} of {len(new)} lines" if len(new) > lines else ""
                sections.append(f"--- {log.name} (during the test{cut})\n" + "\n".join(new[-lines:]))
        return "\n".join(sections) or "(no service wrote to its log during the test)"

    # --- starting services ---------------------------------------------------------------

    def _ensure_running(self, each: Service) -> None:
        info = self.supervisor.info(each.name)
        if info["statename"] not in ("STARTING", "RUNNING"):
            self.supervisor.start_program(each.name)
        deadline = time.monotonic() + self.config.start_timeout
        log = self.path("logs", f"{each.name}.log")
        while not each.ready(self):
            state = self.supervisor.info(each.name)["statename"]
            if state in ("BACKOFF", "EXITED", "FATAL", "STOPPED"):
                self.supervisor.stop(each.name)  # no retries of a start that cannot work
                raise StackError(f"{each.name} exited during start-up:\n{tail(log)}")
            if time.monotonic() > deadline:
                raise StackError(f"{each.name} not ready after {self.config.start_timeout:g}s:\n{tail(log)}")
            time.sleep(0.2)

    def _run_to_completion(self, each: Service) -> None:
        self.supervisor.start_program(each.name)
        deadline = time.monotonic() + self.config.start_timeout
        log = self.path("logs", f"{each.name}.log")
        while (info := self.supervisor.info(each.name))["statename"] in ("STARTING", "RUNNING"):
            if time.monotonic() > deadline:
                self.supervisor.stop(each.name)
                raise StackError(
                    f"{each.name} did not finish within {self.config.start_timeout:g}s:\n{tail(log)}"
                )
            time.sleep(0.2)
        if info["statename"] != "EXITED" or info["exitstatus"] != 0:
            raise StackError(f"{each.name} failed ({info['description']}):\n{tail(log)}")

    def _close_idle_server_connections(self) -> None:
        if self.pid("pgbouncer") is None:
            return
        admin_dsn = self.dsn("pgbouncer_admin", through_pgbouncer=True, dbname="pgbouncer")
        with psycopg.connect(admin_dsn, autocommit=True, prepare_threshold=None) as admin:
            admin.execute(f"RECONNECT {APP_DATABASE}", prepare=False)
            deadline = time.monotonic() + 10
            while pool_server_connections(app_pool(admin)) and time.monotonic() < deadline:
                time.sleep(0.2)

    def _record(self, app: AppRun) -> None:
        record = self.path("run", "app.json")
        record.write_text(json.dumps({"profile": app.profile.name, "extra_env": dict(app.extra_env)}))

    # --- set-up ------------------------------------------------------------------------

    def prepare(self) -> None:
        """The state directory, its secrets and staged folders; as root, the service venv.

        Directories the invoking user writes into are its own; the service user owns
        only what its processes write (data/, run/<service>/) and its secrets' files.
        """
        user = self.service_user
        self.dir.mkdir(parents=True, exist_ok=True)
        if user is not None and not traversable_by(self.dir, user):
            raise StackError(
                f"{self.dir} is not traversable by the `{user.pw_name}` user that runs "
                f"PostgreSQL: set STACK_DIR outside it, e.g. STACK_DIR=/var/lib/chat-stack/demo"
            )
        mine = (os.geteuid(), os.getegid())
        theirs = (user.pw_uid, user.pw_gid) if user else mine
        _own_dir(self.dir, *mine, 0o755)
        _own_dir(self.path("secrets"), *mine, 0o711)  # as secrets/generate.py leaves it
        for sub in ("run", "opt"):
            _own_dir(self.path(sub), *mine, 0o755)
        _own_dir(self.path("logs"), *mine, 0o750)
        _own_dir(self.path("data"), *theirs, 0o700)
        for sub in SERVICE_RUN_DIRS:
            _own_dir(self.path("run", sub), *theirs, 0o700)
        self._make_secrets(theirs)
        self._stage()
        if user is not None:
            self._ensure_service_venv()

    def _make_secrets(self, owner: tuple[int, int]) -> None:
        """secrets/generate.py, as Compose's `secrets` job runs it: every service's directory
        is the service user's (natively they all run as that one user)."""
        store = self.path("secrets", "store")
        for old in self.path("secrets").glob("[A-Z]*"):  # a state directory from before the store
            if old.is_file() and not (store / old.name).exists():
                store.mkdir(mode=0o700, exist_ok=True)
                old.rename(store / old.name)
        owners = " ".join(f"{consumer}={owner[0]}:{owner[1]}" for consumer in SECRET_CONSUMERS)
        result = subprocess.run(
            [sys.executable, str(PROJECT / "secrets" / "generate.py")],
            env={
                "PATH": SYSTEM_PATH,
                "LANG": "C.UTF-8",
                "SECRETS_DIR": str(self.path("secrets")),
                "SECRETS_OWNERS": owners,
            },
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode:
            raise StackError(f"making the secrets failed: {result.stderr.strip()}")

    def _stage(self) -> None:
        for folder in STAGED:
            target = self.path("opt", folder)
            shutil.copytree(
                PROJECT / folder,
                target,
                dirs_exist_ok=True,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
            )
            for path in [target, *target.rglob("*")]:  # readable, never writable, by the service user
                executable = path.is_dir() or path.stat().st_mode & stat.S_IXUSR
                path.chmod(0o755 if executable else 0o644)

    def _ensure_service_venv(self) -> None:
        """As root: the app's dependencies in a virtualenv of the system's Python, which the
        service user can run (root's own Python and .venv may live where it cannot)."""
        venv = self.service_venv
        done = venv / ".complete"
        if done.exists():
            return
        print(f"building the service user's virtualenv in {venv} (once)", flush=True)
        shutil.rmtree(venv, ignore_errors=True)  # an interrupted build
        venv.parent.mkdir(parents=True, exist_ok=True)
        venv.parent.chmod(0o755)
        steps = [
            [SYSTEM_PYTHON, "-m", "venv", "--without-pip", str(venv)],
            [
                sys.executable,
                "-m",
                "pip",
                "--python",
                str(venv / "bin" / "python"),
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-warn-script-location",
                "-r",
                str(PROJECT / "app" / "requirements.txt"),
                str(POOLED_POSTGRES),
            ],
        ]
        for step in steps:
            result = subprocess.run(step, capture_output=True, text=True, check=False)
            if result.returncode:
                raise StackError(f"{' '.join(step[:4])} failed:\n{result.stderr[-2000:]}")
        for path in [venv, *venv.rglob("*")]:
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | 0o444 | (0o111 if path.is_dir() else 0))
        done.touch()


def _own_dir(path: Path, uid: int, gid: int, mode: int) -> None:
    """A real directory (never a link) with this owner and mode."""
    path.mkdir(exist_ok=True)
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        raise StackError(f"{path} is not a directory; remove it and start again")
    os.chown(path, uid, gid, follow_symlinks=False)
    path.chmod(mode)


def traversable_by(path: Path, user) -> bool:
    """Whether ``user`` can reach ``path``: every parent searchable by it (owner or others)."""
    for parent in [path, *path.parents]:
        info = parent.stat()
        bit = stat.S_IXUSR if info.st_uid == user.pw_uid else stat.S_IXOTH
        if not info.st_mode & bit:
            return False
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def profile_named(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise StackError(f"unknown profile {name!r}; choose one of: {', '.join(PROFILES)}") from None
