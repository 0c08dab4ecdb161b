"""The deploy script run for real (not --dry-run) on a new, locked-down project: against stub CLIs
that answer like gcloud/bq, and against the REAL installed gcloud talking to a loopback fake of
the Google APIs (tests/cloud_fakes.py). Every emitted gcloud command is parsed, validated and
turned into an API request by the real gcloud; nothing leaves the machine.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import pytest

from tests.cloud_fakes import Call, FakeGoogleApis, Request, StubCli, real_gcloud_env
from transforms.bigquery import VIEW_NAMES

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "deploy" / "deploy-streaming-service.sh"
GUARD_JS = REPO / "deploy" / "pubsub" / "event-time-guard.js"
PROJECT = "quant-research-prod"
WORKER = f"serviceAccount:mds-dataflow@{PROJECT}.iam.gserviceaccount.com"
INGEST = f"serviceAccount:mds-ingest@{PROJECT}.iam.gserviceaccount.com"
BUILD = f"serviceAccount:mds-build@{PROJECT}.iam.gserviceaccount.com"
TARDIS_KEY = "TD.secret-key-Ωü-value"
PYTHON_ENV = {"PYTHON": sys.executable}


@pytest.fixture
def stub(tmp_path: Path) -> StubCli:
    return StubCli(tmp_path)


def find(calls: list[Call], *prefix: str) -> list[list[str]]:
    return [c.argv for c in calls if c.argv[:len(prefix)] == list(prefix)]


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def index_of(calls: list[Call], *prefix: str) -> int:
    return next(i for i, c in enumerate(calls) if c.argv[:len(prefix)] == list(prefix))


# ---------------------------------------------------------------------------------------------
# A whole deploy on a new project, through the stub CLIs
# ---------------------------------------------------------------------------------------------

EXPECTED_BINDINGS = {
    # (how the role is bound, resource, member, role)
    ("projects", PROJECT, WORKER, "roles/dataflow.worker"),
    ("projects", PROJECT, WORKER, "roles/bigquery.dataEditor"),
    ("projects", PROJECT, WORKER, "roles/bigquery.jobUser"),
    ("projects", PROJECT, WORKER, f"projects/{PROJECT}/roles/mdsDataflowPubsubTracking"),
    ("pubsub subscriptions", "mds-ticks-dataflow-both", WORKER, "roles/pubsub.subscriber"),
    ("pubsub subscriptions", "mds-ticks-dataflow-both", WORKER, "roles/pubsub.viewer"),
    ("pubsub topics", "mds-ticks", WORKER, "roles/pubsub.subscriber"),
    ("pubsub topics", "mds-candles", WORKER, "roles/pubsub.publisher"),
    ("storage buckets", f"gs://{PROJECT}-mds", WORKER, "roles/storage.objectAdmin"),
    ("artifacts repositories", "mds", WORKER, "roles/artifactregistry.reader"),
    ("pubsub topics", "mds-ticks", INGEST, "roles/pubsub.publisher"),
    ("secrets", "tardis-api-key", INGEST, "roles/secretmanager.secretAccessor"),
    ("artifacts repositories", "mds", BUILD, "roles/artifactregistry.writer"),
    ("storage buckets", f"gs://{PROJECT}-mds", BUILD, "roles/storage.objectViewer"),
    ("projects", PROJECT, BUILD, "roles/logging.logWriter"),
}


def bindings(calls: list[Call]) -> set[tuple[str, str, str, str]]:
    found = set()
    for argv in (c.argv for c in calls if "add-iam-policy-binding" in c.argv):
        verb = argv.index("add-iam-policy-binding")
        found.add((" ".join(argv[1:verb]), argv[verb + 1], flag(argv, "--member"), flag(argv, "--role")))
    return found


def test_deploy_on_a_new_project_creates_accounts_roles_secret_and_guard(stub: StubCli) -> None:
    result = stub.run(SCRIPT, "--project", PROJECT, "--mode", "both", "--tardis-secret", "tardis-api-key",
                      "--tag", "v1", env={**PYTHON_ENV, "TARDIS_API_KEY": TARDIS_KEY})
    assert result.returncode == 0, result.stderr
    calls = stub.calls()

    created = {c.argv[4] for c in calls if c.argv[:4] == ["gcloud", "iam", "service-accounts", "create"]}
    assert created == {"mds-dataflow", "mds-ingest", "mds-build"}
    role = find(calls, "gcloud", "iam", "roles", "create")[0]
    assert role[4] == "mdsDataflowPubsubTracking"
    assert set(flag(role, "--permissions").split(",")) == {
        "pubsub.subscriptions.create", "pubsub.subscriptions.get", "pubsub.subscriptions.consume",
        "pubsub.subscriptions.delete"}
    assert bindings(calls) == EXPECTED_BINDINGS
    project_bindings = find(calls, "gcloud", "projects", "add-iam-policy-binding")
    assert all(flag(b, "--condition") == "None" for b in project_bindings), "non-interactive on conditional policies"
    last_account = max(i for i, c in enumerate(calls) if c.argv[2:4] == ["service-accounts", "create"])
    first_binding = min(i for i, c in enumerate(calls) if "add-iam-policy-binding" in c.argv)
    assert last_account < first_binding

    # The secret exists (created from the environment, on stdin) before the job references it.
    secret = next(c for c in calls if c.argv[:3] == ["gcloud", "secrets", "create"])
    assert secret.stdin == TARDIS_KEY and "--data-file=-" in secret.argv
    assert index_of(calls, "gcloud", "secrets", "create") < index_of(calls, "gcloud", "run", "jobs", "deploy")
    job = find(calls, "gcloud", "run", "jobs", "deploy")[0]
    assert flag(job, "--set-secrets") == "TARDIS_API_KEY=tardis-api-key:latest"
    assert flag(job, "--service-account") == INGEST.split(":", 1)[1]
    everything = result.stdout + result.stderr + json.dumps([c.argv for c in calls])
    assert TARDIS_KEY not in everything, "the key must never be on a command line or in the output"

    # The Dataflow subscription carries the event-time guard, generated from the .js file.
    subscription = find(calls, "gcloud", "pubsub", "subscriptions", "create")[0]
    transforms = json.loads(Path(flag(subscription, "--message-transforms-file")).read_text())
    assert transforms == [{"javascriptUdf": {"functionName": "guardEventTime", "code": GUARD_JS.read_text()}}]
    # ... and so does the ticks topic: every subscription of it, Dataflow's watermark-tracking
    # one included, sees a guarded ts. The candles topic carries no ts to guard.
    topics = {c[4]: c for c in find(calls, "gcloud", "pubsub", "topics", "create")}
    assert json.loads(Path(flag(topics["mds-ticks"], "--message-transforms-file")).read_text()) == transforms
    assert "--message-transforms-file" not in topics["mds-candles"]

    launch = find(calls, "gcloud", "dataflow", "flex-template", "run")[0]
    assert flag(launch, "--service-account-email") == WORKER.split(":", 1)[1]
    build = find(calls, "gcloud", "builds", "submit")[0]
    assert flag(build, "--service-account") == f"projects/{PROJECT}/serviceAccounts/{BUILD.split(':', 1)[1]}"
    assert flag(build, "--gcs-source-staging-dir").startswith(f"gs://{PROJECT}-mds/")


def test_ticks_mode_grants_no_publisher_on_the_candles_topic(stub: StubCli) -> None:
    result = stub.run(SCRIPT, "iam", "--project", PROJECT, "--mode", "ticks", env=PYTHON_ENV)
    assert result.returncode == 0, result.stderr
    granted = bindings(stub.calls())
    assert not any(resource == "mds-candles" for _, resource, _, _ in granted)
    assert ("pubsub subscriptions", "mds-ticks-dataflow-ticks", WORKER, "roles/pubsub.subscriber") in granted


def test_existing_accounts_and_role_are_not_recreated_and_foreign_accounts_must_exist(stub: StubCli) -> None:
    stub.answer("gcloud", "iam", "service-accounts", "describe", stdout="email: x\n")
    stub.answer("gcloud", "iam", "roles", "describe", stdout="name: x\n")
    result = stub.run(SCRIPT, "iam", "--project", PROJECT, env=PYTHON_ENV)
    assert result.returncode == 0, result.stderr
    assert not find(stub.calls(), "gcloud", "iam", "service-accounts", "create")
    assert not find(stub.calls(), "gcloud", "iam", "roles", "create")


def test_a_service_account_of_another_project_that_does_not_exist_stops_the_deploy(stub: StubCli) -> None:
    result = stub.run(SCRIPT, "iam", "--project", PROJECT,
                      "--service-account", "runner@other-project.iam.gserviceaccount.com", env=PYTHON_ENV)
    assert result.returncode == 2
    assert "runner@other-project.iam.gserviceaccount.com is not in quant-research-prod" in result.stderr
    assert not find(stub.calls(), "gcloud", "projects", "add-iam-policy-binding")


def test_bindings_are_retried_until_iam_sees_a_new_account(stub: StubCli) -> None:
    stub.answer("gcloud", "projects", "add-iam-policy-binding", exit=1, times=2,
                stderr="ERROR: Policy modification failed. For a binding with condition, run \"gcloud alpha "
                       "iam policies lint-condition\" to identify issues in condition.\nERROR: (gcloud.projects."
                       "add-iam-policy-binding) INVALID_ARGUMENT: Service account mds-dataflow@quant-research-prod"
                       ".iam.gserviceaccount.com does not exist.\n")
    result = stub.run(SCRIPT, "iam", "--project", PROJECT, env=PYTHON_ENV)
    assert result.returncode == 0, result.stderr
    first = [c for c in find(stub.calls(), "gcloud", "projects", "add-iam-policy-binding")
             if flag(c, "--role") == "roles/dataflow.worker"]
    assert len(first) == 3 and "retrying" in result.stderr


def test_a_binding_that_keeps_failing_stops_the_deploy(stub: StubCli) -> None:
    stub.answer("gcloud", "pubsub", "topics", "add-iam-policy-binding", exit=1,
                stderr="ERROR: (gcloud.pubsub.topics.add-iam-policy-binding) NOT_FOUND: Resource not found\n")
    result = stub.run(SCRIPT, "iam", "--project", PROJECT, env=PYTHON_ENV)
    assert result.returncode != 0
    assert len(find(stub.calls(), "gcloud", "pubsub", "topics", "add-iam-policy-binding")) == 5


# ---------------------------------------------------------------------------------------------
# The Tardis API key secret
# ---------------------------------------------------------------------------------------------

TARDIS_INGEST = ("ingest", "--project", PROJECT, "--source", "tardis", "--tardis-secret", "tardis-api-key",
                 "--from", "2024-03-01", "--to", "2024-03-02")


def test_missing_secret_without_a_key_fails_before_the_job_references_it(stub: StubCli) -> None:
    result = stub.run(SCRIPT, *TARDIS_INGEST, env=PYTHON_ENV)
    assert result.returncode == 2
    assert "secret tardis-api-key does not exist in quant-research-prod" in result.stderr
    assert "TARDIS_API_KEY" in result.stderr
    assert not find(stub.calls(), "gcloud", "run")


def test_an_existing_secret_is_checked_not_overwritten(stub: StubCli) -> None:
    stub.answer("gcloud", "secrets", "describe", stdout="name: projects/1/secrets/tardis-api-key\n")
    stub.answer("gcloud", "secrets", "versions", "describe", "latest", stdout="ENABLED\n")
    result = stub.run(SCRIPT, *TARDIS_INGEST, env={**PYTHON_ENV, "TARDIS_API_KEY": TARDIS_KEY})
    assert result.returncode == 0, result.stderr
    calls = stub.calls()
    assert not find(calls, "gcloud", "secrets", "create")
    grant = find(calls, "gcloud", "secrets", "add-iam-policy-binding")[0]
    assert flag(grant, "--role") == "roles/secretmanager.secretAccessor" and flag(grant, "--member") == INGEST
    assert index_of(calls, "gcloud", "secrets", "add-iam-policy-binding") < index_of(calls, "gcloud", "run")


@pytest.mark.parametrize("state", ["DISABLED", "DESTROYED", ""])
def test_a_secret_without_an_enabled_latest_version_is_refused(stub: StubCli, state: str) -> None:
    stub.answer("gcloud", "secrets", "describe", stdout="name: projects/1/secrets/tardis-api-key\n")
    stub.answer("gcloud", "secrets", "versions", "describe", stdout=f"{state}\n" if state else "",
                exit=0 if state else 1)
    result = stub.run(SCRIPT, *TARDIS_INGEST, env=PYTHON_ENV)
    assert result.returncode == 2
    assert "has no enabled latest version" in result.stderr
    assert not find(stub.calls(), "gcloud", "run")


# ---------------------------------------------------------------------------------------------
# infra without the project venv, --use-docker without docker credentials
# ---------------------------------------------------------------------------------------------

def _repo_without_venv(root: Path) -> Path:
    """This checkout's code, but no .venv: a fresh clone before `make venv`."""
    copy = root / "clone"
    (copy / "deploy").mkdir(parents=True)
    shutil.copy2(SCRIPT, copy / "deploy" / SCRIPT.name)
    shutil.copytree(REPO / "deploy" / "pubsub", copy / "deploy" / "pubsub")
    for name in ("pipelines", "transforms", "ingest", "templates", "setup.py"):
        (copy / name).symlink_to(REPO / name)
    return copy / "deploy" / SCRIPT.name


