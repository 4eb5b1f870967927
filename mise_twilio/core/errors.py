"""The exception tree. Every error mise_twilio raises on purpose is a ``MiseError``."""

from __future__ import annotations


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
    """Settings that cannot work together (e.g. a proxy upstream that is not ws:// or wss://)."""


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
