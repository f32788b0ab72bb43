"""One error hierarchy for the whole gateway.

Plugins and the core raise these; one handler (gateway.app) renders them as the seed's
envelope ``{"msg": ..., "data": null}`` with the class's HTTP status.
"""
from __future__ import annotations


class GatewayError(Exception):
    """Base class: an error a client may see, with its HTTP status."""

    status = 500
    default_msg = "Internal error"

    def __init__(self, msg: str | None = None, *, errors: dict | None = None,
                 headers: dict | None = None):
        super().__init__(msg or self.default_msg)
        self.msg = msg or self.default_msg
        self.errors = errors
        self.headers = dict(headers or {})


class ConfigError(GatewayError):
    """The configuration is wrong; raised at start-up, never while serving."""
    status = 500
    default_msg = "Invalid configuration"


class BadRequest(GatewayError):
    status = 400
    default_msg = "Bad request"


class ClientTimeout(GatewayError):
    """The request body stopped arriving (``client_io_timeout``, gateway/serving.py)."""
    status = 408
    default_msg = "Request timeout: the request body stopped arriving"


class InvalidInput(GatewayError):
    """Well-formed request whose content is not acceptable (field errors in ``errors``)."""
    status = 422
    default_msg = "Invalid input"


class Unauthorized(GatewayError):
    status = 401
    default_msg = "Not logged in or session expired: log in again with POST /login"

    def __init__(self, msg: str | None = None, **kwargs):
        super().__init__(msg, **kwargs)
        # RFC 9110: a 401 names its scheme (here RFC 6750's bearer token).
        self.headers.setdefault("WWW-Authenticate", 'Bearer realm="hpc-gateway"')


class Forbidden(GatewayError):
    status = 403
    default_msg = "Permission denied"


class NotFound(GatewayError):
    status = 404
    default_msg = "Not found"


class Conflict(GatewayError):
    """The action is not valid in the object's current state."""
    status = 409
    default_msg = "Conflict with the current state"


class Gone(GatewayError):
    status = 410
    default_msg = "Gone"


class PayloadTooLarge(GatewayError):
    status = 413
    default_msg = "Request body too large"


class RetryLater(GatewayError):
    """An error the client should retry: it carries a Retry-After header (seconds)."""
    retry_after = 5

    def __init__(self, msg: str | None = None, *, retry_after: int | None = None, **kw):
        super().__init__(msg, **kw)
        self.headers.setdefault("Retry-After", str(int(self.retry_after if retry_after is None else retry_after)))


class TooManyRequests(RetryLater):
    status = 429
    default_msg = "Too many requests"
    retry_after = 60


class NotImplementedByPlugin(GatewayError):
    status = 501
    default_msg = "Not supported by this scheduler backend"


class SchedulerRefused(GatewayError):
    """The scheduler answered but refused; ``msg`` carries its own words verbatim."""
    status = 502
    default_msg = "The scheduler refused the request"


class ServiceUnavailable(RetryLater):
    """Something the gateway depends on (its session store) does not answer."""
    status = 503
    default_msg = "The gateway's session store is unreachable; try again later"


class SchedulerUnavailable(RetryLater):
    status = 503
    default_msg = "The scheduler is unreachable; try again later"


class SchedulerTimeout(GatewayError):
    status = 504
    default_msg = "The scheduler did not answer in time"