def _python_without_the_project(bin_dir: Path) -> None:
    """A `python3` on PATH that is a real interpreter but has no site-packages (no numpy, Beam)."""
    base = getattr(sys, "_base_executable", sys.executable)
    wrapper = bin_dir / "python3"
    wrapper.write_text(f"#!/bin/sh\nexec {shlex.quote(base)} -S \"$@\"\n")
    wrapper.chmod(0o755)


def test_infra_fails_loudly_without_the_project_venv(stub: StubCli, tmp_path: Path) -> None:
    _python_without_the_project(stub.bin)
    script = _repo_without_venv(tmp_path)
    result = stub.run(script, "infra", "--project", PROJECT)
    assert result.returncode == 2, result.stderr
    assert "no project venv" in result.stderr and "make venv" in result.stderr
    assert not find(stub.calls(), "bq")


def test_infra_fails_loudly_with_an_interpreter_that_lacks_the_project(stub: StubCli, tmp_path: Path) -> None:
    _python_without_the_project(stub.bin)
    result = stub.run(SCRIPT, "infra", "--project", PROJECT, env={"PYTHON": str(stub.bin / "python3")})
    assert result.returncode == 2
    assert "cannot import the pipeline package" in result.stderr
    assert not find(stub.calls(), "bq")


def test_infra_creates_tables_and_views_from_the_venv(stub: StubCli) -> None:
    result = stub.run(SCRIPT, "infra", "--project", PROJECT, env=PYTHON_ENV)
    assert result.returncode == 0, result.stderr
    calls = stub.calls()
    assert len([c for c in find(calls, "bq", "--project_id", PROJECT, "mk") if "--table" in c]) == 3
    assert len(find(calls, "bq", "--project_id", PROJECT, "--location", "us-central1", "query")) == len(VIEW_NAMES)


