"""The Redis Streams sink: one ``XADD`` per record (redis-py asyncio).

Each record becomes a stream entry with an auto-generated entry id and three fields::

    XADD <stream> MAXLEN ~ <maxlen_approx> * record <json> type <record type> id <record id>

``record`` holds the record's JSON exactly as published; ``type`` and ``id`` duplicate two of
its fields so consumers can filter without parsing. A batch is sent as one non-transactional
pipeline (one round trip). Downstream, read with consumer groups (``XREADGROUP``) and
deduplicate on ``id``: a retried batch may have been partly written before the connection broke
(at-least-once).
"""

from __future__ import annotations

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from mise_twilio.server.sinks.base import DeliveryError, Envelope

_RETRYABLE_RESPONSE_ERRORS: tuple[type[redis_errors.RedisError], ...] = (
    redis_errors.OutOfMemoryError,
    redis_errors.ReadOnlyError,
    redis_errors.TryAgainError,
    redis_errors.ClusterDownError,
)
"""Server replies that describe a passing condition (memory, failover), not a bad command."""


class RedisStreamSink:
    """Appends records to the Redis stream ``stream`` at ``url`` (``redis://``, ``rediss://``,
    ``unix://``).

    - ``maxlen_approx``: approximate stream length cap (``MAXLEN ~``), entries.
    - ``socket_connect_timeout_s``, ``socket_timeout_s``: redis-py socket timeouts, seconds.
    - ``name``: sink name (spool directory, metric label).

    redis-py's own retries are disabled: the hub retries (with backoff and spooling), and a
    quick failure lets it spool sooner. ``deliver`` raises ``DeliveryError``: retryable (reason
    ``redis_connection``, ``redis_timeout``, ``redis_busy``…) for connection trouble, timeouts,
    OOM, read-only replicas; not retryable (reason ``redis_response``) for other error
    replies such as ``WRONGTYPE`` (the key exists and is not a stream).
    """

    def __init__(
        self,
        url: str,
        stream: str = "mise:events",
        maxlen_approx: int = 1_000_000,
        *,
        socket_connect_timeout_s: float = 2.0,
        socket_timeout_s: float = 5.0,
        name: str = "redis",
    ) -> None:
        self.name = name
        self.url = url
        self.stream = stream
        self.maxlen_approx = maxlen_approx
        self.socket_connect_timeout_s = socket_connect_timeout_s
        self.socket_timeout_s = socket_timeout_s
        self._client: Redis | None = None

    async def open(self) -> None:
        """Create the client; connections are made lazily, so the server may still be down."""
        if self._client is None:
            self._client = Redis.from_url(
                self.url,
                socket_connect_timeout=self.socket_connect_timeout_s,
                socket_timeout=self.socket_timeout_s,
                retry=Retry(NoBackoff(), 0),
            )

    async def deliver(self, batch: list[Envelope]) -> None:
        """``XADD`` every envelope in one pipeline. Raises ``DeliveryError``."""
        if self._client is None:
            raise DeliveryError("redis sink is not open", reason="not_open")
        # execute() resets the pipeline and returns its connection to the pool, also on error.
        pipe = self._client.pipeline(transaction=False)
        for e in batch:
            pipe.xadd(
                self.stream,
                {"record": e.json, "type": e.type, "id": e.id},
                maxlen=self.maxlen_approx,
                approximate=True,
            )
        try:
            await pipe.execute()
        except redis_errors.TimeoutError as exc:
            raise DeliveryError(f"redis timeout: {exc}", reason="redis_timeout") from exc
        except redis_errors.ConnectionError as exc:
            raise DeliveryError(f"redis connection: {exc}", reason="redis_connection") from exc
        except _RETRYABLE_RESPONSE_ERRORS as exc:
            raise DeliveryError(f"redis busy: {exc}", reason="redis_busy") from exc
        except (redis_errors.ResponseError, redis_errors.DataError) as exc:
            raise DeliveryError(
                f"redis rejected XADD to {self.stream!r}: {exc}",
                retryable=False,
                reason="redis_response",
            ) from exc
        except (redis_errors.RedisError, OSError) as exc:
            raise DeliveryError(f"redis error: {exc!r}", reason="redis") from exc

    async def ready(self) -> bool:
        """``PING`` answered."""
        if self._client is None:
            return False
        try:
            return bool(await self._client.ping())
        except (redis_errors.RedisError, OSError):
            return False

    async def close(self) -> None:
        """Close the client and its connections. Idempotent."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
