import pytest

# The in-process API is handy for setting up what real processes then work on.
from tests.integration.conftest import (  # noqa: F401
    admin_token,
    app,
    client,
    make_token,
    settings,
    writer_token,
)


@pytest.fixture(autouse=True)
def _no_default_metrics_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """Processes started here serve no metrics unless a test gives them a port of their own:
    several schedulers or workers (or other test runs) would all want the default one."""
    monkeypatch.setenv("PAO_METRICS_PORT", "0")