def test_an_existing_subscription_gets_the_current_guard(stub: StubCli) -> None:
    stub.answer("gcloud", "pubsub", "subscriptions", "describe", stdout="name: x\n")
    result = stub.run(SCRIPT, "infra", "--project", PROJECT, env=PYTHON_ENV)
    assert result.returncode == 0, result.stderr
    calls = stub.calls()
    assert not find(calls, "gcloud", "pubsub", "subscriptions", "create")
    update = find(calls, "gcloud", "pubsub", "subscriptions", "update")[0]
    assert update[4] == "mds-ticks-dataflow-candles"
    transforms = json.loads(Path(flag(update, "--message-transforms-file")).read_text())
    assert transforms[0]["javascriptUdf"]["code"] == GUARD_JS.read_text()


def test_an_existing_ticks_topic_gets_the_current_guard(stub: StubCli) -> None:
    stub.answer("gcloud", "pubsub", "topics", "describe", stdout="name: x\n")
    result = stub.run(SCRIPT, "infra", "--project", PROJECT, env=PYTHON_ENV)
    assert result.returncode == 0, result.stderr
    calls = stub.calls()
    assert not find(calls, "gcloud", "pubsub", "topics", "create")
    [update] = find(calls, "gcloud", "pubsub", "topics", "update")
    assert update[4] == "mds-ticks"
    transforms = json.loads(Path(flag(update, "--message-transforms-file")).read_text())
    assert transforms[0]["javascriptUdf"]["code"] == GUARD_JS.read_text()


