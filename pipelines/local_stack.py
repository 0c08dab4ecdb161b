"""``mds stack up|down|status``: the local emulators as background daemons on fixed ports,
provisioned with the local names and recorded in ``<repo>/.local-stack/`` (what the Makefile and
docker-compose users reach)."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from pipelines.emulators import (LOOPBACK, BigQueryEmulator, PubSubEmulator, bigquery_client_env,
                                 ensure_topic_and_subscription, http_ok, pubsub_env, repo_root)
from pipelines.local_names import (CANDLES_TOPIC, DEFAULT_BIGQUERY_PORT, DEFAULT_DATASET,
                                   DEFAULT_PUBSUB_PORT, LOCAL_PROJECT, TICKS_SUBSCRIPTION,
                                   TICKS_TOPIC)

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("up", "down", "status"))
    parser.add_argument("--project", default=os.environ.get("MDS_PROJECT", LOCAL_PROJECT))
    parser.add_argument("--dataset", default=DEFAULT_DATASET)
    parser.add_argument("--pubsub-port", type=int, default=DEFAULT_PUBSUB_PORT)
    parser.add_argument("--bigquery-port", type=int, default=DEFAULT_BIGQUERY_PORT)
    parser.add_argument("--bigquery-grpc-port", type=int, default=None,
                        help="Default: the BigQuery port + 10.")
    parser.add_argument("--state-dir", type=Path, default=repo_root() / ".local-stack",
                        help="Where pids, ports and logs are recorded.")


def run_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
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
