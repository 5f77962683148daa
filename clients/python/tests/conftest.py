from __future__ import annotations

import pytest
from support import host_address


@pytest.fixture
def address() -> str:
    """The running baton host (BATON_TEST_HOST), with the chaos plugin."""
    return host_address()