def test_use_docker_needs_the_registry_credential_helper(stub: StubCli) -> None:
    result = stub.run(SCRIPT, "image", "--project", PROJECT, "--use-docker", env=PYTHON_ENV)
    assert result.returncode == 2
    assert "gcloud auth configure-docker us-central1-docker.pkg.dev" in result.stderr
    assert not find(stub.calls(), "docker")
    (stub.state / ".docker").mkdir()
    (stub.state / ".docker" / "config.json").write_text(
        json.dumps({"credHelpers": {"us-central1-docker.pkg.dev": "gcloud"}}))
    result = stub.run(SCRIPT, "image", "--project", PROJECT, "--use-docker", env=PYTHON_ENV)
    assert result.returncode == 0, result.stderr
    assert find(stub.calls(), "docker", "push")


# ---------------------------------------------------------------------------------------------
# drain / cancel: Dataflow must have taken the request
# ---------------------------------------------------------------------------------------------

JOB_ID = "2026-11-29_01_02_03-1234567890"


@pytest.mark.parametrize("step, requested, stopping", [("drain", "JOB_STATE_DRAINED", "JOB_STATE_DRAINING"),
                                                       ("cancel", "JOB_STATE_CANCELLED", "JOB_STATE_CANCELLING")])
def test_stop_succeeds_when_the_job_is_stopping(stub: StubCli, step: str, requested: str, stopping: str) -> None:
    stub.answer("gcloud", "dataflow", "jobs", "list", stdout=f"{JOB_ID}\n")
    stub.answer("gcloud", "dataflow", "jobs", "describe", stdout=f"{stopping}\t{requested}\n")
    result = stub.run(SCRIPT, step, "--project", PROJECT)
    assert result.returncode == 0, result.stderr
    assert find(stub.calls(), "gcloud", "dataflow", "jobs", step)[0][4] == JOB_ID
    assert stopping in result.stderr


