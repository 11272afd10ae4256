"""How the worker's loops live through database errors: an outage note and a run of errors.

Every loop that talks to the database (claims, lease renewal, heartbeat) keeps going
whatever the database does: an outage is logged once by `Outage`, any other error
with its traceback and advice by the loop's own `Trouble`, which also says how long
to pause before the next try.
"""

from __future__ import annotations

import logging

from pao import db

log = logging.getLogger(__name__)

# Pauses after an unexpected database error, one more each time it happens again in a row.
ERROR_PAUSES = (0.1, 0.5, 1.0, 2.0, 5.0)


class Outage:
    """Whether the database was last seen unavailable; says so once when that changes."""

    def __init__(self) -> None:
        self.down = False

    def failed(self) -> None:
        if not self.down:
            log.warning("database unavailable; the worker keeps retrying")
        self.down = True

    def ok(self) -> None:
        if self.down:
            log.info("database is back")
        self.down = False


class Trouble:
    """A loop's run of unexpected errors: the first is logged with its traceback and what
    to do, the rest are counted; the pause before the next try grows with the run."""

    def __init__(self, doing: str) -> None:
        self.doing = doing
        self.failures = 0

    def failed(self, exc: BaseException) -> float:
        """Note an error; how long to pause before trying again."""
        self.failures += 1
        if self.failures == 1:
            log.error("%s failed: %s; %s", self.doing, exc, db.advice(exc), exc_info=exc)
        elif self.failures % 100 == 0:
            log.error("%s has failed %s times in a row: %s", self.doing, self.failures, exc)
        return ERROR_PAUSES[min(self.failures, len(ERROR_PAUSES)) - 1]

    def ok(self) -> None:
        if self.failures:
            log.info("%s works again (after %s failures)", self.doing, self.failures)
        self.failures = 0
