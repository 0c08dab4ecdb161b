"""The local stand-ins for Google Cloud, on loopback: the official Pub/Sub emulator and
bqemulator (a DuckDB-backed BigQuery REST/gRPC server) as the local BigQuery.

Used by tests (context managers on free ports) and by ``mds stack up|down|status`` / the
Makefile, which runs both as background daemons on fixed ports and records them in
``<repo>/.local-stack/``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

PUBSUB_EMULATOR_BIN = "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator"
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Block until host:port accepts connections; fail fast if the server process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with code {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout:.0f}s")


def _pubsub_command(port: int, data_dir: str) -> list[str]:
    binary = PUBSUB_EMULATOR_BIN if os.path.exists(PUBSUB_EMULATOR_BIN) else None
    if binary:
        return [binary, f"--host={LOOPBACK}", f"--port={port}", f"--data-dir={data_dir}"]
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        raise FileNotFoundError("the Pub/Sub emulator is not installed (gcloud component pubsub-emulator)")
    return [gcloud, "beta", "emulators", "pubsub", "start", f"--host-port={LOOPBACK}:{port}",
            f"--data-dir={data_dir}"]


class _LocalServer:
    """A server child process on loopback with its own temp data dir; a context manager.

    It leads its own process group, so stopping it also stops what it spawned.
    """

    _prefix = "server-"

    def __init__(self, port: int | None = None, log_path: str | None = None) -> None:
        self.port = port or free_port()
        self._data_dir = tempfile.mkdtemp(prefix=self._prefix)
        self._log_path = log_path or os.path.join(self._data_dir, "emulator.log")
        self.process: subprocess.Popen | None = None

    @property
    def data_dir(self) -> str:
        return self._data_dir

    def _spawn(self, command: list[str], timeout: float, **popen_args: Any) -> None:
        with open(self._log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True, **popen_args)
        wait_for_port(LOOPBACK, self.port, timeout, self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            _terminate_group(self.process)
        self.process = None
        shutil.rmtree(self._data_dir, ignore_errors=True)

    def start(self, timeout: float = 60.0) -> "_LocalServer":
        raise NotImplementedError

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class PubSubEmulator(_LocalServer):
    """The official Pub/Sub emulator as a child process on a loopback port.

    ``host`` is what ``PUBSUB_EMULATOR_HOST`` must be set to for clients to reach it.
    """

    _prefix = "pubsub-emulator-"

    def __init__(self, port: int | None = None, log_path: str | None = None) -> None:
        super().__init__(port, log_path)
        self.host = f"{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 60.0) -> "PubSubEmulator":
        self._spawn(_pubsub_command(self.port, self._data_dir), timeout)
        return self


def _terminate_group(process: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop a server and every child it spawned (the emulator's launcher forks a JVM)."""
    import signal

    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=grace)


@contextlib.contextmanager
def pubsub_env(host: str) -> Iterator[None]:
    """Point google-cloud-pubsub clients created inside the block at an emulator."""
    previous = os.environ.get("PUBSUB_EMULATOR_HOST")
    os.environ["PUBSUB_EMULATOR_HOST"] = host
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("PUBSUB_EMULATOR_HOST", None)
        else:
            os.environ["PUBSUB_EMULATOR_HOST"] = previous


def ensure_topic_and_subscription(project: str, topic: str, subscription: str | None = None) -> tuple[str, str | None]:
    """Create a topic (and a pull subscription on it) if missing; returns their full paths."""
    from google.api_core.exceptions import AlreadyExists
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    topic_path = publisher.topic_path(project, topic)
    with contextlib.suppress(AlreadyExists):
        publisher.create_topic(name=topic_path)
    subscription_path = None
    if subscription:
        subscriber = pubsub_v1.SubscriberClient()
        subscription_path = subscriber.subscription_path(project, subscription)
        with contextlib.suppress(AlreadyExists):
            subscriber.create_subscription(name=subscription_path, topic=topic_path,
                                           ack_deadline_seconds=60)
        subscriber.close()
    return topic_path, subscription_path


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# BigQuery: bqemulator, run from its own venv through pipelines/bqemulator_offline.py
# ---------------------------------------------------------------------------------------------

DEFAULT_PROJECT = "local-project"
DEFAULT_DATASET = "market_data"
DEFAULT_PUBSUB_PORT = 8085
DEFAULT_BIGQUERY_PORT = 9050
TICKS_TOPIC, TICKS_SUBSCRIPTION, CANDLES_TOPIC = "ticks", "ticks-sub", "candles"


def bqemulator_python() -> str:
    """The interpreter of the venv holding bqemulator (its pins clash with Beam's, hence its own
    venv): ``$MDS_BQEMULATOR_PYTHON`` or ``<repo>/.venv-bq/bin/python``."""
    return os.environ.get("MDS_BQEMULATOR_PYTHON", str(repo_root() / ".venv-bq" / "bin" / "python"))


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when ``url`` answers HTTP 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


