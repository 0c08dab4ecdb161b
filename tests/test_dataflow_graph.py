"""The Dataflow job graph, built here for every job the deploy launches (ticks, candles, both;
streaming from Pub/Sub and bounded from a file) with the DataflowRunner in dry-run mode: no
submission, no network (deploy/dataflow_graph.py). Asserted: job type, Runner v2, the SDK
container image, only transforms and state Dataflow Runner v2 runs, the native Pub/Sub read with
the `ts` event-time attribute, and step names equal to tests/dataflow_step_names.txt.
"""
from __future__ import annotations

import difflib
import importlib.util
import logging
from pathlib import Path
from typing import Any, Iterator

import pytest
from apache_beam.options.pipeline_options import DebugOptions
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("dataflow_graph", REPO / "deploy" / "dataflow_graph.py")
graph = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(graph)

STREAMING = [c for c in graph.CONFIGS if c.startswith("pubsub/")]
REGENERATE = "make step-names   (= .venv/bin/python deploy/dataflow_graph.py), then review `git diff`"

# Leaf transforms Dataflow Runner v2 executes: SDK ParDos, and the primitives the service runs
# itself. A new URN (a cross-language transform, TestStream, a splittable read the service does not
# offer...) must be checked against Dataflow's documentation before it is added here.
RUNNABLE_LEAVES = {
    common_urns.primitives.PAR_DO.urn, common_urns.primitives.GROUP_BY_KEY.urn,
    common_urns.primitives.FLATTEN.urn, common_urns.primitives.IMPULSE.urn,
    common_urns.primitives.ASSIGN_WINDOWS.urn, common_urns.composites.PUBSUB_READ.urn,
}
# State kinds Dataflow Runner v2 supports for the Python SDK; OrderedListState is not among them
# (transforms/sequencer.py buffers with a bag for that reason).
SUPPORTED_STATE = {"bag_spec", "read_modify_write_spec", "combining_spec"}
SUPPORTED_REQUIREMENTS = {common_urns.requirements.REQUIRES_STATEFUL_PROCESSING.urn}


@pytest.fixture(scope="module")
def jobs() -> Iterator[dict[str, Any]]:
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        yield {config: graph.build_job(graph.job_argv(config)) for config in graph.CONFIGS}
    finally:
        logging.getLogger().setLevel(level)


def _leaves(job: Any) -> Iterator[tuple[str, Any]]:
    for transform in job.proto_pipeline.components.transforms.values():
        if not transform.subtransforms:
            yield transform.unique_name, transform


@pytest.mark.parametrize("config", graph.CONFIGS)
def test_job_type_and_runner_v2(jobs: dict[str, Any], config: str) -> None:
    job = jobs[config]
    streaming = config in STREAMING
    assert job.proto.type_ == (2 if streaming else 1)  # JOB_TYPE_STREAMING / JOB_TYPE_BATCH
    assert job.proto.name == f"mds-{config.split('/')[1]}"
    experiments = set(job.options.view_as(DebugOptions).experiments or [])
    assert {"use_runner_v2", "use_unified_worker", "use_portable_job_submission", "beam_fn_api"} <= experiments
    assert not experiments & {"disable_runner_v2", "disable_prime_runner_v2", "disable_portable_runner"}
    if streaming:
        assert {"enable_streaming_engine", "enable_windmill_service"} <= experiments


@pytest.mark.parametrize("config", graph.CONFIGS)
def test_every_step_runs_in_the_template_image(jobs: dict[str, Any], config: str) -> None:
    job = jobs[config]
    environments = job.proto_pipeline.components.environments
    assert len(environments) == 1, "a second environment is a cross-language transform (an expansion service)"
    (env_id, environment), = environments.items()
    assert environment.urn == common_urns.environments.DOCKER.urn
    payload = beam_runner_api_pb2.DockerPayload.FromString(environment.payload)
    assert payload.container_image == graph.IMAGE
    for name, transform in _leaves(job):
        assert transform.environment_id in ("", env_id), name
    pool = graph.submitted_environment(job).worker_pools[0]
    assert [image.container_image for image in pool.sdk_harness_container_images] == [graph.IMAGE]
    assert pool.worker_harness_container_image == graph.IMAGE


@pytest.mark.parametrize("config", graph.CONFIGS)
def test_only_transforms_and_state_dataflow_runs(jobs: dict[str, Any], config: str) -> None:
    assert _unrunnable(jobs[config]) == []


