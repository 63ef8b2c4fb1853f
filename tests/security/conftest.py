"""The security suite runs routers the way the e2e suite does: the same fixtures."""

from tests.e2e.conftest import (  # noqa: F401 -- fixtures, found by name
    backend_a,
    backend_f,
    config_path,
    fleet,
    make_config,
    mock,
    router,
    start_router,
)
