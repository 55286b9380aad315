"""The local service stack: PostgreSQL 15, Kafka 4 (KRaft, single node) and Redis 7.

Each service runs from this machine's own binaries (Debian packages; Kafka from jars fetched off
Maven Central), with all its state under `$VELO_DATA_DIR/services/<name>/`, so `velo services up`
needs neither Docker nor the distribution's system services. Ports come from `DATABASE_URL`,
`KAFKA_BOOTSTRAP` and `REDIS_URL`. A port already taken by a working server of the right kind is
used as it is ("external"); a port taken by anything else is an error naming the process, because
silently talking to the wrong server is worse than not starting.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import redis
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from connectors.settings import PROJECT_ROOT, Settings, get_settings

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/velo"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
SERVICE_NAMES = ("postgres", "kafka", "redis")
# Hosts velo starts servers for; any other host is someone else's server, only health-checked.
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost"})
PROBE_TIMEOUT_S = 2.0
POLL_INTERVAL_S = 0.25
PG_BIN_DIR = Path("/usr/lib/postgresql/15/bin")
# Where the cluster goes, as root, when the postgres user cannot reach $VELO_DATA_DIR.
PG_RELOCATED_ROOT = Path("/var/lib/velo")
KAFKA_POM = PROJECT_ROOT / "scripts" / "kafka" / "pom.xml"
KAFKA_LIBS_STAMP = ".pom.sha256"
# Small heap: the broker holds little in memory on a 2-core development box; the page cache does
# the work. The G1 settings are the ones Kafka's own start scripts use.
KAFKA_JVM_OPTIONS = (
    "-Xms256m",
    "-Xmx512m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
MIN_JAVA_MAJOR = 17


class ServiceError(RuntimeError):
    """A service could not be started, stopped or reached; the message says why and what to do."""


@dataclass(frozen=True)
class ServiceStatus:
    """One service as seen right now.

    `state` is one of: running (started by velo, healthy), unhealthy (started by velo, not
    answering), external (a working server velo did not start), port in use (something else holds
    the port), stopped, unmanaged (a non-local host velo never starts; only health-checked).
    """

    name: str
    address: str
    state: str
    healthy: bool
    pid: int | None = None
    detail: str = ""


# --- health probes (also used by the test fixtures) ----------------------------------------------


def probe_postgres(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """Why PostgreSQL at `url` is not usable, or None when `select 1` works."""
    try:
        with psycopg.connect(url, connect_timeout=max(2, round(timeout_s))) as conn:
            conn.execute("select 1").fetchone()
    except psycopg.Error as exc:
        return _one_line(str(exc)) or type(exc).__name__
    return None


def probe_redis(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """Why Redis at `url` is not usable, or None when PING answers."""
    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        client.ping()
    except redis.RedisError as exc:
        return _one_line(str(exc)) or type(exc).__name__
    finally:
        client.close()
    return None


def probe_kafka(bootstrap: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """Why Kafka at `bootstrap` is not usable, or None when listing topics works."""
    # log_level 0: librdkafka would otherwise print a line per failed connect while we poll.
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        return _one_line(error.str() if isinstance(error, KafkaError) else str(exc))
    if not metadata.brokers:
        return "the cluster answered with no brokers"
    return None


# --- ports and processes -------------------------------------------------------------------------


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on host:port now (TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def port_owner(port: int) -> str | None:
    """'pid N (command line)' of the process listening on TCP `port`, if /proc lets us see it."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    link = os.readlink(fd)
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        return f"pid {proc.name} ({_cmdline(int(proc.name)) or '?'})"
    return None


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes in LISTEN state on `port`, from /proc/net/tcp{,6}."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == "0A":
                    inodes.add(fields[9])
    return inodes


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def _pid_alive(pid: int) -> bool:
    """True for a live process; zombies count as gone (their parent may never reap them)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _terminate(pid: int, timeout_s: float) -> None:
    """SIGTERM (a clean shutdown), then SIGKILL if it is still there after `timeout_s`."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        while _pid_alive(pid) and time.monotonic() < deadline + 10:
            time.sleep(0.1)
    # Reap it when it is our own child (tests start services in-process).
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _read_pid(pid_file: Path, marker: str) -> int | None:
    """The pid in `pid_file` if that process is alive and its command line contains `marker`."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if _pid_alive(pid) and marker in _cmdline(pid) else None


def _spawn(argv: list[str], log_path: Path, pid_file: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """Start a detached server (own session, output appended to `log_path`) and record its pid."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pid_file.write_text(f"{process.pid}\n")
    return process


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return _tail(path.read_text(errors="replace"), lines)
    except OSError:
        return f"(no log at {path})"


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _one_line(text: str) -> str:
    return " ".join(text.split())


