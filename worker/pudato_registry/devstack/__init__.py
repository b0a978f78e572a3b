"""A throwaway local stack: a single-node KRaft Kafka broker and a PostgreSQL cluster.

No Docker needed. The broker's jars come from Maven Central through Maven (the
``pom.xml`` beside this file); the resolved classpath is cached under
``~/.cache/pudato-registry`` so a second start runs no Maven at all.
PostgreSQL comes from the machine's own binaries; as root it runs as the
``postgres`` (or ``nobody``) user, because PostgreSQL refuses to run as root.

Both listen on free loopback ports. :meth:`DevStack.stop` stops both and
waits until their processes are gone, so no process and no port stay behind.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import glob
import hashlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pudato_registry import kafka, store

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
LOG4J = HERE / "log4j2.properties"
JDK_HINT = "install a JDK 17 (Debian: apt-get install openjdk-17-jdk-headless)"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pudato-registry"


class StackError(RuntimeError):
    """The stack cannot start: says what is missing or what failed."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _cluster_id() -> str:
    """A KRaft cluster id, as Kafka's own ``Uuid.randomUuid`` makes them.

    Never one that starts with ``-``: the storage tool would read it as an
    option and fail (one start in 64, before this).
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _require(binary: str, hint: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise StackError(f"`{binary}` not found: {hint}")
    return path


def kafka_classpath(*, offline_ok: bool = True) -> str:
    """Resolve the broker jars with Maven (once) and return the Java classpath."""
    pom_key = uuid.uuid5(uuid.NAMESPACE_URL, POM.read_text()).hex[:12]
    cached = CACHE / f"kafka-classpath-{pom_key}.txt"
    if offline_ok and cached.exists():
        classpath = cached.read_text().strip()
        if all(Path(jar).exists() for jar in classpath.split(os.pathsep)):
            return classpath
    mvn = _require("mvn", "install Maven (Debian: apt-get install maven)")
    _require("java", JDK_HINT)
    CACHE.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [mvn, "-B", "-q", "-f", str(POM), "dependency:build-classpath",
         f"-Dmdep.outputFile={cached}"],
        capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        raise StackError(f"Maven could not resolve the Kafka jars:\n{result.stdout}{result.stderr}")
    return cached.read_text().strip()


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(Path(p).parts[4]))
    if candidates:
        return candidates[-1]
    raise StackError(
        f"PostgreSQL's `{name}` not found: install the server (Debian: apt-get install postgresql)"
    )


def _service_user() -> pwd.struct_passwd | None:
    """The user PostgreSQL runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise StackError("running as root and no `postgres` or `nobody` user to run PostgreSQL as")


def _wait_gone(pid: int, timeout: float) -> None:
    """Wait until process ``pid`` has exited (a zombie counts as exited)."""
    deadline = time.monotonic() + timeout
    stat = Path(f"/proc/{pid}/stat")
    while time.monotonic() < deadline:
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.02)
    raise StackError(f"process {pid} did not exit within {timeout:.0f}s")


