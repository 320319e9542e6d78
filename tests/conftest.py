"""Shared test configuration. Fixtures live in tests/fixtures_*.py modules and are imported by the
test modules that use them (`from tests.fixtures_aws import moto_server  # noqa: F401`)."""

import logging

logging.getLogger("werkzeug").setLevel(logging.ERROR)
