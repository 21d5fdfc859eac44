"""Every secret and TLS certificate the stack needs, made at first start and kept.

    SECRETS_DIR=/secrets python3 secrets/generate.py

Compose runs it as the one-shot `secrets` service (into the `secrets` volume, or a
directory of your own: CHAT_SECRETS); the native stack runs it into .stack/secrets.
Python's standard library and the openssl command only.

SECRETS_DIR/store/ holds the originals (mode 0700, the generator's): random
passwords, a private CA, and a key and certificate per TLS server. What is already
there is kept, so later starts reuse it and you may put your own there first (one
file per name below; a real certificate for the proxy as proxy.crt and proxy.key).
Each consumer then gets a directory of its own, SECRETS_DIR/<consumer>/ (0500,
files 0400, owned by that consumer's user: SECRETS_OWNERS), holding only what it
needs, and, where it can, not the password itself: PostgreSQL gets SCRAM
verifiers, PgBouncer verifiers for its console users, Redis a SHA-256 of its.

Passwords must be printable ASCII (space to ~), at least 16 characters, and not a
placeholder; anything else is refused with one line naming the file. A server
certificate is issued again when its names change (TLS_HOSTS_<SERVICE>, extra names,
comma-separated) or it expires within 30 days; deleting a file makes it anew.
"""

import base64
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PASSWORDS = (
    "DJANGO_SECRET_KEY",
    "POSTGRES_OWNER_PASSWORD",
    "POSTGRES_APP_PASSWORD",
    "POSTGRES_MONITOR_PASSWORD",
    "PGBOUNCER_AUTH_PASSWORD",
    "PGBOUNCER_ADMIN_PASSWORD",
    "PGBOUNCER_STATS_PASSWORD",
    "REDIS_PASSWORD",
)
# The TLS servers, and the names clients reach each by (Compose service name, loopback).
SERVERS = ("postgres", "pgbouncer", "redis", "proxy")
DEFAULT_HOSTS = ("localhost", "127.0.0.1")
# What each consumer gets. NAME_VERIFIER: the SCRAM-SHA-256 verifier of NAME_PASSWORD;
# NAME_SHA256: its SHA-256, hex (Redis ACL).
CONSUMERS = {
    "postgres": (
        "POSTGRES_OWNER_VERIFIER",
        "POSTGRES_APP_VERIFIER",
        "POSTGRES_MONITOR_VERIFIER",
        "PGBOUNCER_AUTH_VERIFIER",
        "postgres.crt",
        "postgres.key",
        "ca.crt",
    ),
    "pgbouncer": (
        "PGBOUNCER_AUTH_PASSWORD",  # PgBouncer logs in to PostgreSQL with it
        "PGBOUNCER_ADMIN_VERIFIER",
        "PGBOUNCER_STATS_VERIFIER",
        "pgbouncer.crt",
        "pgbouncer.key",
        "ca.crt",
    ),
    "redis": ("REDIS_PASSWORD_SHA256", "redis.crt", "redis.key", "ca.crt"),
    "app": ("DJANGO_SECRET_KEY", "POSTGRES_APP_PASSWORD", "REDIS_PASSWORD", "ca.crt"),
    "migrate": ("DJANGO_SECRET_KEY", "POSTGRES_OWNER_PASSWORD", "ca.crt"),
    "monitor": ("POSTGRES_MONITOR_PASSWORD", "PGBOUNCER_STATS_PASSWORD", "ca.crt"),
    "proxy": ("proxy.crt", "proxy.key", "ca.crt"),
}
PLACEHOLDER = re.compile(r"change-?me|placeholder", re.IGNORECASE)
SCRAM_ITERATIONS = 4096  # PostgreSQL's default (scram_iterations)
CA_NAME = "chat-stack private CA"
CA_DAYS, SERVER_DAYS, RENEW_DAYS = 3650, 825, 30


class Refused(Exception):
    """A secret that cannot be used; the message names the file and the fix."""


def main() -> int:
    root = Path(os.environ.get("SECRETS_DIR", "/secrets"))
    owners = parse_owners(os.environ.get("SECRETS_OWNERS", ""))
    os.umask(0o077)
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o711)  # each service may pass through to its own directory, and list nothing
    store = root / "store"
    store.mkdir(exist_ok=True)
    store.chmod(0o700)
    try:
        for name in PASSWORDS:
            password(store, name)
        certificate_authority(store)
        for server in SERVERS:
            server_certificate(store, server, hosts(server))
        for consumer, files in CONSUMERS.items():
            hand_over(root, store, consumer, files, owners.get(consumer))
    except Refused as refused:
        print(f"error: {refused}", file=sys.stderr)
        return 1
    return 0


def parse_owners(text: str) -> dict[str, tuple[int, int]]:
    """ "postgres=999:999 app=10001:10001" -> {"postgres": (999, 999), ...}."""
    owners = {}
    for item in text.split():
        consumer, _, ids = item.partition("=")
        uid, _, gid = ids.partition(":")
        owners[consumer] = (int(uid), int(gid or uid))
    return owners


def hosts(server: str) -> list[str]:
    extra = os.environ.get(f"TLS_HOSTS_{server.upper()}", "")
    names = [*([] if server == "proxy" else [server]), *DEFAULT_HOSTS, *extra.split(",")]
    return list(dict.fromkeys(name.strip() for name in names if name.strip()))


# --- passwords ----------------------------------------------------------------------------


