"""templates/main.py run as the Dataflow Flex Template launcher runs it, in dry-run mode.

The launcher starts `python $FLEX_TEMPLATE_PYTHON_PY_FILE` in the image's working directory with
the pipeline options it derives from the launch (`--runner=DataflowRunner`, project, region, job
name, staging/temp/template locations, `--setup_file=$FLEX_TEMPLATE_PYTHON_SETUP_FILE`, the
runtime environment of `gcloud dataflow flex-template run`) and every template parameter as
`--name=value`. Here: the image's /template is rebuilt from templates/Dockerfile's COPY lines, the
parameters are metadata.json's defaults plus what the deploy script launches with, `--dry_run=true`
stops Beam before it would write the job to the template location, and BigQuery (which the launcher
prepares: tables and CREATE OR REPLACE VIEW) is the local bqemulator. A sitecustomize module records
the job Beam built, so the very command line of the launcher runs unchanged.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2

from pipelines.emulators import BigQueryEmulator
from transforms import bigquery as bq

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = (REPO / "templates" / "Dockerfile").read_text()
METADATA = json.loads((REPO / "templates" / "metadata.json").read_text())
_spec = importlib.util.spec_from_file_location("dataflow_graph", REPO / "deploy" / "dataflow_graph.py")
graph = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(graph)

OBSERVER = '''"""Records the job the DataflowRunner built (tests/test_flex_launcher.py); inert without
MDS_LAUNCH_CAPTURE, which it removes so that child processes stay untouched."""
import json, os
_out = os.environ.pop("MDS_LAUNCH_CAPTURE", None)
if _out:
    from apache_beam.runners.dataflow import dataflow_runner
    _original = dataflow_runner.DataflowRunner.run_pipeline

    def _recording(self, pipeline, options, pipeline_proto=None):
        result = _original(self, pipeline, options, pipeline_proto)
        job = result.job
        with open(os.path.join(_out, "pipeline.pb"), "wb") as f:
            f.write(job.proto_pipeline.SerializeToString())
        with open(os.path.join(_out, "job.json"), "w") as f:
            json.dump({"type": int(job.proto.type_), "name": job.proto.name,
                       "options": job.options.get_all_options(retain_unknown_options=True)}, f, default=str)
        return result

    dataflow_runner.DataflowRunner.run_pipeline = _recording
'''

# `gcloud dataflow flex-template run` flags of the runtime environment -> the pipeline options
# the launcher hands to the Python program.
RUNTIME_ENVIRONMENT = {"--max-workers": "max_num_workers", "--worker-machine-type": "worker_machine_type",
                       "--service-account-email": "service_account_email",
                       "--staging-location": "staging_location", "--temp-location": "temp_location"}


def image_workdir(root: Path) -> tuple[Path, dict[str, str]]:
    """The image's WORKDIR as templates/Dockerfile lays it out, and its FLEX_TEMPLATE_* variables."""
    workdir = re.search(r"^ARG WORKDIR=(\S+)$", DOCKERFILE, flags=re.M).group(1)
    local = root / "template"
    local.mkdir()
    for line in DOCKERFILE.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            source, destination = line.split()[1:]
            target = local / destination
            if (REPO / source).is_dir():
                shutil.copytree(REPO / source, target,
                                ignore=shutil.ignore_patterns("node_modules", "__pycache__", "*.egg-info"))
            else:
                shutil.copy2(REPO / source, target)
    variables = dict(re.findall(r'^ENV (FLEX_TEMPLATE_PYTHON_\w+)="([^"]+)"$', DOCKERFILE, flags=re.M))
    resolved = {name: value.replace("${WORKDIR}", workdir).replace(workdir, str(local), 1)
                for name, value in variables.items()}
    return local, resolved


def deploy_launch(config: str) -> list[str]:
    """The deploy's `gcloud dataflow flex-template run`; for a file, the same launch with the
    runbook's backfill parameters (bounded: no Streaming Engine)."""
    source, mode = config.split("/")
    launch = graph.deploy_launch(mode)
    if source == "file":
        launch.remove("--enable-streaming-engine")
        backfill = graph.template_parameters(mode, source)
        launch[launch.index("--parameters") + 1] = "^~^" + "~".join(f"{k}={v}" for k, v in backfill.items())
    return launch


