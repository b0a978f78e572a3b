"""The translator is total: no mutation of a captured RunEvent makes it raise or emit bad events."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pudato_registry import inputs
from pudato_registry import openlineage as ol
from pudato_registry.validate import Rejection, validate
from tests.fuzz import encode, mutate, samples

SAMPLES = samples()
LIMIT = ol.Options().max_message_bytes


def check(value: bytes) -> None:
    """What every input must give: an answer, never a raise; only valid events that fit."""
    result = ol.translate_strict(value)
    if isinstance(result, Rejection):
        assert not result.message.startswith("translated "), result  # a translator bug
    elif isinstance(result, inputs.Translated):
        for key, event in result.messages:
            assert len(event) <= LIMIT
            checked = validate(event, LIMIT)
            assert not isinstance(checked, Rejection), checked
            assert key == checked.correlation_id.encode()


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(SAMPLES) - 1), st.integers(1, 4), st.randoms(use_true_random=False))
def test_no_mutation_of_a_captured_run_event_makes_the_translator_raise(
        which: int, edits: int, rng: random.Random) -> None:
    check(encode(mutate(SAMPLES[which], rng, edits)))


@pytest.mark.parametrize("change", [
    {"eventType": []}, {"eventType": {}}, {"inputs": True}, {"outputs": {"a": 1}},
    {"run": {"runId": "r", "facets": {"tags": {"tags": 5}}}},
    {"run": {"runId": "r", "facets": {"tags": {"tags": [{"key": 10**5000, "value": 1}]}}}},
    {"run": {"runId": "r", "facets": {"test": {"tests": 5}}}, "eventType": "FAIL"},
    {"inputs": [{"namespace": "n", "name": "t", "inputFacets": {
        "dataQualityAssertions": {"assertions": 5}}}], "eventType": "FAIL"},
    {"inputs": [{"namespace": "n", "name": "t", "facets": {"symlinks": {"identifiers": 7}}}]},
    {"job": {"namespace": "n", "name": "j", "facets": {"jobType": {"jobType": 10**5000}}}},
    {"run": {"runId": "r", "facets": {"parent": {"run": {"runId": "p"}, "job": {},
                                                 "root": {"run": {"runId": "x" * 5000}}}}}},
])
def test_the_fields_a_review_found_raising_are_read_safely(change: dict[str, object]) -> None:
    message = {"eventType": "START", "eventTime": "2026-11-30T00:00:00Z",
               "run": {"runId": "r"}, "job": {"namespace": "n", "name": "j"}, **change}
    check(encode(message))
    assert not isinstance(ol.translate(encode(message)), Exception)


def test_the_last_resort_turns_any_raise_into_a_rejection(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object) -> object:
        raise TypeError("unhashable type: 'list'")

    monkeypatch.setattr(ol, "translate_strict", broken)
    result = ol.translate(b'{"eventType": []}')
    assert isinstance(result, Rejection)
    assert "TypeError: unhashable type" in result.message