def password(store: Path, name: str) -> str:
    path = store / name
    if not path.exists():
        write(path, secrets.token_hex(32))
    value = path.read_text().rstrip("\n")
    if not value or len(value) < (50 if name == "DJANGO_SECRET_KEY" else 16):
        raise Refused(f"{path} is shorter than {50 if name == 'DJANGO_SECRET_KEY' else 16} characters")
    if PLACEHOLDER.search(value):
        raise Refused(f"{path} is still a placeholder: put a random value there, or delete it for a new one")
    if not all(" " <= char <= "~" for char in value):
        raise Refused(f"{path} has characters other than printable ASCII (space to ~): use only those")
    return value


def scram_verifier(value: str) -> str:
    """PostgreSQL's SCRAM-SHA-256 verifier of a printable-ASCII password (SASLprep leaves it as is)."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", value.encode(), salt, SCRAM_ITERATIONS)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    return f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def derived(store: Path, name: str) -> str:
    """NAME_VERIFIER / NAME_SHA256 from the password it derives from."""
    if name.endswith("_VERIFIER"):
        return scram_verifier(password(store, name.removesuffix("_VERIFIER") + "_PASSWORD"))
    if name.endswith("_SHA256"):
        return hashlib.sha256(password(store, name.removesuffix("_SHA256")).encode()).hexdigest()
    raise KeyError(name)


# --- certificates -------------------------------------------------------------------------


def openssl(*args: str) -> str:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if result.returncode:
        raise Refused(f"openssl {args[0]} failed: {result.stderr.strip()}")
    return result.stdout


def certificate_authority(store: Path) -> None:
    key, cert = store / "ca.key", store / "ca.crt"
    if key.exists() and cert.exists() and valid_for(cert, RENEW_DAYS):
        return
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(key))
    openssl(
        "req", "-x509", "-new", "-key", str(key), "-sha256", "-days", str(CA_DAYS),
        "-subj", f"/CN={CA_NAME}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-out", str(cert),
    )  # fmt: skip


def valid_for(cert: Path, days: int) -> bool:
    result = subprocess.run(
        ["openssl", "x509", "-checkend", str(days * 86400), "-noout", "-in", str(cert)],
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


def names_in(cert: Path) -> set[str]:
    text = openssl("x509", "-noout", "-ext", "subjectAltName", "-in", str(cert)).split("\n", 1)[-1]
    return {entry.split(":", 1)[1].strip() for entry in re.split(r",\s*", text) if ":" in entry}


def server_certificate(store: Path, server: str, names: list[str]) -> None:
    key, cert = store / f"{server}.key", store / f"{server}.crt"
    foreign = cert.exists() and CA_NAME not in openssl("x509", "-noout", "-issuer", "-in", str(cert))
    if server == "proxy" and foreign:
        return  # a certificate from a CA of yours (README): yours to renew
    if (
        cert.exists()
        and key.exists()
        and valid_for(cert, RENEW_DAYS)
        and names_in(cert) == set(names)
        and issued_by(store / "ca.crt", cert)  # not by a CA made before this one
    ):
        return
    if not key.exists():
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(key))
    alt_names = ",".join(f"IP:{n}" if is_ip(n) else f"DNS:{n}" for n in names)
    with tempfile.TemporaryDirectory() as scratch:
        request, extensions = Path(scratch) / "request.csr", Path(scratch) / "extensions.cnf"
        extensions.write_text(
            "basicConstraints = critical, CA:FALSE\n"
            "keyUsage = critical, digitalSignature, keyEncipherment\n"
            "extendedKeyUsage = serverAuth\n"
            f"subjectAltName = {alt_names}\n"
        )
        openssl("req", "-new", "-key", str(key), "-subj", f"/CN={names[0]}", "-out", str(request))
        openssl(
            "x509", "-req", "-in", str(request),
            "-CA", str(store / "ca.crt"), "-CAkey", str(store / "ca.key"),
            "-set_serial", f"0x{secrets.token_hex(16)}", "-days", str(SERVER_DAYS), "-sha256",
            "-extfile", str(extensions), "-out", str(cert),
        )  # fmt: skip


def issued_by(ca: Path, cert: Path) -> bool:
    if not cert.exists():
        return False
    result = subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca), str(cert)], capture_output=True, check=False
    )
    return result.returncode == 0


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


# --- handing over ---------------------------------------------------------------------------


def hand_over(root: Path, store: Path, consumer: str, files: tuple[str, ...], owner) -> None:
    """Replace SECRETS_DIR/<consumer>/ with fresh copies of what it needs, readable by it only."""
    target = root / consumer
    staging = root / f".{consumer}.new"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700)
    for name in files:
        if name in PASSWORDS:
            text = password(store, name)
        elif (store / name).exists():
            text = (store / name).read_text()
        else:
            text = derived(store, name)
        write(staging / name, text)
    for path in [*staging.iterdir(), staging]:
        if owner is not None:
            os.chown(path, *owner)
        path.chmod(0o500 if path.is_dir() else 0o400)
    if target.is_dir() and not target.is_symlink():
        # Handed over as 0500: its files cannot be removed until it is writable again (root
        # never notices; the regular user who runs the native stack does, at the next start).
        target.chmod(0o700)
        shutil.rmtree(target)
    staging.rename(target)


def write(path: Path, text: str) -> None:
    """A new file, mode 0600 from its first byte, never through a link."""
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(partial, path)


if __name__ == "__main__":
    sys.exit(main())