@pytest.mark.parametrize("step", ["drain", "cancel"])
def test_stop_fails_when_dataflow_did_not_take_it(stub: StubCli, step: str) -> None:
    """gcloud prints the failure and exits 0 (seen with the real gcloud in the test below)."""
    stub.answer("gcloud", "dataflow", "jobs", "list", stdout=f"{JOB_ID}\n")
    stub.answer("gcloud", "dataflow", "jobs", step, exit=0,
                stderr=f"Failed to {step} job [{JOB_ID}]: (a1b2c3): Could not {step} workflow; user does not "
                       f"have sufficient permissions on project: {PROJECT}\n")
    stub.answer("gcloud", "dataflow", "jobs", "describe", stdout="JOB_STATE_RUNNING\t\n")
    result = stub.run(SCRIPT, step, "--project", PROJECT)
    assert result.returncode == 2
    assert "Dataflow did not take the request" in result.stderr and "JOB_STATE_RUNNING" in result.stderr
    assert len(find(stub.calls(), "gcloud", "dataflow", "jobs", "describe")) == 3


# ---------------------------------------------------------------------------------------------
# The REAL gcloud against the loopback fake of the Google APIs
# ---------------------------------------------------------------------------------------------

def _script_env(tmp_path: Path, fake: FakeGoogleApis) -> dict[str, str]:
    gcloud_dir = str(Path(shutil.which("gcloud") or "/usr/bin/gcloud").parent)
    return {**real_gcloud_env(fake, tmp_path / "gcloud-config"), "PATH": f"{gcloud_dir}:{os.environ['PATH']}",
            "MDS_DEPLOY_RETRY_DELAY": "0", **PYTHON_ENV}


