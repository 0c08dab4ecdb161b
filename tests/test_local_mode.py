"""The local runner contexts patch Beam internals by name: a Beam upgrade that renames one must
fail here, loudly, not leave a local run silently unpatched. They also undo what they patch."""
from __future__ import annotations

import importlib

import pytest

from pipelines import local_mode


@pytest.mark.parametrize("name", local_mode.PATCHED_EVALUATOR_ATTRIBUTES)
def test_every_patched_pubsub_evaluator_attribute_still_exists(name: str) -> None:
    from apache_beam.runners.direct.transform_evaluator import _PubSubReadEvaluator

    assert name in _PubSubReadEvaluator.__dict__, f"Beam renamed _PubSubReadEvaluator.{name}"


@pytest.mark.parametrize("module, name", local_mode.PATCHED_MODULE_ATTRIBUTES)
def test_every_patched_module_attribute_still_exists(module: str, name: str) -> None:
    assert hasattr(importlib.import_module(module), name), f"Beam renamed {module}.{name}"


def test_the_keyed_watermark_hold_the_durable_read_sets_is_still_there() -> None:
    from apache_beam.runners.direct.util import TransformResult

    assert "keyed_watermark_holds" in TransformResult.__init__.__code__.co_varnames


def test_the_contexts_undo_their_patches(tmp_path) -> None:
    from apache_beam.runners.direct.transform_evaluator import _PubSubReadEvaluator
    from apache_beam.runners.portability.fn_api_runner import worker_handlers

    before = {name: _PubSubReadEvaluator.__dict__[name] for name in local_mode.PATCHED_EVALUATOR_ATTRIBUTES}
    with local_mode.local_runner(tmp_path, 3_600_000_000):
        assert all(_PubSubReadEvaluator.__dict__[n] is not before[n] for n in before)
    assert {n: _PubSubReadEvaluator.__dict__[n] for n in before} == before
    size = worker_handlers.STATE_CACHE_SIZE_MB
    with local_mode.local_bounded_runner():
        assert worker_handlers.STATE_CACHE_SIZE_MB == 0
    assert worker_handlers.STATE_CACHE_SIZE_MB == size
