"""The HTTP sink: POST batches of records to an ingest endpoint (httpx).

Request, one per batch::

    POST <url>
    Content-Type: application/json
    Authorization: Bearer <token>            (when a token is configured)
    Idempotency-Key: <64 hex>                (SHA-256 of the batch's record ids, in order)
    X-Mise-Record-Count: <n>

    [{...record...}, {...record...}]         (a JSON array of records, publish order)

The body is a bare JSON array of the records exactly as published (schema_version 1, each with
``id`` and ``type``); the records' text is spliced in, not re-serialised. A retry of the same
batch carries the same ``Idempotency-Key``, so a receiver can drop the repeat; a receiver
without idempotency support can deduplicate on the records' ``id``.

Responses: 2xx = delivered. Retryable (``SinkError.retryable``): connect errors, timeouts and
other transport errors, 408, 425, 429 and 5xx, and also 401, 403, 404 and 407: those say *our*
configuration is wrong (token, URL, proxy), not the batch, so the records wait in the spool
until someone fixes it instead of being dead-lettered by the thousand. ``Retry-After``
(delta-seconds or HTTP-date) on 429/503 becomes ``DeliveryError.retry_after_s``, which the
hub waits at least. Any other status (3xx, other 4xx) is not retryable:
``DeliveryError(retryable=False)`` with the status and the first ``error_body_max_chars`` of
the body; the hub then isolates the rejected records by bisection and dead-letters them.
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from mise_twilio.server.sinks.base import DeliveryError, Envelope

RETRYABLE_STATUS = frozenset({401, 403, 404, 407, 408, 425, 429})
RETRY_AFTER_MAX_S = 3600.0
"""Upper bound on an honoured ``Retry-After`` (seconds): a bogus far-future date must not park
a sink for days."""


def idempotency_key(batch: list[Envelope]) -> str:
    """SHA-256 (hex, 64 chars) of the batch's record ids joined by ``\\n``: the same records in
    the same order always give the same key."""
    h = hashlib.sha256()
    for e in batch:
        h.update(e.id.encode())
        h.update(b"\n")
    return h.hexdigest()


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds to wait (>= 0, at most ``RETRY_AFTER_MAX_S``), or None.

    Accepts delta-seconds (``"120"``) or an HTTP-date (``"Wed, 21 Oct 2015 07:28:00 GMT"``,
    RFC 9110 §10.2.3) compared with ``now`` (default: the current UTC time). Anything else: None.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_MAX_S)


class HttpSink:
    """POSTs each batch as a JSON array to ``url`` (see the module docstring for the contract).

    - ``bearer_token``: sent as ``Authorization: Bearer <token>`` when given.
    - ``connect_timeout_s``, ``read_timeout_s``, ``write_timeout_s``, ``pool_timeout_s``:
      httpx timeouts, seconds.
    - ``error_body_max_chars``: how much of a rejecting response's body goes into the error.
    - ``transport``: an httpx transport to use instead of the network (tests, proxies).
    - ``name``: sink name (spool directory, metric label).

    ``ready()`` does no I/O: True until a delivery fails, and again after one succeeds.
    """

    def __init__(
        self,
        url: str,
        bearer_token: str | None = None,
        *,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 15.0,
        write_timeout_s: float = 15.0,
        pool_timeout_s: float = 5.0,
        error_body_max_chars: int = 500,
        transport: httpx.AsyncBaseTransport | None = None,
        name: str = "http",
    ) -> None:
        self.name = name
        self.url = url
        self._headers = {
            "Content-Type": "application/json",
            "User-Agent": "mise-twilio-sink/1",
        }
        if bearer_token:
            self._headers["Authorization"] = f"Bearer {bearer_token}"
        self._timeout = httpx.Timeout(
            connect=connect_timeout_s,
            read=read_timeout_s,
            write=write_timeout_s,
            pool=pool_timeout_s,
        )
        self.error_body_max_chars = error_body_max_chars
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._last_ok = True

    async def open(self) -> None:
        """Create the connection pool (no request is made)."""
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self._timeout,
                headers=self._headers,
                follow_redirects=False,
                transport=self._transport,
            )

    async def deliver(self, batch: list[Envelope]) -> None:
        """POST ``batch``. Raises ``DeliveryError`` (``reason``: ``connect``, ``timeout``,
        ``transport``, ``http_<status>``; ``status_code``; ``retry_after_s`` when given)."""
        if self._client is None:
            raise DeliveryError("http sink is not open", reason="not_open")
        body = ("[" + ",".join(e.json for e in batch) + "]").encode()
        headers = {
            "Idempotency-Key": idempotency_key(batch),
            "X-Mise-Record-Count": str(len(batch)),
        }
        try:
            response = await self._client.post(self.url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            self._last_ok = False
            raise DeliveryError(f"POST {self.url}: timeout ({exc!r})", reason="timeout") from exc
        except httpx.ConnectError as exc:
            self._last_ok = False
            raise DeliveryError(
                f"POST {self.url}: connect failed ({exc})", reason="connect"
            ) from exc
        except httpx.HTTPError as exc:
            self._last_ok = False
            raise DeliveryError(f"POST {self.url}: {exc!r}", reason="transport") from exc
        status = response.status_code
        if 200 <= status < 300:
            self._last_ok = True
            return
        self._last_ok = False
        excerpt = response.text[: self.error_body_max_chars]
        retryable = status in RETRYABLE_STATUS or status >= 500
        retry_after_s = (
            parse_retry_after(response.headers.get("Retry-After")) if retryable else None
        )
        raise DeliveryError(
            f"POST {self.url}: HTTP {status}: {excerpt}",
            retryable=retryable,
            reason=f"http_{status}",
            retry_after_s=retry_after_s,
            status_code=status,
        )

    async def ready(self) -> bool:
        """True when the last delivery succeeded, or none was tried yet."""
        return self._client is not None and self._last_ok

    async def close(self) -> None:
        """Close the connection pool. Idempotent."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
