"""Patches of Beam's DirectRunner for local runs ONLY; the Dataflow path never applies them.

``local_runner`` applies them for the time of a local run. Resilience: the DirectRunner reads
Pub/Sub in ``_PubSubReadEvaluator``
(``apache_beam/runners/direct/transform_evaluator.py``): per bundle, one synchronous ``pull``
(at most 10 messages) and then ``acknowledge``. An error from either escapes ``finish_bundle``;
the executor retries a bundle 4 times and then fails the pipeline. Measured with the emulator
killed and restarted (Beam 2.77, google-cloud-pubsub 2.44): the client retries UNAVAILABLE on a
pull for 60 s and then raises ``RetryError``, so an outage of ~4 minutes kills the job; a restarted
emulator answers NotFound until its subscription is recreated, which burns the 4 attempts in
milliseconds; and an ``acknowledge`` error discards the messages that pull already returned.
Dataflow's Pub/Sub source retries all of this by itself, hence a local-only patch.

``_ResilientSubscriber`` wraps the subscriber client the evaluator uses: a pull that fails transiently (or with
NotFound on a subscription that has answered before, i.e. one being recreated) returns no
messages after a backoff, and the evaluator simply pulls again; a failed acknowledge is logged
and the pulled messages still go downstream (Pub/Sub may deliver them again; the pipeline drops
duplicate trade ids). Any other error still fails the bundle as before.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from apache_beam.options.pipeline_options import PipelineOptions
from google.api_core import exceptions as api_exceptions

from pipelines.local_pubsub import DurableReads, subscriber_client

_LOGGER = logging.getLogger(__name__)

TRANSIENT_PULL_ERRORS = (api_exceptions.ServiceUnavailable, api_exceptions.DeadlineExceeded,
                         api_exceptions.InternalServerError, api_exceptions.Aborted,
                         api_exceptions.ResourceExhausted, api_exceptions.Unknown,
                         api_exceptions.RetryError)  # the client's own retries ran out
PULL_BACKOFF_S = (0.5, 10.0)  # first and longest pause after a failed pull
PULL_FAILURE_LOG_INTERVAL_S = 10.0


@dataclass
class _PullHealth:
    """How pulling from one subscription is going (one pipeline per process: keyed by path)."""

    answered: bool = False  # a pull succeeded once: the subscription exists
    failures: int = 0  # consecutive failed pulls
    failing_since: float = 0.0
    last_log: float = 0.0


_HEALTH: dict[str, _PullHealth] = {}
_HEALTH_LOCK = threading.Lock()


class _ResilientSubscriber:
    """A SubscriberClient whose ``pull`` and ``acknowledge`` ride out a Pub/Sub outage."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def pull(self, *, subscription: str, **kwargs: Any) -> Any:
        from google.pubsub_v1 import PullResponse

        with _HEALTH_LOCK:
            health = _HEALTH.setdefault(subscription, _PullHealth())
        started = time.monotonic()
        try:
            response = self._client.pull(subscription=subscription, **kwargs)
        except Exception as error:
            if not _transient(error, health):
                raise
            _pause_after_failure(subscription, health, error, started)
            return PullResponse()
        if health.failures:
            _LOGGER.info("pulling from %s again after %.0fs of failures", subscription,
                         time.monotonic() - health.failing_since)
        health.answered, health.failures = True, 0
        return response

    def acknowledge(self, *, subscription: str, ack_ids: list[str], **kwargs: Any) -> None:
        try:
            self._client.acknowledge(subscription=subscription, ack_ids=ack_ids, **kwargs)
        except Exception as error:
            if not _transient(error, _HEALTH.get(subscription, _PullHealth())):
                raise
            _LOGGER.warning("acknowledging %d messages on %s failed (%s): they go on downstream "
                            "and may be delivered again (duplicate trade ids are dropped)",
                            len(ack_ids), subscription, _first_line(error))


def _transient(error: BaseException, health: _PullHealth) -> bool:
    if isinstance(error, TRANSIENT_PULL_ERRORS):
        return True
    return isinstance(error, api_exceptions.NotFound) and health.answered


