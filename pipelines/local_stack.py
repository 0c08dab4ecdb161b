"""The local stand-ins for Google Cloud, on loopback: the official Pub/Sub emulator (and, in
``BigQueryEmulator``, a local BigQuery REST server).

Used by tests (context managers on free ports) and by ``mds stack up|down`` / the Makefile.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

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


class PubSubEmulator:
    """The official Pub/Sub emulator as a child process on a loopback port.

    ``host`` is what ``PUBSUB_EMULATOR_HOST`` must be set to for clients to reach it.
    """

    def __init__(self, port: int | None = None, log_path: str | None = None) -> None:
        self.port = port or free_port()
        self.host = f"{LOOPBACK}:{self.port}"
        self._data_dir = tempfile.mkdtemp(prefix="pubsub-emulator-")
        self._log_path = log_path or os.path.join(self._data_dir, "emulator.log")
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> "PubSubEmulator":
        log = open(self._log_path, "ab")
        self.process = subprocess.Popen(_pubsub_command(self.port, self._data_dir), stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_for_port(LOOPBACK, self.port, timeout, self.process)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            _terminate_group(self.process)
        self.process = None
        shutil.rmtree(self._data_dir, ignore_errors=True)

    def __enter__(self) -> "PubSubEmulator":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


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
