"""The local service stack for real: status of the started services, full start/stop cycles of
private instances on free ports, and the errors for ports held by something else."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from cli.main import main as velo
from connectors.services import (
    KAFKA_LIBS_STAMP,
    KAFKA_POM,
    PG_BIN_DIR,
    PG_RELOCATED_ROOT,
    KafkaService,
    PostgresService,
    RedisService,
    Service,
    ServiceError,
    build_services,
    kafka_libs_current,
    port_is_free,
    port_owner,
)
from connectors.settings import get_settings
from tests.service_fixtures import service_unavailable

START_TIMEOUT_S = 120.0


@pytest.fixture
def service_root() -> Iterator[Path]:
    """A scratch directory the postgres OS user can enter (pytest's tmp_path is 0700)."""
    root = Path(tempfile.mkdtemp(prefix="velo-services-test-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def listening_socket() -> Iterator[socket.socket]:
    """A socket that holds a port and accepts connections but never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock
    sock.close()


def free_port_pair() -> int:
    """A port p with p and p + 1 free (Kafka's listener and controller)."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port < 65535 and port_is_free(port) and port_is_free(port + 1):
            return port
    raise RuntimeError("no two adjacent free ports found")


def require_redis_server() -> None:
    if shutil.which("redis-server") is None:
        service_unavailable("redis-server is not installed (make system-deps)")


def require_postgres_binaries() -> None:
    if not (PG_BIN_DIR / "postgres").is_file():
        service_unavailable(f"PostgreSQL 15 binaries are missing in {PG_BIN_DIR}")


def kafka_libs_dir() -> Path:
    libs = get_settings().velo_data_dir.resolve() / "kafka" / "libs"
    if not kafka_libs_current(libs):
        service_unavailable(f"Kafka jars are not fetched into {libs} (make system-deps)")
    return libs


def started_then_stopped(service: Service, check: Callable[[], None]) -> None:
    """Start `service` from nothing, check it, start again (a no-op), stop it; always stop."""
    try:
        assert service.status().state == "stopped"
        first = service.up(START_TIMEOUT_S)
        assert (first.state, first.healthy) == ("running", True), first
        assert first.pid is not None
        check()
        again = service.up(START_TIMEOUT_S)
        assert again.pid == first.pid, "up on a running service must not start another"
        stopped = service.down(60)
        assert stopped.state == "stopped", stopped
        assert not Path(f"/proc/{first.pid}").exists() or "Z" in _proc_state(first.pid)
        assert port_is_free(service.port)
    finally:
        service.down(60)


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


# --- the services `make test` started ---


def test_started_services_report_healthy(pg_url: str, kafka_bootstrap: str, redis_url: str) -> None:
    statuses = [service.status() for service in build_services()]
    assert [status.name for status in statuses] == ["postgres", "kafka", "redis"]
    for status in statuses:
        assert status.healthy, status
        assert status.state in ("running", "external"), status
    assert velo(["services", "status"]) == 0
    assert velo(["services", "up", "redis"]) == 0  # already running: nothing to do, still 0


def test_fresh_database_is_empty_and_private(fresh_database: str, pg_url: str) -> None:
    with psycopg.connect(fresh_database) as conn:
        name = conn.execute("select current_database()").fetchone()[0]
        tables = conn.execute(
            "select count(*) from information_schema.tables where table_schema = 'public'"
        ).fetchone()[0]
        conn.execute("create table probe (id int)")
    assert name.startswith("velo_test_") and name not in pg_url
    assert tables == 0


def test_kafka_topic_factory_makes_topics_with_partitions(
    kafka_topic: Callable[..., str], kafka_bootstrap: str
) -> None:
    name = kafka_topic(partitions=3)
    metadata = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(name, timeout=10)
    assert len(metadata.topics[name].partitions) == 3
    assert kafka_topic() != name


def test_redis_prefix_is_unique(redis_prefix: str, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.set(f"{redis_prefix}k", b"v")
    assert client.get(f"{redis_prefix}k") == b"v"
    client.close()


# --- private instances: the whole life cycle ---


def test_redis_starts_answers_and_stops(service_root: Path) -> None:
    require_redis_server()
    port = free_port_pair()
    service = RedisService(f"redis://127.0.0.1:{port}/0", service_root / "redis")

    def check() -> None:
        client = redis.Redis(port=port)
        client.set("velo", b"ok")
        assert client.get("velo") == b"ok"
        client.close()

    started_then_stopped(service, check)
    assert (service_root / "redis" / "redis.log").stat().st_size > 0


def test_postgres_starts_with_its_database_and_restarts(service_root: Path) -> None:
    require_postgres_binaries()
    port = free_port_pair()
    url = f"postgresql://postgres@127.0.0.1:{port}/velo_lifecycle"
    service = PostgresService(url, service_root / "postgres")

    def check() -> None:
        with psycopg.connect(url) as conn:
            assert conn.execute("select current_database()").fetchone() == ("velo_lifecycle",)
            conn.execute("create table kept (id int)")
            conn.execute("insert into kept values (1)")

    started_then_stopped(service, check)
    # Second start reuses the cluster (no initdb): the data is still there.
    try:
        assert service.up(START_TIMEOUT_S).state == "running"
        with psycopg.connect(url) as conn:
            assert conn.execute("select id from kept").fetchall() == [(1,)]
    finally:
        service.down(60)


def test_postgres_under_a_closed_directory_is_relocated_for_the_postgres_user(
    service_root: Path,
) -> None:
    require_postgres_binaries()
    if os.geteuid() != 0:
        pytest.skip("only root runs PostgreSQL as another user")
    closed = service_root / "closed"
    closed.mkdir(mode=0o700)
    port = free_port_pair()
    url = f"postgresql://postgres@127.0.0.1:{port}/velo"
    service = PostgresService(url, closed / "services" / "postgres")
    try:
        assert service.up(START_TIMEOUT_S).state == "running"
        assert service.root.is_symlink()
        assert service.root.resolve().parent == PG_RELOCATED_ROOT
        assert service.down(60).state == "stopped"
    finally:
        service.down(60)
        if service.root.is_symlink():
            shutil.rmtree(service.root.resolve(), ignore_errors=True)


def test_kafka_starts_auto_creates_four_partitions_and_stops(service_root: Path) -> None:
    libs = kafka_libs_dir()
    port = free_port_pair()
    bootstrap = f"127.0.0.1:{port}"
    service = KafkaService(bootstrap, service_root / "kafka", libs)

    def check() -> None:
        producer = Producer({"bootstrap.servers": bootstrap})
        producer.produce("velo.lifecycle", b"hello")
        assert producer.flush(30) == 0
        metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
        assert len(metadata.topics["velo.lifecycle"].partitions) == 4

    started_then_stopped(service, check)
    assert port_is_free(port + 1)  # the controller port too
    assert (service_root / "kafka" / "logs" / "server.log").stat().st_size > 0


# --- ports held by something else ---


def _services_on(port: int, root: Path) -> list[Service]:
    return [
        RedisService(f"redis://127.0.0.1:{port}/0", root / "redis"),
        PostgresService(f"postgresql://postgres@127.0.0.1:{port}/velo", root / "postgres"),
        KafkaService(f"127.0.0.1:{port}", root / "kafka", root / "kafka-libs"),
    ]


@pytest.mark.parametrize("kind", ["redis", "postgres", "kafka"])
def test_port_held_by_another_process_is_a_clear_error(
    kind: str, listening_socket: socket.socket, service_root: Path
) -> None:
    port = listening_socket.getsockname()[1]
    service = next(s for s in _services_on(port, service_root) if s.name == kind)
    with pytest.raises(ServiceError) as raised:
        service.up(10)
    message = str(raised.value)
    assert f"port {port} on 127.0.0.1 is already in use by pid {os.getpid()}" in message
    assert "python" in message and service.env_var in message
    assert service.status().state == "port in use"
    assert service.running_pid() is None
    assert not (service_root / kind).exists(), "nothing may be set up for a refused start"


def test_kafka_controller_port_held_is_a_clear_error(service_root: Path) -> None:
    port = free_port_pair()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port + 1))
        holder.listen()
        service = KafkaService(f"127.0.0.1:{port}", service_root / "kafka", service_root / "libs")
        with pytest.raises(ServiceError, match=f"port {port + 1} on 127.0.0.1 is already in use"):
            service.up(10)


def test_port_owner_names_the_listening_process(listening_socket: socket.socket) -> None:
    owner = port_owner(listening_socket.getsockname()[1])
    assert owner is not None and owner.startswith(f"pid {os.getpid()} (")


def test_working_server_of_the_right_kind_is_used_not_replaced(service_root: Path) -> None:
    require_redis_server()
    port = free_port_pair()
    ours = RedisService(f"redis://127.0.0.1:{port}/0", service_root / "first")
    try:
        ours.up(START_TIMEOUT_S)
        other = RedisService(f"redis://127.0.0.1:{port}/0", service_root / "second")
        assert other.status().state == "external"
        assert other.up(10).state == "external"
        assert other.down(10).state == "external"  # not ours to stop
        assert ours.status().state == "running"
    finally:
        ours.down(60)


def test_non_local_host_is_only_checked(service_root: Path) -> None:
    # 192.0.2.0/24 is TEST-NET-1: never routed, so nothing answers.
    service = RedisService("redis://192.0.2.1:6379/0", service_root / "redis")
    status = service.status()
    assert (status.state, status.healthy) == ("unmanaged", False)
    with pytest.raises(ServiceError, match="not on this machine"):
        service.up(5)
    assert not (service_root / "redis").exists()


def test_unknown_service_is_rejected() -> None:
    with pytest.raises(ServiceError, match=r"unknown service.*mysql.*postgres, kafka, redis"):
        build_services(["mysql"])
    assert velo(["services", "status", "mysql"]) == 2


# --- scripts/install-system-deps.sh: its decisions, with apt-get, dpkg-query and mvn faked ---

INSTALL_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "install-system-deps.sh"


def _fake_tools(bin_dir: Path, calls: Path, missing_package: str | None) -> None:
    """apt-get and mvn that log their arguments; dpkg-query that hides `missing_package`."""
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text(
        f'#!/bin/sh\necho "apt-get $*" >> {calls}\n'
        # The first install fails, as with stale package lists; later ones succeed.
        f'if [ "$1" = install ] && ! grep -q update {calls}; then exit 100; fi\n'
    )
    (bin_dir / "mvn").write_text(f'#!/bin/sh\necho "mvn $*" >> {calls}\nexit 1\n')
    hide = missing_package or "no-such-package"
    (bin_dir / "dpkg-query").write_text(
        f'#!/bin/sh\nfor last; do :; done\n[ "$last" = {hide} ] && exit 1\n'
        f'exec /usr/bin/dpkg-query "$@"\n'
    )
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)


def _run_install_script(bin_dir: Path, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "VELO_DATA_DIR": str(data_dir)}
    return subprocess.run(
        ["bash", str(INSTALL_SCRIPT)], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def data_dir_with_kafka_libs(tmp_path: Path) -> Path:
    """A data dir whose Kafka libs carry the current pom's stamp (so Maven is not needed)."""
    libs = tmp_path / "data" / "kafka" / "libs"
    libs.mkdir(parents=True)
    stamp = hashlib.sha256(KAFKA_POM.read_bytes()).hexdigest()
    (libs / KAFKA_LIBS_STAMP).write_text(stamp + "\n")
    return tmp_path / "data"


def test_install_script_does_nothing_when_all_is_there(
    tmp_path: Path, data_dir_with_kafka_libs: Path
) -> None:
    if not (PG_BIN_DIR / "postgres").is_file() or shutil.which("redis-server") is None:
        pytest.skip("this machine lacks the packages; the script would really install them")
    calls = tmp_path / "calls.log"
    _fake_tools(tmp_path / "bin", calls, missing_package=None)
    result = _run_install_script(tmp_path / "bin", data_dir_with_kafka_libs)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not calls.exists(), "neither apt-get nor Maven may run when all is installed"
    assert "system packages present" in result.stdout
    assert "Kafka jars present" in result.stdout


def test_install_script_installs_a_missing_package_updating_lists_when_needed(
    tmp_path: Path, data_dir_with_kafka_libs: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("the script would call sudo")
    calls = tmp_path / "calls.log"
    _fake_tools(tmp_path / "bin", calls, missing_package="redis-server")
    result = _run_install_script(tmp_path / "bin", data_dir_with_kafka_libs)
    assert result.returncode == 0, result.stdout + result.stderr
    install = "apt-get install -y -q --no-install-recommends redis-server"
    assert calls.read_text().splitlines() == [install, "apt-get update -q", install]


def test_install_script_reports_a_failed_jar_fetch(tmp_path: Path) -> None:
    calls = tmp_path / "calls.log"
    _fake_tools(tmp_path / "bin", calls, missing_package=None)
    result = _run_install_script(tmp_path / "bin", tmp_path / "data")
    if "installing" in result.stdout:
        pytest.skip("this machine lacks the packages; the script would really install them")
    assert result.returncode == 1
    assert "Maven could not fetch the Kafka jars" in result.stdout
    assert not (tmp_path / "data" / "kafka" / "libs").exists()
    assert [p.name for p in (tmp_path / "data" / "kafka").iterdir()] == ["mvn.log"]
