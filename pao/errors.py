"""Domain errors shared by every process.

Each error's docstring is its default message, so raising one needs no text.
The API maps these to RFC 7807 problem responses in one place
(`api/problems.py`); nothing else decides status codes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    """One invalid field: `loc` is the path into the request body, e.g.
    ``("payload", "pipeline", 1, "with", "url")``."""

    loc: tuple[str | int, ...]
    message: str


class PaoError(Exception):
    """Something went wrong in the orchestrator."""

    # True when doing the same again cannot succeed: a run failing with it is not retried.
    final = False

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


class InvalidInput(PaoError):
    """The request is not valid; see `errors` for each field."""

    def __init__(self, errors: list[FieldError], message: str | None = None) -> None:
        super().__init__(message)
        self.errors = errors

    @classmethod
    def one(cls, loc: tuple[str | int, ...], message: str) -> InvalidInput:
        return cls([FieldError(loc, message)])


class AssetInputRefused(InvalidInput):
    """A step's input names an asset that does not exist, that its task's owner may not use,
    or whose media type the tool does not take."""

    final = True  # the same ids would be refused again


class NotFound(PaoError):
    """No such object, or it belongs to another agent."""


class Conflict(PaoError):
    """The object is not in a state that allows this change."""


class ClaimLost(Conflict):
    """This claim no longer holds its step (its lease ran out, the step was claimed again,
    it already ended, or its run was cancelled): stop working on it."""


class TaskTypeUnavailable(PaoError):
    """The step's task type does not exist or is inactive; the step cannot be offered."""

    final = True


class IdempotencyInFlight(PaoError):
    """A request with this Idempotency-Key is still being processed; retry shortly."""


class IdempotencyMismatch(PaoError):
    """This Idempotency-Key was already used with a different request body."""


class Unauthenticated(PaoError):
    """Missing, unknown, revoked or expired bearer token."""


class Forbidden(PaoError):
    """The token lacks the scope this endpoint needs."""


class MissingScope(Forbidden):
    """The agent (or the owner of the task whose step this is) lacks a scope it needs."""

    final = True

    def __init__(self, message: str, *, scope: str) -> None:
        super().__init__(message)
        self.scope = scope


class DatabaseUnavailable(PaoError):
    """The database cannot be reached right now; retry shortly."""


class NotMigrated(PaoError):
    """The database schema is not up to date: run `pao migrate` first."""


class PreconditionFailed(PaoError):
    """The object changed since you read it; fetch it again and retry."""


class RateLimited(PaoError):
    """Too many requests; retry after the number of seconds in Retry-After."""

    def __init__(self, message: str | None = None, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooLarge(PaoError):
    """The request body is larger than this server accepts."""


class UploadStalled(PaoError):
    """The client sent nothing for a minute; the upload was given up and nothing kept."""


class UploadInterrupted(PaoError):
    """The client closed the connection before the upload ended; nothing was kept."""


class UnsupportedMediaType(PaoError):
    """The request body is not of a type this endpoint reads."""


class RangeNotSatisfiable(PaoError):
    """The requested range lies beyond the end of the content."""

    def __init__(self, message: str | None = None, *, size: int) -> None:
        super().__init__(message)
        self.size = size


class BudgetExceeded(RateLimited):
    """The agent's budget has no room for this run; retry after Retry-After seconds (when
    its window resets), or ask an admin to raise the budget."""

    final = True  # a run refused by a budget is not retried: the next window decides


class RunRateLimited(RateLimited):
    """The agent has started max_runs_per_hour runs this hour; retry after Retry-After."""


class QuotaExceeded(PaoError):
    """This agent has reached one of its quotas."""