# --- the services --------------------------------------------------------------------------------


class Service(ABC):
    """A server velo can start on 127.0.0.1 (or only health-check, for other hosts)."""

    name: str
    env_var: str  # the setting a user changes to move this service to another port

    def __init__(self, host: str, port: int, root: Path) -> None:
        self.host = host
        self.port = port
        self.root = root

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def managed(self) -> bool:
        """Whether velo starts this server itself (only for loopback hosts)."""
        return self.host in LOCAL_HOSTS

    @property
    @abstractmethod
    def log_path(self) -> Path:
        """Where the server's own output goes, quoted in errors."""

    @abstractmethod
    def probe(self) -> str | None:
        """Why the server is not usable, or None when healthy. No side effects."""

    @abstractmethod
    def running_pid(self) -> int | None:
        """Pid of the server velo started from this data directory, if it is running."""

    @abstractmethod
    def _launch(self, deadline: float) -> subprocess.Popen[bytes] | None:
        """Start the server (without waiting for health); the process if we hold it."""

    @abstractmethod
    def _shutdown(self, pid: int, timeout_s: float) -> None:
        """Stop the server started by velo."""

    def extra_ports(self) -> tuple[int, ...]:
        """Ports besides `port` the server listens on."""
        return ()

    def _prepare(self) -> str | None:
        """Make a reachable server ready for use (e.g. create the database); None when ready."""
        return self.probe()

    def port_hint(self, owner: str | None) -> str:
        """What to do about a port held by `owner`."""
        return f"stop it, or set {self.env_var} to use another port"

    # The life cycle, shared by all services.

    def status(self) -> ServiceStatus:
        """What is there now, without changing anything."""
        if not self.managed:
            problem = self.probe()
            healthy = problem is None
            detail = problem or "not on this machine: velo only checks it"
            return ServiceStatus(self.name, self.address, "unmanaged", healthy, detail=detail)
        pid = self.running_pid()
        if pid is not None:
            problem = self.probe()
            healthy = problem is None
            state = "running" if healthy else "unhealthy"
            return ServiceStatus(self.name, self.address, state, healthy, pid, problem or "")
        if not port_is_free(self.port):
            problem = self.probe()
            owner = port_owner(self.port) or "an unknown process"
            if problem is None:
                detail = f"not started by velo: {owner}"
                return ServiceStatus(self.name, self.address, "external", True, None, detail)
            detail = f"held by {owner}: {problem}"
            return ServiceStatus(self.name, self.address, "port in use", False, None, detail)
        return ServiceStatus(self.name, self.address, "stopped", False)

    def up(self, timeout_s: float) -> ServiceStatus:
        """Start the server unless it already runs; return once it is healthy, else raise."""
        deadline = time.monotonic() + timeout_s
        if not self.managed:
            problem = self._prepare()
            if problem is not None:
                raise ServiceError(
                    f"{self.name}: {self.address} is not on this machine, so velo does not start "
                    f"it, and it does not answer: {problem}"
                )
            return self.status()
        pid = self.running_pid()
        process = None
        if pid is None:
            if self._external_server_in_use():
                return self.status()
            process = self._launch(deadline)
            pid = process.pid if process is not None else self.running_pid()
        self._wait_ready(deadline, timeout_s, process, pid)
        return self.status()

    def down(self, timeout_s: float) -> ServiceStatus:
        """Stop the server if velo started it; anything else is left alone."""
        if self.managed:
            pid = self.running_pid()
            if pid is not None:
                deadline = time.monotonic() + timeout_s
                self._shutdown(pid, timeout_s)
                # pg_ctl returns once the pid file is gone, a moment before the process is.
                while _pid_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if _pid_alive(pid):
                    raise ServiceError(f"{self.name}: pid {pid} did not stop in {timeout_s:.0f} s")
        return self.status()

    def _external_server_in_use(self) -> bool:
        """True when a working server of our kind already holds the port (it is used as it is);
        False when all ports are free; raises when anything else holds one."""
        for port in (self.port, *self.extra_ports()):
            if port_is_free(port):
                continue
            why = ""
            if port == self.port:
                problem = self._prepare()
                if problem is None:
                    return True
                why = f", and it does not answer as {self.name}: {problem}"
            owner = port_owner(port)
            who = owner or f"an unknown process (see `ss -ltnp 'sport = :{port}'`)"
            hint = self.port_hint(owner)
            raise ServiceError(
                f"{self.name}: port {port} on 127.0.0.1 is already in use by {who}{why}. "
                f"{hint[0].upper()}{hint[1:]}."
            )
        return False

    def _wait_ready(
        self,
        deadline: float,
        timeout_s: float,
        process: subprocess.Popen[bytes] | None,
        pid: int | None,
    ) -> None:
        while True:
            problem = self._prepare()
            if problem is None:
                return
            if process is not None:
                exited = process.poll() is not None
            else:
                exited = pid is not None and not _pid_alive(pid)
            if exited:
                raise ServiceError(
                    f"{self.name} exited while starting; last lines of {self.log_path}:\n"
                    f"{_log_tail(self.log_path)}"
                )
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"{self.name} is not healthy after {timeout_s:.0f} s ({problem}); "
                    f"last lines of {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            time.sleep(POLL_INTERVAL_S)