def launcher_argv(launch: list[str], setup_file: str, parameters: dict[str, str]) -> list[str]:
    def value(name: str) -> str:
        return launch[launch.index(name) + 1]

    job_name = launch[4]
    argv = ["--runner=DataflowRunner", f"--project={value('--project')}", f"--region={value('--region')}",
            f"--job_name={job_name}", f"--setup_file={setup_file}",
            f"--template_location={value('--staging-location')}/template_launches/2026-11-29_00_00_00-1/job_object"]
    argv += [f"--{option}={value(flag)}" for flag, option in RUNTIME_ENVIRONMENT.items()]
    if "--enable-streaming-engine" in launch:
        argv.append("--enable_streaming_engine")
    return argv + [f"--{name}={v}" for name, v in parameters.items()] + ["--dry_run=true"]


def template_parameters(launch: list[str]) -> dict[str, str]:
    """metadata.json defaults, then the launch's own (a new parameter joins by itself)."""
    parameters = {p["name"]: p["defaultValue"] for p in METADATA["parameters"] if "defaultValue" in p}
    parameters.update(graph.launch_parameters(launch))
    required = {p["name"] for p in METADATA["parameters"] if not p["isOptional"]}
    assert required <= set(parameters), "the deploy must pass every required parameter"
    return parameters


@pytest.fixture(scope="module")
def emulator() -> Iterator[BigQueryEmulator]:
    with BigQueryEmulator(project=graph.PROJECT) as running:
        yield running


@pytest.mark.parametrize("config", [*(f"pubsub/{mode}" for mode in graph.MODES), "file/candles"])
def test_main_py_launches_like_the_flex_template_launcher(config: str, emulator: BigQueryEmulator,
                                                          tmp_path: Path) -> None:
    streaming, mode = config.startswith("pubsub/"), config.split("/")[1]
    workdir, flex_env = image_workdir(tmp_path)
    launch = deploy_launch(config)
    parameters = template_parameters(launch)
    argv = launcher_argv(launch, flex_env["FLEX_TEMPLATE_PYTHON_SETUP_FILE"], parameters)
    observer, capture = tmp_path / "observer", tmp_path / "capture"
    observer.mkdir()
    capture.mkdir()
    (observer / "sitecustomize.py").write_text(OBSERVER)
    env = {**os.environ, **flex_env, "PYTHONPATH": str(observer), "MDS_LAUNCH_CAPTURE": str(capture),
           **emulator.client_env(),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("PUBSUB_EMULATOR_HOST", None)
    result = subprocess.run(["python", env["FLEX_TEMPLATE_PYTHON_PY_FILE"], *argv], env=env, cwd=workdir,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    job = json.loads((capture / "job.json").read_text())
    pipeline = beam_runner_api_pb2.Pipeline.FromString((capture / "pipeline.pb").read_bytes())
    assert job["type"] == (2 if streaming else 1) and job["name"] == f"mds-{mode}"  # STREAMING / BATCH
    options = job["options"]
    assert options["sdk_container_image"] == parameters["sdk_container_image"] == graph.IMAGE
    assert options["setup_file"] == flex_env["FLEX_TEMPLATE_PYTHON_SETUP_FILE"]
    assert options["streaming"] is streaming
    assert options["enable_streaming_engine"] or not streaming
    assert options["service_account_email"] == f"mds-dataflow@{graph.PROJECT}.iam.gserviceaccount.com"
    for name, value in parameters.items():
        assert str(options[name]).lower() == value.lower(), name

    assert graph.step_names(pipeline) == graph.parse(graph.GOLDEN.read_text())[config]
    (environment,) = pipeline.components.environments.values()
    assert beam_runner_api_pb2.DockerPayload.FromString(environment.payload).container_image == graph.IMAGE
    staged = {beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(d.role_payload).staged_name
              for d in environment.dependencies if d.role_urn == common_urns.artifact_roles.STAGING_TO.urn}
    assert "workflow.tar.gz" in staged, "the setup file's package must be staged for the workers"
    assert emulator.endpoint.split("//")[1].encode() not in (capture / "pipeline.pb").read_bytes(), (
        "the launcher's local BigQuery endpoint leaked into the job graph")

    # The launcher prepared BigQuery: tables and views exist before any worker writes.
    client = bq.make_client(graph.PROJECT, emulator.endpoint)
    tables = {t.table_id: t.table_type for t in client.list_tables(f"{graph.PROJECT}.market_data")}
    client.close()
    assert {"ticks", "candles", "dead_letter"} <= {t for t, kind in tables.items() if kind == "TABLE"}
    assert any(kind == "VIEW" for kind in tables.values())