def _execution(name: str, created: str, completed: Optional[str] = None,
               cancelled: bool = False) -> dict[str, Any]:
    """A Cloud Run v1 Execution as the API returns it (running: no completionTime)."""
    status: dict[str, Any] = {"startTime": created}
    if cancelled:
        status.update(completionTime=completed, cancelledCount=1,
                      conditions=[{"type": "Completed", "status": "False", "reason": "Cancelled"}])
    elif completed:
        status.update(completionTime=completed, succeededCount=1,
                      conditions=[{"type": "Completed", "status": "True"}])
    else:
        status.update(runningCount=1, conditions=[{"type": "Completed", "status": "Unknown"}])
    return {"apiVersion": "run.googleapis.com/v1", "kind": "Execution",
            "metadata": {"name": name, "namespace": "123456789012", "creationTimestamp": created,
                         "labels": {"run.googleapis.com/job": "mds-ingest-binance-btc-usdt"}},
            "spec": {"parallelism": 1, "taskCount": 1}, "status": status}


def test_stop_ingest_cancels_running_executions_after_one_has_finished(tmp_path: Path) -> None:
    """The newest execution finished (e.g. failed at start), two older ones still run."""
    executions = [_execution("mds-ingest-binance-btc-usdt-x3", "2026-11-29T11:00:00Z", "2026-11-29T11:00:40Z"),
                  _execution("mds-ingest-binance-btc-usdt-x2", "2026-11-29T10:00:00Z"),
                  _execution("mds-ingest-binance-btc-usdt-x1", "2026-11-29T09:00:00Z")]
    by_name = {e["metadata"]["name"]: e for e in executions}

    def run_api(request: Request) -> Optional[tuple[int, Any]]:
        path = request.url.split("?")[0]
        if request.method == "GET" and path.endswith("/executions"):
            return 200, {"apiVersion": "run.googleapis.com/v1", "kind": "ExecutionList", "metadata": {},
                         "items": executions}
        name = path.rsplit("/", 1)[-1].removesuffix(":cancel")
        if name in by_name:  # cancel, then gcloud reads it back until it is done
            return 200, _execution(name, by_name[name]["metadata"]["creationTimestamp"], "2026-11-29T12:00:00Z",
                                   cancelled=True)
        return None

    with FakeGoogleApis(handlers=[run_api]) as fake:
        result = subprocess.run(["bash", str(SCRIPT), "stop-ingest", "--project", PROJECT],
                                env=_script_env(tmp_path, fake), capture_output=True, text=True, timeout=300)
        cancels = [r.url for r in fake.requests if r.method == "POST" and r.url.split("?")[0].endswith(":cancel")]
    assert result.returncode == 0, result.stderr
    assert sorted(u.split("/executions/")[1].split(":")[0] for u in cancels) == [
        "mds-ingest-binance-btc-usdt-x1", "mds-ingest-binance-btc-usdt-x2"]
    assert "cancelled 2 running execution(s)" in result.stderr