class PostgresService(Service):
    """PostgreSQL 15 from Debian's binaries, with its own cluster and trust auth on loopback."""

    name = "postgres"
    env_var = "DATABASE_URL"

    def __init__(self, url: str, root: Path, bin_dir: Path = PG_BIN_DIR) -> None:
        url = libpq_url(url)
        params = conninfo_to_dict(url)
        super().__init__(str(params.get("host") or ""), int(params.get("port") or 5432), root)
        self.url = url
        self.user = str(params.get("user") or "postgres")
        self.dbname = str(params.get("dbname") or self.user)
        self.bin_dir = bin_dir
        self.data_dir = root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    def probe(self) -> str | None:
        return probe_postgres(self.url)

    def _prepare(self) -> str | None:
        """Create the database named in the URL if the server lacks it, then probe it."""
        maintenance = make_conninfo(self.url, dbname="postgres", connect_timeout=2)
        try:
            with psycopg.connect(maintenance, autocommit=True) as conn:
                exists = conn.execute(
                    "select 1 from pg_database where datname = %s", (self.dbname,)
                ).fetchone()
                if exists is None:
                    conn.execute(sql.SQL("create database {}").format(sql.Identifier(self.dbname)))
        except psycopg.Error as exc:
            return _one_line(str(exc)) or type(exc).__name__
        return self.probe()

    def running_pid(self) -> int | None:
        # postmaster.pid is PostgreSQL's own pid file; it outlives a crash, hence the checks.
        return _read_pid(self.data_dir / "postmaster.pid", "postgres")

    def port_hint(self, owner: str | None) -> str:
        if owner and "/var/lib/postgresql/" in owner:
            return (
                "that is Debian's own PostgreSQL cluster: stop it with "
                "`pg_ctlcluster 15 main stop` (or `service postgresql stop`), or set DATABASE_URL "
                "to another port, e.g. postgresql://postgres@127.0.0.1:5433/velo"
            )
        return super().port_hint(owner)

    def _launch(self, deadline: float) -> None:
        if not (self.bin_dir / "postgres").is_file():
            raise ServiceError(
                f"postgres: no server binaries in {self.bin_dir}; run `make system-deps` "
                "(installs Debian's postgresql-15)"
            )
        self._make_root_dir()
        if not (self.data_dir / "PG_VERSION").is_file():
            self._initdb(deadline)
        (self.data_dir / "velo.conf").write_text(self._settings())
        seconds = max(1, int(deadline - time.monotonic()))
        pg_ctl = [str(self.bin_dir / "pg_ctl"), "start", "-w", "-t", str(seconds)]
        pg_ctl += ["-D", str(self.data_dir.resolve()), "-l", str(self.log_path.resolve())]
        self._run_as_owner(pg_ctl, "pg_ctl start", seconds + 10)

    def _shutdown(self, pid: int, timeout_s: float) -> None:
        seconds = str(max(1, int(timeout_s)))
        pg_ctl = [str(self.bin_dir / "pg_ctl"), "stop", "-m", "fast", "-w", "-t", seconds]
        data_dir = str(self.data_dir.resolve())
        self._run_as_owner([*pg_ctl, "-D", data_dir], "pg_ctl stop", timeout_s + 10)

    def _settings(self) -> str:
        """Included from postgresql.conf; rewritten at each start so the port follows the URL."""
        return (
            "# Written by `velo services up` at every start; edits here are lost.\n"
            "listen_addresses = '127.0.0.1'\n"
            f"port = {self.port}\n"
            "unix_socket_directories = ''\n"
            "max_connections = 100\n"
            "shared_buffers = 128MB\n"
            "timezone = 'UTC'\n"
            "log_timezone = 'UTC'\n"
        )

    def _initdb(self, deadline: float) -> None:
        initdb = [str(self.bin_dir / "initdb"), "-D", str(self.data_dir.resolve()), "-U", self.user]
        initdb += ["-E", "UTF8", "--locale=C.UTF-8", "--auth-local=trust", "--auth-host=trust"]
        self._run_as_owner(initdb, "initdb", max(30.0, deadline - time.monotonic()))
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\ninclude = 'velo.conf'\n")

    def _make_root_dir(self) -> None:
        """PostgreSQL refuses to run as root: as root, hand the directory to the postgres user.

        When that user cannot reach it (the checkout lies under a 0700 directory such as
        /root), the cluster lives under /var/lib/velo instead, behind a symlink at `root`.
        """
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(exist_ok=True)
        if os.geteuid() != 0:
            return
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise ServiceError(
                "postgres: there is no `postgres` OS user to run the server as (root may not); "
                "run `make system-deps` (installs Debian's postgresql-15, which creates it)"
            ) from None
        os.chown(self.root.resolve(), owner.pw_uid, owner.pw_gid)
        if _postgres_user_can_write(self.root.resolve()):
            return
        if self.root.is_symlink() or any(self.root.iterdir()):
            raise ServiceError(
                f"postgres: the postgres OS user cannot write to {self.root.resolve()} (a parent "
                "directory is closed to other users); set VELO_DATA_DIR to a directory it can reach"
            )
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
        relocated = PG_RELOCATED_ROOT / f"postgres-{digest}"
        relocated.mkdir(parents=True, exist_ok=True)
        PG_RELOCATED_ROOT.chmod(0o755)
        os.chown(relocated, owner.pw_uid, owner.pw_gid)
        self.root.rmdir()
        self.root.symlink_to(relocated, target_is_directory=True)

    def _run_as_owner(self, argv: list[str], what: str, timeout_s: float) -> None:
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        try:
            result = subprocess.run(
                argv, cwd=self.root.resolve(), capture_output=True, text=True, timeout=timeout_s
            )
        except subprocess.TimeoutExpired:
            raise ServiceError(f"postgres: {what} did not finish in {timeout_s:.0f} s") from None
        if result.returncode != 0:
            raise ServiceError(
                f"postgres: {what} failed ({result.returncode}): "
                f"{(result.stdout + result.stderr).strip()}\n"
                f"last lines of {self.log_path}:\n{_log_tail(self.log_path)}"
            )


