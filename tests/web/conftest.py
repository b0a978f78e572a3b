"""Fixtures of the UI tests: a registry built once per module, an app over it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from pudato_registry import kafka
from pudato_registry.settings import Settings
from pudato_registry.web import app as web
from tests.helpers import drain, messages_of
from tests.services import Services, fresh_database, produce, settings_for
from tests.web.registry import pool_for, registry_events


@pytest.fixture(scope="module")
def registry(services: Services) -> Iterator[Settings]:
    """A database and topics of the module's own, filled by the worker from the events."""
    with fresh_database(services.admin_url(), services.database_url) as url:
        made = settings_for(services.bootstrap_servers, url)
        kafka.create_topics(made)
        produce(made, messages_of(registry_events()))
        drain(made)
        yield made


@pytest.fixture(scope="module")
def app(registry: Settings) -> Iterator[Flask]:
    """The UI over the registry, without a token, with the dead letters of its topic."""
    from pudato_registry.cli import _dead_letter_reader  # noqa: PLC0415

    with pool_for(registry.database_dsn) as pool:
        yield web.create_app(pool, web.UiConfig(refresh_s=0.5,
                                                dead_letters=_dead_letter_reader(registry)))


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """Flask's test client of the app."""
    return app.test_client()
