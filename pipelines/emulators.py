"""The local stand-ins for Google Cloud, on loopback: the official Pub/Sub emulator and
bqemulator (a DuckDB-backed BigQuery REST/gRPC server) as the local BigQuery.

Tests use them as context managers on free ports; ``mds stack`` (``pipelines/local_stack.py``)
runs both as background daemons on fixed ports.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

from pipelines.local_names import LOCAL_PROJECT

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
            terminate_group(self.process)
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


def terminate_group(process: subprocess.Popen, grace: float = 10.0) -> None:
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
                 project: str = LOCAL_PROJECT, log_path: str | None = None) -> None:
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