@dataclass
class DevStack:
    """One local Kafka broker and one PostgreSQL cluster, started and stopped together.

    One stack per directory: :meth:`start` takes ``root/lock`` (released when the
    process ends, however it ends) and refuses a directory another stack holds.
    With ``keep`` the data and ports outlive a stop; without, both are new each time.
    """

    root: Path
    kafka_port: int = 0
    postgres_port: int = 0
    kafka_heap: str = "1g"
    keep: bool = False
    _kafka: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _lock: int | None = field(default=None, repr=False)
    _controller_port: int = field(default=0, repr=False)
    _jvm: list[str] = field(default_factory=list, repr=False)
    _pgdata: Path | None = field(default=None, repr=False)
    _pg_started: bool = field(default=False, repr=False)

    @property
    def bootstrap_servers(self) -> str:
        """The broker's address."""
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def database_url(self) -> str:
        """The URL of the stack's ``pudato`` database."""
        return f"postgresql://pudato@127.0.0.1:{self.postgres_port}/pudato"

    def env(self) -> dict[str, str]:
        """The ``PUDATO_*`` settings that point at this stack."""
        return {
            "PUDATO_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "PUDATO_DATABASE_URL": self.database_url,
        }

    def start(self, timeout: float = 90.0) -> DevStack:
        """Start both services and wait until both accept connections."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._take_directory()
        classpath = kafka_classpath()
        deadline = time.monotonic() + timeout
        try:
            if self.keep:
                self._reuse_ports()
            self._start_kafka(classpath)
            self._start_postgres()
            kafka.wait_for_broker(self.bootstrap_servers, deadline - time.monotonic())
        except BaseException:
            self.stop()
            raise
        (self.root / "env").write_text(
            "".join(f"export {k}={v}\n" for k, v in self.env().items())
        )
        if self.keep:
            (self.root / "ports.json").write_text(json.dumps({
                "kafka": self.kafka_port, "controller": self._controller_port,
                "postgres": self.postgres_port}))
        return self

    def _take_directory(self) -> None:
        """Hold ``root/lock`` until this process ends; refuse if another stack holds it."""
        if self._lock is not None:
            return
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StackError(
                f"a stack already runs in {self.root} ({holder}); stop it (Ctrl-C where it "
                "runs) or give this one another --dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
        self._lock = fd

    def _release_directory(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # releases the flock
            self._lock = None

    def _reuse_ports(self) -> None:
        """With ``keep``: the ports of the last run, where they are still free."""
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            ports = json.loads((self.root / "ports.json").read_text())
            for name, attribute in (("kafka", "kafka_port"), ("postgres", "postgres_port"),
                                    ("controller", "_controller_port")):
                if not getattr(self, attribute) and not port_open(int(ports[name])):
                    setattr(self, attribute, int(ports[name]))

    @property
    def kafka_data(self) -> Path:
        """The broker's log directory."""
        return self.root / "kafka-data"

    @property
    def postgres_data(self) -> Path:
        """PostgreSQL's data directory (where the server's user can reach it)."""
        if self._pgdata is not None:
            return self._pgdata
        if self.keep:
            if _service_user() is None:
                return self.root / "postgres-data"
            # As root the server runs as another user, who may not reach root's
            # directories: a fixed place in /tmp, named after the stack's directory.
            digest = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:12]
            return Path(tempfile.gettempdir()) / f"pudato-pg-keep-{digest}"
        return Path(tempfile.gettempdir()) / "pudato-pg-*"

    def describe(self) -> str:
        """Where the data lives, and whether it outlives a stop (for `dev up`)."""
        where = f"Kafka in {self.kafka_data}, PostgreSQL in {self.postgres_data}"
        if self.keep:
            return f"data: {where}; kept when it stops (started again with --keep, it is all there)"
        return f"data: {where}; removed when it stops (--keep keeps it)"

    def _start_kafka(self, classpath: str) -> None:
        """Configure and format a fresh single-node KRaft cluster, then start it."""
        self.kafka_port = self.kafka_port or free_port()
        self._controller_port = controller_port = self._controller_port or free_port()
        logs = self.root / "kafka-logs"
        data = self.kafka_data
        formatted = self.keep and (data / "meta.properties").exists()
        if not formatted:
            shutil.rmtree(data, ignore_errors=True)
        logs.mkdir(parents=True, exist_ok=True)
        props = self.root / "server.properties"
        props.write_text(
            "\n".join([
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
                f"listeners=PLAINTEXT://127.0.0.1:{self.kafka_port},"
                f"CONTROLLER://127.0.0.1:{controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.kafka_port}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                "inter.broker.listener.name=PLAINTEXT",
                f"log.dirs={data}",
                "num.partitions=1",
                "auto.create.topics.enable=false",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=4",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "message.max.bytes=8388608",
                "",
            ])
        )
        self._jvm = [
            _require("java", JDK_HINT), f"-Xmx{self.kafka_heap}", "-Xms256m", "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={logs}", f"-Dlog4j2.configurationFile={LOG4J}",
            "-cp", classpath,
        ]
        if not formatted:
            fmt = subprocess.run(
                [*self._jvm, "kafka.tools.StorageTool", "format", "-t", _cluster_id(), "-c",
                 str(props)], capture_output=True, text=True, check=False,
            )
            if fmt.returncode != 0:
                raise StackError(f"formatting Kafka storage failed:\n{fmt.stdout}{fmt.stderr}")
        self.start_kafka()

    def start_kafka(self, timeout: float | None = None) -> None:
        """Start the (configured) broker; with ``timeout``, wait until it answers."""
        out = (self.root / "kafka-logs" / "stdout.log").open("ab")
        self._kafka = subprocess.Popen(
            [*self._jvm, "kafka.Kafka", str(self.root / "server.properties")],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
        out.close()
        (self.root / "kafka.pid").write_text(str(self._kafka.pid))
        if timeout is not None:
            kafka.wait_for_broker(self.bootstrap_servers, timeout)

    def _start_postgres(self) -> None:
        initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        user = _service_user()
        self.postgres_port = self.postgres_port or free_port()
        if self.keep:
            self._pgdata = self.postgres_data
            self._pgdata.mkdir(mode=0o700, exist_ok=True)
        else:
            # The data directory lives in /tmp so that a service user can reach it
            # whatever the permissions of the stack directory's ancestors.
            self._pgdata = Path(tempfile.mkdtemp(prefix="pudato-pg-"))
        (self.root / "pgdata").write_text(str(self._pgdata))
        if user is not None:
            os.chown(self._pgdata, user.pw_uid, user.pw_gid)
        run_as: dict[str, int] = {} if user is None else {"user": user.pw_uid,
                                                           "group": user.pw_gid}
        if not (self._pgdata / "PG_VERSION").exists():
            init = subprocess.run(
                [initdb, "-D", str(self._pgdata), "-U", "pudato", "--auth=trust",
                 "--encoding=UTF8", "--locale=C", "--no-sync"],
                capture_output=True, text=True, check=False, cwd="/", **run_as,  # type: ignore[call-overload]
            )
            if init.returncode != 0:
                raise StackError(f"initdb failed:\n{init.stdout}{init.stderr}")
        started = subprocess.run(
            [pg_ctl, "-D", str(self._pgdata), "-l", str(self._pgdata / "server.log"),
             "-o", self._pg_options(), "-w", "-t", "60", "start"],
            capture_output=True, text=True, check=False, cwd="/", **run_as,  # type: ignore[call-overload]
        )
        if started.returncode != 0:
            log = (self._pgdata / "server.log")
            detail = log.read_text() if log.exists() else ""
            raise StackError(f"PostgreSQL did not start:\n{started.stdout}{started.stderr}{detail}")
        self._pg_started = True
        store.create_database(
            f"postgresql://pudato@127.0.0.1:{self.postgres_port}/postgres", "pudato"
        )

    def restart_postgres(self) -> None:
        """Stop PostgreSQL (fast mode, dropping connections) and start it again on its port."""
        self.stop_postgres()
        self.start_postgres()

    def stop_postgres(self) -> None:
        """Stop PostgreSQL (fast mode: connections are dropped); its data stays."""
        self._pg_ctl("stop", "-m", "fast")

    def start_postgres(self) -> None:
        """Start PostgreSQL again on its port, after :meth:`stop_postgres`."""
        self._pg_ctl("start", "-o", self._pg_options())

    def _pg_options(self) -> str:
        return (f"-p {self.postgres_port} -c listen_addresses=127.0.0.1 "
                f"-c unix_socket_directories={self._pgdata} -c max_connections=200")

    def _postmaster_pid(self) -> int | None:
        assert self._pgdata is not None
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self._pgdata / "postmaster.pid").read_text().split()[0])
        return None

    def _pg_ctl(self, *args: str) -> None:
        assert self._pgdata is not None
        user = _service_user()
        run_as: dict[str, int] = {} if user is None else {"user": user.pw_uid,
                                                           "group": user.pw_gid}
        subprocess.run(
            [_pg_bin("pg_ctl"), "-D", str(self._pgdata), "-l", str(self._pgdata / "server.log"),
             "-w", "-t", "60", *args],
            capture_output=True, check=True, cwd="/", **run_as,  # type: ignore[call-overload]
        )

    def stop_kafka(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after 30 s) and wait until it is gone."""
        if self._kafka is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._kafka.pid, signal.SIGTERM)
        try:
            self._kafka.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._kafka.pid, signal.SIGKILL)
            self._kafka.wait()
        self._kafka = None

    def stop(self) -> None:
        """Stop both services, leave no process behind; remove the data unless ``keep``."""
        try:
            self._stop()
        finally:
            self._release_directory()

    def _stop(self) -> None:
        self.stop_kafka()
        if self._pgdata is not None:
            if self._pg_started:
                pid = self._postmaster_pid()
                with contextlib.suppress(subprocess.CalledProcessError):
                    self._pg_ctl("stop", "-m", "fast")
                # pg_ctl returns once postmaster.pid is gone, a moment before
                # the process itself has exited.
                if pid is not None:
                    _wait_gone(pid, timeout=30)
                self._pg_started = False
            if not self.keep:
                shutil.rmtree(self._pgdata, ignore_errors=True)
            self._pgdata = None


@contextlib.contextmanager
def running(root: Path | None = None) -> Iterator[DevStack]:
    """Start a stack in ``root`` (a new temporary directory if None); stop it on exit."""
    with contextlib.ExitStack() as exits:
        if root is None:
            root = Path(exits.enter_context(tempfile.TemporaryDirectory(prefix="pudato-stack-")))
        stack = DevStack(root).start()
        exits.callback(stack.stop)
        yield stack
