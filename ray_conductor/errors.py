"""Exception types for people: each says what was wrong and what to do.

Every error the project raises on bad input derives from `ConductorError`, so that the CLI
prints one clean line and the HTTP layer maps it to a 4xx with the same message.
"""

from __future__ import annotations


class ConductorError(Exception):
    """Base class: `code` is a stable machine-readable reason, `str(e)` is for people."""

    code: str = "error"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(ConductorError):
    """A config file, key or command-line override is wrong."""

    code = "bad_config"


class WorkflowError(ConductorError):
    """The conductor's plan cannot be parsed or breaks a rule of the workflow language.

    Reason codes: `missing_list`, `length_mismatch`, `empty_workflow`, `unknown_worker`,
    `worker_out_of_range`, `bad_access` (also a bad condition, or a vote that reads nothing),
    `forward_access`, `too_many_steps`, `bad_subtask`, `too_long`, `unparsable`.
    """

    code = "bad_workflow"


class DataError(ConductorError):
    """A data file is missing, unreadable or not in the format its importer expects."""

    code = "bad_data"


class PoolError(ConductorError):
    """A worker pool cannot answer: unknown worker, unknown query, or a recorded hole."""

    code = "pool_error"


class WorkerCallError(ConductorError):
    """A worker call failed after retries and fallbacks."""

    code = "worker_failed"


class RateLimitTimeout(WorkerCallError):
    """A call waited in the rate limiter's queue until its deadline passed."""

    code = "rate_limit_timeout"


class SandboxError(ConductorError):
    """Untrusted code could not be run in the sandbox (not: the code failed its tests)."""

    code = "sandbox_error"


class EngineError(ConductorError):
    """The conductor's generation engine failed (e.g. out of GPU memory) where a plan was
    needed for learning, not just for answering."""

    code = "engine_error"


class BadRequest(ConductorError):
    """An HTTP request body is malformed: `param` names the field, `status` is the HTTP status
    to answer with (400 unless the resource is missing), `code` OpenAI's error code if any."""

    code = "invalid_request_error"

    def __init__(self, message: str, param: str | None = None, code: str | None = None,
                 status: int = 400):
        super().__init__(message, code)
        self.param, self.status = param, status


class ServeError(ConductorError):
    """A request the serving app refuses or cannot answer, in OpenAI's error shape: `status`
    is the HTTP status, `type` OpenAI's error type, `code` a stable reason, `param` the
    request field at fault (None when no one field is)."""

    code = "invalid_request_error"

    def __init__(self, message: str, status: int = 400, *, code: str | None = None,
                 type: str = "invalid_request_error", param: str | None = None):
        super().__init__(message, code)
        self.status, self.type, self.param = status, type, param


class TrainingError(ConductorError):
    """A training run stopped because its loss or weights turned non-finite (a setting or the
    data drove it there); nothing was saved."""

    code = "training_diverged"


class RunFailed(ConductorError):
    """A command ran but produced nothing to report (e.g. every worker call failed); the
    message names the most common causes. The CLI exits 1, not 2: the input may be fine."""

    code = "run_failed"
