from __future__ import annotations

import pytest

from fmai_core.testing import EchoBackend


@pytest.fixture
def echo() -> EchoBackend:
    return EchoBackend()