def _pause_after_failure(subscription: str, health: _PullHealth, error: BaseException,
                         pull_started: float) -> None:
    """Log (at most once per interval) and back off, so a dead server is not polled in a loop."""
    now = time.monotonic()
    if not health.failures:
        health.failing_since = pull_started  # the client may have retried inside that pull
    health.failures += 1
    if now - health.last_log >= PULL_FAILURE_LOG_INTERVAL_S:
        health.last_log = now
        _LOGGER.warning("pull from %s failed (%s); pulling again, failing for %.0fs", subscription,
                        _first_line(error), now - health.failing_since)
    first, longest = PULL_BACKOFF_S
    time.sleep(min(first * 2 ** (health.failures - 1), longest))


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0][:200] if str(error) else type(error).__name__


class LocalRunOptions(PipelineOptions):
    """Options of local runs only (not Flex Template parameters)."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        parser.add_argument("--local_journal_dir", default=os.path.join("out", "journal"),
                            help="Where the local Pub/Sub read journals messages before it "
                                 "acknowledges them; a restarted run replays them from here.")


@contextlib.contextmanager
def local_runner(journal_dir: str | os.PathLike[str], horizon_us: int) -> Iterator[DurableReads]:
    """Patch the DirectRunner's Pub/Sub read for local runs, and undo it on exit: pulls and
    acknowledges ride out an outage (``_ResilientSubscriber``), messages are journaled before
    they are acknowledged and replayed after a crash, their ``ts`` is guarded and their size is
    unlimited (``pipelines.local_pubsub``). Only local entry points (``mds run``, the demo) enter
    it; ``patched_names`` lists what it replaces, so a Beam upgrade that renames one fails a test.
    """
    from apache_beam.runners.direct import transform_evaluator
    from apache_beam.runners.direct.transform_evaluator import _PubSubReadEvaluator

    reads = DurableReads(Path(journal_dir), horizon_us)
    evaluator = _PubSubReadEvaluator
    saved = {name: evaluator.__dict__[name] for name in PATCHED_EVALUATOR_ATTRIBUTES}
    finish_bundle = saved["finish_bundle"]

    def client_state(cls: type, transform: Any) -> Any:
        state = cls._subscriber_client_cache.get(transform)
        if state is None:
            state = transform_evaluator._PubSubSubscriberClient(
                _ResilientSubscriber(subscriber_client()))
            cls._subscriber_client_cache[transform] = state
            weakref.finalize(transform, state.close)
        return state

    def read_from_pubsub(self: Any, timestamp_attribute: str | None) -> list[tuple[Any, Any]]:
        client = self._get_subscriber_client(self._applied_ptransform)
        return reads.of(self._sub_name).next_bundle(client, self._sub_name)

    def durable_finish_bundle(self: Any) -> Any:
        result = finish_bundle(self)
        result.keyed_watermark_holds[None] = reads.of(self._sub_name).watermark_hold()
        return result

    evaluator._get_subscriber_client_state_unlocked = classmethod(client_state)
    evaluator._read_from_pubsub = read_from_pubsub
    evaluator.finish_bundle = durable_finish_bundle
    try:
        yield reads
    finally:
        for name, value in saved.items():
            setattr(evaluator, name, value)


@contextlib.contextmanager
def local_bounded_runner() -> Iterator[None]:
    """The in-memory runner of local bounded runs, without its SDK state cache: the cache sizes
    every cached state value with objsize, walking all loaded modules each time (27 of 54 s of a
    3,427-tick replay), and state lives in memory anyway (worker processes of a multi-process
    run get ``max_cache_memory_usage_mb=0`` instead). Undone on exit."""
    from apache_beam.runners.portability.fn_api_runner import worker_handlers

    saved = worker_handlers.STATE_CACHE_SIZE_MB
    worker_handlers.STATE_CACHE_SIZE_MB = 0
    try:
        yield
    finally:
        worker_handlers.STATE_CACHE_SIZE_MB = saved


# What the local contexts replace in Beam (tests check they still exist after an upgrade).
PATCHED_EVALUATOR_ATTRIBUTES = ("_get_subscriber_client_state_unlocked", "_read_from_pubsub",
                                "finish_bundle")
PATCHED_MODULE_ATTRIBUTES = (("apache_beam.runners.portability.fn_api_runner.worker_handlers",
                              "STATE_CACHE_SIZE_MB"),
                             ("apache_beam.runners.direct.transform_evaluator",
                              "_PubSubSubscriberClient"),
                             ("apache_beam.runners.direct.util", "TransformResult"))