def test_a_refused_drain_exits_0_in_gcloud_and_fails_the_script(tmp_path: Path) -> None:
    job = {"id": JOB_ID, "projectId": PROJECT, "name": "mds-candles", "type": "JOB_TYPE_STREAMING",
           "currentState": "JOB_STATE_RUNNING", "location": "us-central1",
           "createTime": "2026-11-29T09:02:03.000Z", "startTime": "2026-11-29T09:02:03.000Z",
           "currentStateTime": "2026-11-29T09:03:00.000Z"}

    def dataflow_api(request: Request) -> Optional[tuple[int, Any]]:
        if "/jobs" not in request.url:
            return None
        if request.method == "GET" and "/jobs?" in request.url:
            return 200, {"jobs": [job]}
        if request.method == "GET":
            return 200, job
        return 403, {"error": {"code": 403, "status": "PERMISSION_DENIED",
                               "message": "(a1b2c3): Could not drain workflow; user does not have sufficient "
                                          f"permissions on project: {PROJECT}"}}

    with FakeGoogleApis(handlers=[dataflow_api]) as fake:
        env = _script_env(tmp_path, fake)
        plain = subprocess.run(["gcloud", "dataflow", "jobs", "drain", JOB_ID, "--region", "us-central1",
                                "--project", PROJECT], env=env, capture_output=True, text=True, timeout=120)
        result = subprocess.run(["bash", str(SCRIPT), "drain", "--project", PROJECT], env=env,
                                capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0 and "Failed to drain job" in plain.stderr, "gcloud's own behaviour changed"
    assert result.returncode == 2
    assert "Dataflow did not take the request" in result.stderr and "JOB_STATE_RUNNING" in result.stderr


def _command_shape(argv: list[str]) -> tuple[str, ...]:
    """Commands that differ only in resource names or values need one check."""
    return tuple(argv[1:4]) + tuple(sorted({t.split("=", 1)[0] for t in argv if t.startswith("--")}))


@pytest.fixture(scope="module")
def emitted(tmp_path_factory: pytest.TempPathFactory) -> list[list[str]]:
    """Every gcloud command of a full dry run, every operation, and the calls only a real run makes."""
    tmp_path = tmp_path_factory.mktemp("emitted")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **PYTHON_ENV}
    printed: list[list[str]] = []
    for args in (["deploy", "drain", "cancel", "status", "stop-ingest", "--mode", "both", "--nodejs", "--update",
                  "--source", "tardis", "--tardis-secret", "k", "--from", "2024-03-01", "--to", "2024-03-02",
                  "--service-account", "mds@x-project.iam.gserviceaccount.com",
                  "--transform-name-mappings", "MarketData/Candles=MarketData/OHLCV,ReadTicks=ReadMessages"],
                 ["iam", "--mode", "ticks"]):
        out = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--project", PROJECT, *args], env=env,
                             capture_output=True, text=True, timeout=120, check=True).stdout
        printed += [shlex.split(line) for line in out.splitlines() if line.startswith("gcloud ")]
    stub = StubCli(tmp_path / "stub")
    stub.answer("gcloud", "pubsub", "subscriptions", "describe", stdout="name: x\n")
    stub.answer("gcloud", "secrets", "describe", stdout="name: x\n")
    stub.answer("gcloud", "secrets", "versions", "describe", stdout="ENABLED\n")
    stub.answer("gcloud", "dataflow", "jobs", "list", stdout=f"{JOB_ID}\n")
    stub.answer("gcloud", "dataflow", "jobs", "describe", stdout="JOB_STATE_DRAINING\tJOB_STATE_DRAINED\n")
    stub.run(SCRIPT, "infra", "ingest", "drain", "--project", PROJECT, "--tardis-secret", "k", env=PYTHON_ENV)
    printed += [c.argv for c in stub.calls() if c.argv[0] == "gcloud"]
    unique: dict[tuple[str, ...], list[str]] = {}
    for argv in printed:
        unique.setdefault(_command_shape(argv), argv)
    return list(unique.values())