def _postgres_user_can_write(directory: Path) -> bool:
    check = ["runuser", "-u", "postgres", "--", "test", "-w", str(directory)]
    return subprocess.run(check, capture_output=True).returncode == 0


class RedisService(Service):
    """Redis 7 from Debian's `redis-server`, detached in its own session, with a pid file."""

    name = "redis"
    env_var = "REDIS_URL"

    def __init__(self, url: str, root: Path) -> None:
        parts = urlsplit(url)
        super().__init__(parts.hostname or "127.0.0.1", parts.port or 6379, root)
        self.url = url

    @property
    def log_path(self) -> Path:
        return self.root / "redis.log"

    @property
    def pid_file(self) -> Path:
        return self.root / "redis.pid"

    def probe(self) -> str | None:
        return probe_redis(self.url)

    def running_pid(self) -> int | None:
        return _read_pid(self.pid_file, "redis-server")

    def port_hint(self, owner: str | None) -> str:
        if owner and "redis-server" in owner:
            return (
                "if that is Debian's redis-server service, stop it with `service redis-server "
                "stop`; or set REDIS_URL to another port, e.g. redis://127.0.0.1:6380/0"
            )
        return super().port_hint(owner)

    def _launch(self, deadline: float) -> subprocess.Popen[bytes]:
        server = shutil.which("redis-server")
        if server is None:
            raise ServiceError("redis: `redis-server` not found; run `make system-deps`")
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "redis.conf"
        config.write_text(self._config())
        return _spawn([server, str(config)], self.log_path, self.pid_file, self.root)

    def _shutdown(self, pid: int, timeout_s: float) -> None:
        _terminate(pid, timeout_s)  # SIGTERM makes Redis save its snapshot, then exit.

    def _config(self) -> str:
        return (
            "# Written by `velo services up` at every start; edits here are lost.\n"
            "bind 127.0.0.1\n"
            f"port {self.port}\n"
            "protected-mode yes\n"
            "daemonize no\n"
            'logfile ""\n'
            f'dir "{self.root}"\n'
            "save 3600 1 300 100 60 10000\n"
            "appendonly no\n"
        )