class BigQueryEmulator(_LocalServer):
    """bqemulator as a child process on loopback ports (REST and gRPC), data in a temp dir.

    Reach it with ``transforms.bigquery.make_client(project, emulator.endpoint)``; a pipeline's
    writers with ``emulator.client_env()`` in their environment (REST for tables, views and
    insertAll; gRPC for the Storage Write API).
    """

    _prefix = "bqemulator-"

    def __init__(self, port: int | None = None, grpc_port: int | None = None,
                 project: str = DEFAULT_PROJECT, log_path: str | None = None) -> None:
        super().__init__(port, log_path)
        self.grpc_port = grpc_port or free_port()
        self.project = project

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def grpc_host(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"

    def client_env(self) -> dict[str, str]:
        """The variables that point BigQuery clients and the pipeline's writers at this server."""
        return bigquery_client_env(self.endpoint, self.grpc_host)

    def command(self) -> list[str]:
        return [bqemulator_python(), "-m", "pipelines.bqemulator_offline", "start",
                "--rest-host", LOOPBACK, "--rest-port", str(self.port),
                "--grpc-host", LOOPBACK, "--grpc-port", str(self.grpc_port),
                "--project", self.project, "--data-dir", os.path.join(self._data_dir, "db"),
                "--log-level", "warning"]

    def start(self, timeout: float = 60.0) -> "BigQueryEmulator":
        python = bqemulator_python()
        if not os.path.exists(python):
            raise FileNotFoundError(f"no bqemulator interpreter at {python}: create .venv-bq "
                                    "(pip install bqemulator==1.4.0 numpy) or set "
                                    "MDS_BQEMULATOR_PYTHON")
        # The launcher is imported from this checkout; DuckDB's extension downloads stay off.
        env = dict(os.environ, PYTHONPATH=str(repo_root()), BQEMU_ENABLE_FORMAT_EXTENSIONS="false")
        deadline = time.monotonic() + timeout
        self._spawn(self.command(), timeout, cwd=self._data_dir, env=env)
        while not http_ok(f"{self.endpoint}/readyz"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"bqemulator on port {self.port} did not become ready; "
                                   f"see {self._log_path}")
            time.sleep(0.1)
        wait_for_port(LOOPBACK, self.grpc_port, max(deadline - time.monotonic(), 1.0), self.process)
        return self


def bigquery_client_env(endpoint: str, grpc_host: str) -> dict[str, str]:
    """``BIGQUERY_EMULATOR_HOST`` (REST URL) and ``BIGQUERY_STORAGE_EMULATOR_HOST`` (gRPC
    host:port) for a local BigQuery server."""
    from transforms.storage_write import REST_EMULATOR_ENV, STORAGE_EMULATOR_ENV

    return {REST_EMULATOR_ENV: endpoint, STORAGE_EMULATOR_ENV: grpc_host}


# ---------------------------------------------------------------------------------------------
# mds stack up|down|status: both emulators as daemons on fixed ports
# ---------------------------------------------------------------------------------------------

STATE_FILE = "state.json"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_daemon(pid: int, grace: float = 10.0) -> None:
    """Stop a daemon started by ``stack up`` and its process group (it leads its own session)."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it when this process is its parent (tests)
            if not _pid_alive(pid):
                return
            time.sleep(0.1)


def _read_state(state_dir: Path) -> dict[str, Any]:
    path = state_dir / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else {}


# service -> (health URL path, what an unhealthy answer means)
_HEALTH_CHECKS = {"pubsub": ("/", "not answering"), "bigquery": ("/readyz", "not ready")}


def _health(state: dict[str, Any]) -> dict[str, str]:
    """service -> 'ok' or what is wrong, for every service recorded in ``state``."""
    checks = {}
    for service, (path, problem) in _HEALTH_CHECKS.items():
        if service not in state:
            continue
        pid, port = state[service]["pid"], state[service]["port"]
        if not _pid_alive(pid):
            checks[service] = f"process {pid} is gone"
        elif not http_ok(f"http://{LOOPBACK}:{port}{path}"):
            checks[service] = f"{problem} on port {port}"
        elif "grpc_port" in state[service] and not _port_open(state[service]["grpc_port"]):
            checks[service] = f"gRPC port {state[service]['grpc_port']} closed"
        else:
            checks[service] = "ok"
    return checks


def _port_open(port: int) -> bool:
    try:
        socket.create_connection((LOOPBACK, port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _provision(project: str, pubsub_host: str, bigquery_endpoint: str, dataset: str) -> None:
    """Topics, subscription, dataset, tables and views; every step is idempotent."""
    from transforms.bigquery import ensure_tables, ensure_views, make_client

    with pubsub_env(pubsub_host):
        ensure_topic_and_subscription(project, TICKS_TOPIC, TICKS_SUBSCRIPTION)
        ensure_topic_and_subscription(project, CANDLES_TOPIC)
    client = make_client(project, bigquery_endpoint)
    ensure_tables(client, f"{project}:{dataset}")
    ensure_views(client, f"{project}:{dataset}")
    client.close()


def stack_up(state_dir: Path, project: str, dataset: str, pubsub_port: int,
             bigquery_port: int, bigquery_grpc_port: int) -> dict[str, Any]:
    """Start whatever is not running yet, provision it, record it; returns the state."""
    state_dir.mkdir(parents=True, exist_ok=True)
    state = _read_state(state_dir)
    health = _health(state)
    if health.get("pubsub") != "ok":
        _forget(state, "pubsub")
        _check_port_free(pubsub_port, "Pub/Sub")
        pubsub = PubSubEmulator(port=pubsub_port, log_path=str(state_dir / "pubsub.log"))
        pubsub.start()
        state["pubsub"] = {"pid": pubsub.process.pid, "port": pubsub.port, "data_dir": pubsub.data_dir}
    if health.get("bigquery") != "ok":
        _forget(state, "bigquery")
        _check_port_free(bigquery_port, "BigQuery")
        _check_port_free(bigquery_grpc_port, "BigQuery gRPC")
        bigquery = BigQueryEmulator(port=bigquery_port, grpc_port=bigquery_grpc_port,
                                    project=project, log_path=str(state_dir / "bigquery.log"))
        bigquery.start()
        state["bigquery"] = {"pid": bigquery.process.pid, "port": bigquery.port,
                             "grpc_port": bigquery.grpc_port, "data_dir": bigquery.data_dir,
                             "endpoint": bigquery.endpoint}
    state["project"], state["dataset"] = project, dataset
    (state_dir / STATE_FILE).write_text(json.dumps(state, indent=2))
    _provision(project, f"{LOOPBACK}:{state['pubsub']['port']}", state["bigquery"]["endpoint"], dataset)
    return state


def _forget(state: dict[str, Any], service: str) -> None:
    """Stop a recorded daemon (if still there) and delete its data."""
    recorded = state.pop(service, None)
    if recorded is not None:
        _stop_daemon(recorded["pid"])
        shutil.rmtree(recorded["data_dir"], ignore_errors=True)


def _check_port_free(port: int, service: str) -> None:
    with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.5):
        raise RuntimeError(f"{service} port {port} is already taken by another process; "
                           "stop it or pick another port")


def stack_down(state_dir: Path) -> list[str]:
    """Stop the recorded daemons and delete their data; returns the services stopped."""
    state = _read_state(state_dir)
    stopped = []
    for service in ("pubsub", "bigquery"):
        if service in state:
            _forget(state, service)
            stopped.append(service)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    return stopped


def main(argv: list[str] | None = None) -> int:
    """``mds stack up|down|status``: the local emulators as background daemons."""
    parser = argparse.ArgumentParser(prog="mds stack", description=main.__doc__)
    parser.add_argument("action", choices=("up", "down", "status"))
    parser.add_argument("--project", default=os.environ.get("MDS_PROJECT", DEFAULT_PROJECT))
    parser.add_argument("--dataset", default=DEFAULT_DATASET)
    parser.add_argument("--pubsub_port", type=int, default=DEFAULT_PUBSUB_PORT)
    parser.add_argument("--bigquery_port", type=int, default=DEFAULT_BIGQUERY_PORT)
    parser.add_argument("--bigquery_grpc_port", type=int, default=None,
                        help="Default: the BigQuery port + 10.")
    parser.add_argument("--state_dir", type=Path, default=repo_root() / ".local-stack",
                        help="Where pids, ports and logs are recorded.")
    args = parser.parse_args(argv)
    if args.action == "up":
        state = stack_up(args.state_dir, args.project, args.dataset, args.pubsub_port,
                         args.bigquery_port, args.bigquery_grpc_port or args.bigquery_port + 10)
        print(f"Pub/Sub emulator : PUBSUB_EMULATOR_HOST={LOOPBACK}:{state['pubsub']['port']} "
              f"(topics {TICKS_TOPIC}, {CANDLES_TOPIC}; subscription {TICKS_SUBSCRIPTION})")
        print(f"BigQuery emulator: {state['bigquery']['endpoint']} "
              f"(dataset {args.project}:{args.dataset}); for the pipeline: " + " ".join(
                  f"{name}={value}" for name, value in bigquery_client_env(
                      state["bigquery"]["endpoint"], f"{LOOPBACK}:{state['bigquery']['grpc_port']}").items()))
        return 0
    if args.action == "down":
        stopped = stack_down(args.state_dir)
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        return 0
    state = _read_state(args.state_dir)
    if not state:
        print("local stack: not running")
        return 1
    health = _health(state)
    for service, verdict in health.items():
        print(f"{service:<9} port {state[service]['port']:<6} pid {state[service]['pid']:<8} {verdict}")
    return 0 if all(v == "ok" for v in health.values()) else 1