def test_every_gcloud_command_is_accepted_by_the_real_gcloud(emitted: list[list[str]], tmp_path: Path) -> None:
    """Each command, as emitted, goes through the installed gcloud: flags parsed, values validated,
    files read, request sent (to the fake). Exit code 2 is gcloud's usage error."""
    assert shutil.which("gcloud"), "the Google Cloud CLI is part of the toolchain"
    commands = emitted
    assert len(commands) >= 30

    def check(index_argv: tuple[int, list[str]]) -> Optional[str]:
        index, argv = index_argv
        with FakeGoogleApis() as fake:
            result = subprocess.run(argv, env=real_gcloud_env(fake, tmp_path / f"config-{index}"), input="k",
                                    capture_output=True, text=True, timeout=180, cwd=tmp_path)
            sent = [r for r in fake.requests if r.command.startswith("gcloud.")]
        if result.returncode == 2 or not sent:
            return f"{shlex.join(argv)}\n  -> exit {result.returncode}: {result.stderr.strip()[-600:]}"
        return None

    with ThreadPoolExecutor(max_workers=3) as pool:
        failures = [f for f in pool.map(check, enumerate(commands)) if f]
    assert failures == []


def test_the_subscription_request_carries_the_guard_exactly(emitted: list[list[str]], tmp_path: Path) -> None:
    """What the real gcloud makes of the generated transforms file: the API's MessageTransform."""
    create = next(c for c in emitted if c[:4] == ["gcloud", "pubsub", "subscriptions", "create"])
    update = next(c for c in emitted if c[:4] == ["gcloud", "pubsub", "subscriptions", "update"])
    expected = [{"javascriptUdf": {"functionName": "guardEventTime", "code": GUARD_JS.read_text()}}]
    with FakeGoogleApis() as fake:
        env = real_gcloud_env(fake, tmp_path / "config")
        for argv in (create, update):
            subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180)
        sent = {r.method: r.json() for r in fake.requests if "/subscriptions/" in r.url}
    assert sent["PUT"]["messageTransforms"] == expected
    assert sent["PUT"]["topic"] == f"projects/{PROJECT}/topics/mds-ticks"
    assert sent["PATCH"]["subscription"]["messageTransforms"] == expected
    assert sent["PATCH"]["updateMask"] == "messageTransforms"


def test_the_launch_request_carries_parameters_environment_and_mappings(tmp_path: Path) -> None:
    """The real gcloud's reading of the deploy's launch: `^~^` keeps commas inside values, the
    runtime environment and the update's name mappings go to the Flex Template launch."""
    out = subprocess.run(
        ["bash", str(SCRIPT), "template-run", "--dry-run", "--project", PROJECT, "--mode", "candles", "--update",
         "--max-workers", "5", "--machine-type", "n2-highmem-4", "--tag", "v7",
         "--transform-name-mappings", "MarketData/Candles=MarketData/OHLCV,ReadTicks=ReadMessages"],
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), **PYTHON_ENV},
        capture_output=True, text=True, timeout=60, check=True).stdout
    launch = shlex.split(next(line for line in out.splitlines() if "flex-template run" in line))
    launch[launch.index("--parameters") + 1] += "~timeframes=1m,5m,4h"
    with FakeGoogleApis() as fake:
        subprocess.run(launch, env=real_gcloud_env(fake, tmp_path / "config"), capture_output=True, text=True,
                       timeout=180)
        (request,) = [r for r in fake.requests if "flexTemplates:launch" in r.url]
    parameter = request.json()["launchParameter"]
    assert parameter["jobName"] == "mds-candles" and parameter["update"] is True
    assert parameter["containerSpecGcsPath"] == f"gs://{PROJECT}-mds/templates/mds-streaming-v7.json"
    assert parameter["parameters"]["timeframes"] == "1m,5m,4h"
    assert parameter["parameters"]["input_subscription"] == f"projects/{PROJECT}/subscriptions/mds-ticks-dataflow-candles"
    assert parameter["transformNameMappings"] == {"MarketData/Candles": "MarketData/OHLCV", "ReadTicks": "ReadMessages"}
    environment = parameter["environment"]
    assert environment["maxWorkers"] == 5 and environment["machineType"] == "n2-highmem-4"
    assert environment["enableStreamingEngine"] is True
    assert environment["serviceAccountEmail"] == WORKER.split(":", 1)[1]
    assert environment["stagingLocation"] == f"gs://{PROJECT}-mds/staging"
