"""Secret-looking parameters are masked by key words, at any depth."""

from __future__ import annotations

from pudato_registry import masking


def test_keys_with_a_secret_word_are_masked_at_any_depth() -> None:
    value = {"db_password": "p", "apiKey": "k", "AWS_SECRET_ACCESS_KEY": "s",
             "nested": [{"token": "t", "monkey": "m", "tokenizer": "bpe", "author": "a"}],
             "primary_key": None, "date": "2026-12-01"}
    assert masking.masked(value) == {
        "db_password": masking.MASK, "apiKey": masking.MASK,
        "AWS_SECRET_ACCESS_KEY": masking.MASK,
        "nested": [{"token": masking.MASK, "monkey": "m", "tokenizer": "bpe", "author": "a"}],
        "primary_key": None, "date": "2026-12-01"}


def test_the_words_are_configurable() -> None:
    assert masking.masked({"salt": 1, "password": 2}, ["salt"]) == {"salt": masking.MASK,
                                                                   "password": 2}


def test_a_job_row_is_masked_in_its_parameters_and_request_only() -> None:
    job = {"job_id": "token-1", "parameters": {"token": "x"}, "request": {"key": "y"},
           "metadata": {"token": "z"}}
    assert masking.masked_job(job) == {"job_id": "token-1",
                                       "parameters": {"token": masking.MASK},
                                       "request": {"key": masking.MASK},
                                       "metadata": {"token": "z"}}