class KafkaService(Service):
    """A single-node Kafka 4 broker+controller in KRaft mode, run from Maven Central jars."""

    name = "kafka"
    env_var = "KAFKA_BOOTSTRAP"

    def __init__(self, bootstrap: str, root: Path, libs_dir: Path) -> None:
        host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
        super().__init__(host or "127.0.0.1", int(port or 9092), root)
        self.bootstrap = bootstrap
        self.libs_dir = libs_dir
        # The controller listens on the next port: one setting fewer (see docs/services.md).
        self.controller_port = self.port + 1

    @property
    def log_path(self) -> Path:
        return self.root / "kafka.out"

    @property
    def pid_file(self) -> Path:
        return self.root / "kafka.pid"

    def extra_ports(self) -> tuple[int, ...]:
        return (self.controller_port,)

    def probe(self) -> str | None:
        if self.managed:
            # A plain connect first: cheap while the JVM is still starting.
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError as exc:
                return f"nothing accepts connections on port {self.port} ({exc.strerror})"
        return probe_kafka(self.bootstrap)

    def running_pid(self) -> int | None:
        return _read_pid(self.pid_file, "kafka.Kafka")

    def _launch(self, deadline: float) -> subprocess.Popen[bytes]:
        ensure_kafka_libs(self.libs_dir)
        java = find_java()
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "server.properties"
        config.write_text(self._server_properties())
        log4j = self.root / "log4j2.xml"
        log4j.write_text(self._log4j2_xml())
        base = [java, *KAFKA_JVM_OPTIONS, f"-Dlog4j2.configurationFile={log4j}"]
        base += ["-cp", f"{self.libs_dir}/*"]
        if not (self.root / "data" / "meta.properties").is_file():
            self._format_storage(base, config, deadline)
        return _spawn([*base, "kafka.Kafka", str(config)], self.log_path, self.pid_file, self.root)

    def _shutdown(self, pid: int, timeout_s: float) -> None:
        _terminate(pid, timeout_s)  # SIGTERM is Kafka's controlled shutdown.

    def _format_storage(self, java_base: list[str], config: Path, deadline: float) -> None:
        """Write the KRaft metadata directory once, with a cluster id kept beside it."""
        id_file = self.root / "cluster.id"
        if not id_file.is_file():
            # Kafka's Uuid text form: 16 random bytes, URL-safe base64 without padding.
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
            id_file.write_text(cluster_id + "\n")
        cluster_id = id_file.read_text().strip()
        argv = [*java_base, "kafka.tools.StorageTool", "format", "-t", cluster_id]
        argv += ["-c", str(config), "--ignore-formatted"]
        try:
            result = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=max(30.0, deadline - time.monotonic()),
            )
        except subprocess.TimeoutExpired:
            raise ServiceError("kafka: formatting the storage directory timed out") from None
        if result.returncode != 0:
            output = _tail(result.stdout + result.stderr)
            raise ServiceError(f"kafka: storage format failed:\n{output}")

    def _server_properties(self) -> str:
        return (
            "# Written by `velo services up` at every start; edits here are lost.\n"
            "process.roles=broker,controller\n"
            "node.id=1\n"
            f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}\n"
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},"
            f"CONTROLLER://127.0.0.1:{self.controller_port}\n"
            f"advertised.listeners=PLAINTEXT://{self.host}:{self.port}\n"
            "controller.listener.names=CONTROLLER\n"
            "inter.broker.listener.name=PLAINTEXT\n"
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n"
            f"log.dirs={self.root / 'data'}\n"
            "auto.create.topics.enable=true\n"
            "num.partitions=4\n"
            "default.replication.factor=1\n"
            "min.insync.replicas=1\n"
            "offsets.topic.replication.factor=1\n"
            "offsets.topic.num.partitions=4\n"
            "transaction.state.log.replication.factor=1\n"
            "transaction.state.log.min.isr=1\n"
            "transaction.state.log.num.partitions=4\n"
            "share.coordinator.state.topic.replication.factor=1\n"
            "share.coordinator.state.topic.min.isr=1\n"
            "group.initial.rebalance.delay.ms=0\n"
            "num.network.threads=2\n"
            "num.io.threads=4\n"
            "num.recovery.threads.per.data.dir=1\n"
            "background.threads=4\n"
            "log.cleaner.threads=1\n"
            "log.retention.hours=168\n"
            "log.segment.bytes=268435456\n"
        )

    def _log4j2_xml(self) -> str:
        """Broker logs to a size-capped rolling file; warnings also go to kafka.out."""
        logs = self.root / "logs"
        # shutdownHook="disable": Kafka logs its own shutdown, which log4j's hook would cut off.
        return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by `velo services up` at every start; edits here are lost. -->
