"""The Dataflow job graph of every job the deploy launches, built here without submitting it.

Beam's DataflowRunner with ``--dry_run=true`` translates the pipeline exactly as for a submission
(Runner v2 portable graph, runner overrides such as the native Pub/Sub read, the SDK container
image) and stops before any API call; with well-formed project and bucket names it needs no
network. tests/test_dataflow_graph.py and tests/test_flex_launcher.py check these graphs.

A running streaming job can only be replaced in place (``--update``) by a graph whose steps keep
their names, so today's names are kept in tests/dataflow_step_names.txt. After a deliberate
change of steps, rewrite that file and review the diff (docs/runbook.md, "Step names"):

    make step-names        # = .venv/bin/python deploy/dataflow_graph.py
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "dataflow_step_names.txt"

# Names in the form the deploy script derives them (deploy/deploy-streaming-service.sh).
PROJECT = "mds-graph-check"
REGION = "us-central1"
BUCKET = f"{PROJECT}-mds"
IMAGE = f"{REGION}-docker.pkg.dev/{PROJECT}/mds/mds-pipeline:graph"
MODES = ("ticks", "candles", "both")
SOURCES = ("pubsub", "file")  # streaming from the subscription; bounded replay of a file (backfill)
CONFIGS = tuple(f"{source}/{mode}" for source in SOURCES for mode in MODES)


def template_parameters(mode: str, source: str) -> dict[str, str]:
    """The Flex Template parameters of a launch: the deploy's `template-run` for Pub/Sub, the
    runbook's backfill command for a file."""
    parameters = {"mode": mode, "output_dataset": f"{PROJECT}:market_data", "sdk_container_image": IMAGE}
    if source == "pubsub":
        parameters["input_subscription"] = f"projects/{PROJECT}/subscriptions/mds-ticks-dataflow-{mode}"
        if mode != "ticks":
            parameters["output_topic"] = f"projects/{PROJECT}/topics/mds-candles"
    else:
        parameters["input_file"] = f"gs://{BUCKET}/trades/2024-03-01.csv.gz"
    return parameters


def deploy_launch(mode: str) -> list[str]:
    """The `gcloud dataflow flex-template run` command deploy-streaming-service.sh emits for these
    names (its --dry-run output)."""
    result = subprocess.run(
        ["bash", str(REPO / "deploy" / "deploy-streaming-service.sh"), "template-run", "--dry-run",
         "--project", PROJECT, "--region", REGION, "--mode", mode, "--tag", "graph"],
        env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=60, check=True)
    return shlex.split(next(line for line in result.stdout.splitlines() if "flex-template run" in line))


def launch_parameters(launch: list[str]) -> dict[str, str]:
    """The --parameters of a launch command, written `^~^name=value~name=value`."""
    value = launch[launch.index("--parameters") + 1]
    if not value.startswith("^~^"):
        raise ValueError(f"parameters without the ^~^ delimiter: {value}")
    return dict(item.split("=", 1) for item in value[3:].split("~"))


def runner_options(job_name: str) -> list[str]:
    """What the Flex Template launcher adds to the parameters, in dry-run form."""
    return ["--runner=DataflowRunner", f"--project={PROJECT}", f"--region={REGION}", f"--job_name={job_name}",
            f"--staging_location=gs://{BUCKET}/staging", f"--temp_location=gs://{BUCKET}/temp",
            "--dry_run=true"]


def job_argv(config: str) -> list[str]:
    source, mode = config.split("/")
    parameters = template_parameters(mode, source)
    return runner_options(f"mds-{mode}") + [f"--{name}={value}" for name, value in parameters.items()]


def build_job(argv: list[str]) -> Any:
    """The apiclient.Job the DataflowRunner would submit for these arguments (``.proto_pipeline``
    is the Runner v2 graph, ``.proto`` the v1beta3 job, ``.options`` the final options)."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.streaming_pipeline import build_pipeline

    options = PipelineOptions(argv)
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, options)
    return pipeline.run().job


def submitted_environment(job: Any) -> Any:
    """The v1beta3 Environment Beam sends with the job (worker pools, SDK images, experiments),
    built the way DataflowApplicationClient.create_job_description builds it, minus staging."""
    from apache_beam.runners.dataflow.internal import apiclient

    staging = job.options.view_as(apiclient.GoogleCloudOptions).staging_location
    return apiclient.Environment(packages=[], options=job.options,
                                 environment_version=apiclient._FNAPI_ENVIRONMENT_MAJOR_VERSION,
                                 proto_pipeline_staged_url=f"{staging}/pipeline.pb",
                                 proto_pipeline=job.proto_pipeline).proto


def step_names(proto_pipeline: Any) -> list[str]:
    """Every transform's full name (the names `--update` matches), without the synthetic root."""
    transforms = proto_pipeline.components.transforms
    roots = {tid for tid in proto_pipeline.root_transform_ids if not transforms[tid].spec.urn}
    return sorted(t.unique_name for tid, t in transforms.items() if tid not in roots)


def render(names: dict[str, Iterable[str]]) -> str:
    lines = ["# Dataflow step names of every job the deploy launches (generated by deploy/dataflow_graph.py).",
             "# `--update` of a running streaming job needs these names to stay: a rename is a deliberate",
             "# act with --transform-name-mappings (docs/runbook.md). Regenerate: make step-names"]
    for config in CONFIGS:
        lines += ["", f"[{config}]", *names[config]]
    return "\n".join(lines) + "\n"


def parse(text: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
        elif line.strip() and not line.startswith("#"):
            current.append(line)
    return sections


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale instead of writing it")
    args = parser.parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)  # Beam's translation warnings are not the point here
    text = render({config: step_names(build_job(job_argv(config)).proto_pipeline) for config in CONFIGS})
    if args.check:
        stale = GOLDEN.read_text(encoding="utf-8") != text
        print(f"{GOLDEN.relative_to(REPO)} is {'STALE: run make step-names' if stale else 'up to date'}")
        return int(stale)
    GOLDEN.write_text(text, encoding="utf-8")
    print(f"wrote {GOLDEN.relative_to(REPO)}: review the diff (git diff) before committing it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