def test_the_streaming_reconciliation_runs_on_dataflow_with_stable_step_names() -> None:
    """`--reconcile_delay_seconds` (off in the deployed jobs, so not in the golden file) adds a
    stateful step with a watermark timer that Runner v2 runs."""
    job = graph.build_job(graph.job_argv("pubsub/both") + ["--reconcile_delay_seconds=180"])
    assert _unrunnable(job) == []
    names = graph.step_names(job.proto_pipeline)
    assert [n for n in names if "<lambda" in n or ".py:" in n] == []
    assert {"MarketData/ReconcileCandles/Reconcile", "Writecandle_reconciliationBigQuery/AppendRows"} <= {
        "/".join(n.split("/")[:3]) for n in names}


def _unrunnable(job: Any) -> list[str]:
    """Leaves, state kinds and requirements of a job that Dataflow Runner v2 cannot run."""
    problems = [f"requirement {r}" for r in set(job.proto_pipeline.requirements) - SUPPORTED_REQUIREMENTS]
    for name, transform in _leaves(job):
        if transform.spec.urn not in RUNNABLE_LEAVES:
            problems.append(f"{name}: {transform.spec.urn}")
        if transform.spec.urn != common_urns.primitives.PAR_DO.urn:
            continue
        payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
        for state_id, state in payload.state_specs.items():
            if state.WhichOneof("spec") not in SUPPORTED_STATE:
                problems.append(f"{name}: state {state_id} is {state.WhichOneof('spec')}")
        if payload.requires_time_sorted_input or payload.requests_finalization:
            problems.append(f"{name}: requires time-sorted input or bundle finalization")
    return problems


def test_stateful_steps_keep_their_state(jobs: dict[str, Any]) -> None:
    """The dedup and sequencer state is what `--update` carries over: it must be in the graph."""
    stateful = {name for name, t in _leaves(jobs["pubsub/both"]) if t.spec.urn == common_urns.primitives.PAR_DO.urn
                and beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload).state_specs}
    assert any(n.startswith("MarketData/GuardTicks/Dedup/") for n in stateful)
    assert any(n.startswith("MarketData/SequenceCandles/") for n in stateful)


@pytest.mark.parametrize("config", STREAMING)
def test_streaming_reads_pubsub_natively_with_the_ts_event_time(jobs: dict[str, Any], config: str) -> None:
    reads = [t for _, t in _leaves(jobs[config]) if t.spec.urn == common_urns.composites.PUBSUB_READ.urn]
    assert len(reads) == 1
    payload = beam_runner_api_pb2.PubSubReadPayload.FromString(reads[0].spec.payload)
    mode = config.split("/")[1]
    assert payload.subscription == f"projects/{graph.PROJECT}/subscriptions/mds-ticks-dataflow-{mode}"
    assert payload.timestamp_attribute == "ts"  # guarded by deploy/pubsub/event-time-guard.js
    assert payload.with_attributes and not payload.topic


@pytest.mark.parametrize("config", STREAMING)
def test_streaming_step_names_are_stable_labels(jobs: dict[str, Any], config: str) -> None:
    """A name carrying a source line (an unlabelled lambda) changes with unrelated edits and
    breaks `--update`."""
    names = graph.step_names(jobs[config].proto_pipeline)
    assert [n for n in names if "<lambda" in n or ".py:" in n] == []


@pytest.mark.parametrize("config", graph.CONFIGS)
def test_step_names_equal_the_golden_list(jobs: dict[str, Any], config: str) -> None:
    golden = graph.parse(graph.GOLDEN.read_text(encoding="utf-8"))
    assert config in golden, f"no [{config}] section: {REGENERATE}"
    actual = graph.step_names(jobs[config].proto_pipeline)
    diff = "\n".join(difflib.unified_diff(golden[config], actual, "golden", "built", lineterm="", n=0))
    assert actual == golden[config], (
        f"the {config} job's steps changed. A running job can only be updated in place if its steps "
        f"keep their names: map renamed ones with --transform-name-mappings (docs/runbook.md). If the "
        f"change is deliberate: {REGENERATE}\n{diff}")


def test_golden_file_is_exactly_what_the_generator_writes(jobs: dict[str, Any]) -> None:
    names = {config: graph.step_names(job.proto_pipeline) for config, job in jobs.items()}
    assert graph.GOLDEN.read_text(encoding="utf-8") == graph.render(names), REGENERATE


def test_graph_parameters_are_the_ones_the_deploy_launches_with() -> None:
    """deploy/dataflow_graph.py builds the jobs deploy/deploy-streaming-service.sh starts."""
    for mode in graph.MODES:
        launch = graph.deploy_launch(mode)
        assert graph.launch_parameters(launch) == graph.template_parameters(mode, "pubsub")
        assert f"--job_name={launch[4]}" in graph.job_argv(f"pubsub/{mode}")
