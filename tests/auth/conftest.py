from collections.abc import Iterator

import pytest

from tests.harness.identity import MockIdentityService


@pytest.fixture
def identity_service() -> Iterator[MockIdentityService]:
    with MockIdentityService() as service:
        yield service
