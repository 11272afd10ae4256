# The in-process API is handy for setting up what real processes then work on.
from tests.integration.conftest import (  # noqa: F401
    admin_token,
    app,
    client,
    make_token,
    settings,
    writer_token,
)