<Configuration status="warn" shutdownHook="disable">
  <Appenders>
    <Console name="stdout" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
      <ThresholdFilter level="WARN"/>
    </Console>
    <RollingFile name="server" fileName="{logs}/server.log" filePattern="{logs}/server.log.%i">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
      <SizeBasedTriggeringPolicy size="20MB"/>
      <DefaultRolloverStrategy max="3"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Root level="INFO">
      <AppenderRef ref="stdout"/>
      <AppenderRef ref="server"/>
    </Root>
  </Loggers>
</Configuration>
"""


# --- Java and the Kafka jars ---------------------------------------------------------------------


def find_java() -> str:
    """A `java` of version 17 or later: JAVA_HOME's, the PATH's, then any under /usr/lib/jvm."""
    candidates: list[str] = []
    if java_home := os.environ.get("JAVA_HOME"):
        candidates.append(str(Path(java_home) / "bin" / "java"))
    if on_path := shutil.which("java"):
        candidates.append(on_path)
    candidates += sorted(str(p) for p in Path("/usr/lib/jvm").glob("*/bin/java"))
    seen: list[str] = []
    for java in dict.fromkeys(candidates):
        major = _java_major(java)
        if major is not None and major >= MIN_JAVA_MAJOR:
            return java
        seen.append(f"{java} ({major or 'unusable'})")
    raise ServiceError(
        f"kafka: needs Java {MIN_JAVA_MAJOR}+; found {', '.join(seen) or 'none'}. "
        "Run `make system-deps` (installs openjdk-17-jre-headless)"
    )


def _java_major(java: str) -> int | None:
    try:
        result = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr)
    if match is None:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major  # "1.8" is Java 8


def kafka_libs_current(libs_dir: Path, pom: Path = KAFKA_POM) -> bool:
    """Whether `libs_dir` holds the jars of this exact pom (a stamp file keeps its hash)."""
    want = hashlib.sha256(pom.read_bytes()).hexdigest()
    try:
        return (libs_dir / KAFKA_LIBS_STAMP).read_text().strip() == want
    except OSError:
        return False


def ensure_kafka_libs(libs_dir: Path, pom: Path = KAFKA_POM) -> None:
    """Fetch the broker's jars with Maven unless present (same step as install-system-deps.sh,
    for a VELO_DATA_DIR that script did not see, e.g. one set only in .env)."""
    if kafka_libs_current(libs_dir, pom):
        return
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServiceError(
            f"kafka: its jars are not in {libs_dir} and Maven is not installed; "
            "run `make system-deps`"
        )
    libs_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="libs.", dir=libs_dir.parent))
    try:
        argv = [mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(pom)]
        argv += ["dependency:copy-dependencies", "-DincludeScope=runtime"]
        argv += [f"-DoutputDirectory={staging}"]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            raise ServiceError(
                f"kafka: fetching jars with Maven failed:\n{_tail(result.stdout + result.stderr)}"
            )
        stamp = hashlib.sha256(pom.read_bytes()).hexdigest()
        (staging / KAFKA_LIBS_STAMP).write_text(stamp + "\n")
        shutil.rmtree(libs_dir, ignore_errors=True)
        staging.rename(libs_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --- the stack -----------------------------------------------------------------------------------


def libpq_url(url: str) -> str:
    """`url` without an SQLAlchemy driver suffix (postgresql+psycopg:// → postgresql://)."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.partition('+')[0]}://{rest}" if sep and "+" in scheme else url


def services_database_url(settings: Settings) -> str:
    """The PostgreSQL the service stack provides: DATABASE_URL, else the local default."""
    return libpq_url(settings.database_url or DEFAULT_DATABASE_URL)


def services_redis_url(settings: Settings) -> str:
    """The Redis the service stack provides: REDIS_URL, else the local default."""
    return settings.redis_url or DEFAULT_REDIS_URL


def build_services(
    names: Iterable[str] = SERVICE_NAMES, settings: Settings | None = None
) -> list[Service]:
    """The services named (in the stack's order), configured from the settings."""
    settings = settings or get_settings()
    wanted = set(names)
    unknown = wanted - set(SERVICE_NAMES)
    if unknown:
        raise ServiceError(
            f"unknown service(s): {', '.join(sorted(unknown))}; "
            f"choose from {', '.join(SERVICE_NAMES)}"
        )
    data_dir = settings.velo_data_dir.resolve()
    root = data_dir / "services"
    makers = {
        "postgres": lambda: PostgresService(services_database_url(settings), root / "postgres"),
        "kafka": lambda: KafkaService(
            settings.kafka_bootstrap, root / "kafka", data_dir / "kafka" / "libs"
        ),
        "redis": lambda: RedisService(services_redis_url(settings), root / "redis"),
    }
    return [makers[name]() for name in SERVICE_NAMES if name in wanted]
