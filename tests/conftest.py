"""Suite-wide fixtures.

A canary API key sits in the environment of the whole test session: no test may ever see it
in any output, file, record or report (checked by tests/test_secrets.py and by the run tests).
"""

from __future__ import annotations

import os

import pytest

CANARY_KEY = "rw-canary-7f3e9d1c2b4a5e6f8091a2b3c4d5e6f7"
os.environ["RUNWARE_API_KEY"] = CANARY_KEY
os.environ.pop("RUNWARE_BASE_URL", None)


@pytest.fixture()
def no_waiting():
    """Backoff and polling waits switched off for one test (reset after it, below)."""
    from specrunner.run import set_testing

    set_testing(True)


@pytest.fixture(autouse=True)
def _reset_retry_waits():
    """Whatever a test switched in the client's testing mode, the next test starts clean."""
    yield
    from specrunner.run import set_testing

    set_testing(False)
