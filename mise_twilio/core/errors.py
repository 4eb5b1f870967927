"""The exception tree. Every error mise_twilio raises on purpose is a ``MiseError``::

    MiseError
     ├── ProtocolError    a Twilio message that cannot be used (becomes a ``diagnostic``
     │                    record inside the core; never ends a call)
     ├── WebhookError     a status callback that cannot become an event (the edge answers 4xx)
     ├── ConfigError      settings that cannot work (the CLI prints one line, exits 2)
     └── SinkError        a sink could not deliver (the hub retries or dead-letters)
          └── DeliveryError   ... with the reason, the receiver's Retry-After and HTTP status

Anything else that escapes mise_twilio is a bug.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DeliveryError",
    "MiseError",
    "ProtocolError",
    "SinkError",
    "WebhookError",
]


class MiseError(Exception):
    """Base class of mise_twilio's own errors."""


class ProtocolError(MiseError):
    """A Twilio message that cannot be used: not JSON, wrong shape, bad payload, wrong stream.

    ``code`` is a stable snake_case identifier (it becomes ``diagnostic.code`` in records);
    ``sequence_number`` is Twilio's ``sequenceNumber`` when it could be read.
    """

    def __init__(self, code: str, message: str, *, sequence_number: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.sequence_number = sequence_number


class ConfigError(MiseError):
    """Settings that cannot work (an auth token without a public URL, a bad public URL, an
    unwritable data directory). The message names the setting and says what it needs."""


class WebhookError(MiseError):
    """A status callback that cannot be turned into an event (missing CallSid, unknown status).

    ``status_code`` is the HTTP status the edge should answer with (4xx).
    """

    def __init__(self, message: str, *, status_code: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code


class SinkError(MiseError):
    """A sink could not deliver a batch; ``retryable`` says whether trying again can help."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class DeliveryError(SinkError):
    """A ``SinkError`` with details the hub uses.

    - ``reason``: short metric label, e.g. ``connect``, ``timeout``, ``http_503``, ``redis``.
    - ``retry_after_s``: the receiver asked us to wait this long before retrying (seconds,
      e.g. from HTTP ``Retry-After``); the hub waits at least this long instead of its backoff.
    - ``status_code``: the HTTP status, when there was one.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = True,
        reason: str = "error",
        retry_after_s: float | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message, retryable=retryable)
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.status_code = status_code
