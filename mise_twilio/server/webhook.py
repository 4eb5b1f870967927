"""The Starlette edge for status callbacks: ``POST`` / ``GET /v1/webhook/twilio``.

Per request: read the body with a size cap (413), decode the urlencoded form (400), check
``X-Twilio-Signature`` when configured (403), parse (400, ``status.parse_status_callback``), feed
``CallLifecycle`` with the injected clock, hand released records to ``publish`` (which only
enqueues) and answer ``204`` (Twilio: "Status callbacks do not control call flow",
https://www.twilio.com/docs/usage/webhooks/voice-webhooks). Every refusal answers a short
``text/plain`` reason and logs one structlog warning; nothing is published.

Forms are decoded here with ``urllib.parse.parse_qsl`` over the capped body, not with
``request.form()``: that needs ``python-multipart`` (not a dependency) and would not give us the
strict UTF-8 / percent-encoding errors. Logs carry ``call_sid``, statuses and reasons, never
form values: phone numbers never reach the log.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from urllib.parse import parse_qsl

import structlog
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response

from mise_twilio.core.errors import WebhookError
from mise_twilio.core.lifecycle import CallLifecycle, Dropped
from mise_twilio.core.pii import PiiPolicy
from mise_twilio.core.records import CallStatusEvent
from mise_twilio.core.status import USED_FIELDS, StatusEvent, parse_status_callback
from mise_twilio.server.signature import (
    SIGNATURE_HEADER,
    SIGNATURE_SETTINGS_HEADER,
    TwilioSignature,
)

__all__ = [
    "MAX_FORM_FIELDS",
    "WEBHOOK_PATH",
    "decode_form",
    "make_webhook_endpoint",
    "run_lifecycle_poller",
]

WEBHOOK_PATH = "/v1/webhook/twilio"
MAX_FORM_FIELDS = 200
"""More fields than this is not a Twilio callback (real ones carry about 30)."""

_FORM_TYPE = "application/x-www-form-urlencoded"
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SID_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,64}")

Publish = Callable[[StatusEvent], None]
Endpoint = Callable[[Request], Awaitable[Response]]
Count = Callable[[str], None]

_log = structlog.get_logger("mise_twilio.server.webhook")


def decode_form(text: str) -> list[tuple[str, str]]:
    """An ``application/x-www-form-urlencoded`` string → ``(name, value)`` pairs in wire order.

    ``+`` is a space; blank values are kept; empty segments (``a=1&&b=2``) are skipped.
    Raises ``WebhookError`` (400) for a ``%`` not followed by two hex digits, percent-escapes
    that do not decode as UTF-8, or more than ``MAX_FORM_FIELDS`` fields.
    """
    if _BAD_PERCENT.search(text):
        raise WebhookError("malformed percent-encoding in form data")
    try:
        return parse_qsl(
            text,
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FORM_FIELDS,
        )
    except UnicodeDecodeError:
        raise WebhookError("form data is not valid UTF-8 after percent-decoding") from None
    except ValueError:
        raise WebhookError(f"too many form fields (max {MAX_FORM_FIELDS})") from None


def _as_params(pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    params: dict[str, str] = {}
    for name, value in pairs:
        if name in params and name in USED_FIELDS and params[name] != value:
            raise WebhookError(f"form field {name} given more than once")
        params[name] = value
    return params


async def _read_body(request: Request, max_body_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise WebhookError("invalid Content-Length")
        if int(declared) > max_body_bytes:
            raise WebhookError(f"body over {max_body_bytes} bytes", status_code=413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_body_bytes:
            raise WebhookError(f"body over {max_body_bytes} bytes", status_code=413)
    return bytes(body)


async def _read_pairs(request: Request, max_body_bytes: int) -> list[tuple[str, str]]:
    if request.method == "GET":
        query = request.scope.get("query_string", b"")
        if len(query) > max_body_bytes:
            raise WebhookError(f"query string over {max_body_bytes} bytes", status_code=413)
        return decode_form(query.decode("latin-1"))
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != _FORM_TYPE:
        raise WebhookError(f"expected Content-Type {_FORM_TYPE}", status_code=415)
    body = await _read_body(request, max_body_bytes)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise WebhookError("form data is not valid UTF-8") from None
    return decode_form(text)


def _call_sid_for_log(pairs: Sequence[tuple[str, str]]) -> str | None:
    """The request's CallSid when it looks like a SID (it is unauthenticated until checked)."""
    for name, value in pairs:
        if name == "CallSid":
            return value if _SID_SHAPE.fullmatch(value) else None
    return None


def _log_dropped(dropped: list[Dropped]) -> None:
    for item in dropped:
        event = item.event
        status = event.call_status if isinstance(event, CallStatusEvent) else event.stream_event
        _log.info(
            "status_dropped",
            call_sid=event.call_sid,
            record_id=event.id,
            status=status,
            sequence_number=getattr(event, "sequence_number", None),
            reason=item.reason,
        )


def _emit(events: list[StatusEvent], publish: Publish) -> int:
    """Publish each event; log and count failures, never stop early."""
    failures = 0
    for event in events:
        try:
            publish(event)
        except Exception:
            failures += 1
            _log.exception("publish_failed", call_sid=event.call_sid, record_id=event.id)
    return failures


def make_webhook_endpoint(
    *,
    signature: TwilioSignature | None,
    lifecycle: CallLifecycle,
    pii: PiiPolicy,
    publish: Publish,
    max_body_bytes: int,
    clock: Callable[[], float] = time.monotonic,
    count: Count | None = None,
    on_held: Publish | None = None,
) -> Endpoint:
    """A Starlette endpoint (``async (Request) -> Response``) for Twilio status callbacks.

    Mount it for ``GET`` and ``POST``, e.g.
    ``Route(WEBHOOK_PATH, make_webhook_endpoint(...), methods=["GET", "POST"])``.

    ``signature``: checks ``X-Twilio-Signature`` over ``public_url + request path (+ query)``
    and the form params (POST) — ``None`` disables the check (the server should warn).
    ``lifecycle``: dedupe/reorder state (``CallLifecycle``), fed with ``clock()`` seconds.
    ``pii``: redaction of From/To/CallerName/ForwardedFrom. ``publish``: called once per
    released record (``CallStatusEvent`` | ``StreamStatusEvent``); it must not block (enqueue).
    ``max_body_bytes``: body (POST) or query string (GET) cap, bytes. ``count``: called once
    per request with its outcome (``accepted``, ``rejected``, ``forbidden``, ``too_large``,
    ``unsupported``, ``disconnected``, ``error``), e.g. to count ``mise_webhook_requests_total``.
    ``on_held``: called with an accepted event the lifecycle holds for reordering (published
    later through ``publish``), e.g. to tell other replicas its status now; must not block.

    Responses: ``204`` accepted (also for duplicates and held or dropped events, so Twilio does
    not retry); ``400`` malformed form or callback; ``403`` bad or missing signature; ``405``
    other methods; ``413`` body over ``max_body_bytes`` (refused from ``Content-Length`` before
    reading, or while streaming); ``415`` a POST that is not
    ``application/x-www-form-urlencoded``; ``500`` when ``publish`` raised. A client that goes
    away before its body arrived whole gets nothing (one log line). Reasons name the field and
    what it must be, never its value.
    """
    if max_body_bytes < 1:
        raise ValueError("max_body_bytes must be >= 1")
    tally: Count = count or (lambda _: None)

    def refuse(exc: WebhookError, log: structlog.typing.FilteringBoundLogger) -> Response:
        log.warning("webhook_rejected", status_code=exc.status_code, reason=exc.message)
        outcome = {413: "too_large", 415: "unsupported"}.get(exc.status_code, "rejected")
        tally(outcome)
        return PlainTextResponse(exc.message, status_code=exc.status_code)

    async def endpoint(request: Request) -> Response:
        log = _log.bind(method=request.method, path=request.url.path)
        if request.method not in ("GET", "POST"):
            tally("rejected")
            return PlainTextResponse("method not allowed", status_code=405)
        try:
            pairs = await _read_pairs(request, max_body_bytes)
        except WebhookError as exc:
            return refuse(exc, log)
        except ClientDisconnect:
            # The body never arrived whole (a cut chunked body, a dropped connection): there is
            # nobody to answer.
            log.warning("webhook_client_disconnected", reason="body incomplete")
            tally("disconnected")
            return Response(status_code=400)

        log = log.bind(call_sid=_call_sid_for_log(pairs))
        if signature is not None:
            header = request.headers.get(SIGNATURE_HEADER)
            query = request.scope.get("query_string", b"").decode("latin-1")
            signed_params: Sequence[tuple[str, str]] = [] if request.method == "GET" else pairs
            if not header:
                reason = f"missing {SIGNATURE_HEADER}"
            elif not signature.check_webhook(
                request.url.path,
                signed_params,
                header,
                query=query,
                signature_settings=request.headers.get(SIGNATURE_SETTINGS_HEADER),
            ):
                reason = f"{SIGNATURE_HEADER} does not match {signature.public_url}"
            else:
                reason = ""
            if reason:
                log.warning("webhook_forbidden", status_code=403, reason=reason)
                tally("forbidden")
                return PlainTextResponse("invalid Twilio signature", status_code=403)

        try:
            params: Mapping[str, str] = _as_params(pairs)
            event = parse_status_callback(params, pii=pii)
        except WebhookError as exc:
            return refuse(exc, log)

        released = lifecycle.accept(event, clock())
        if on_held is not None and lifecycle.holds(event):
            on_held(event)
        _log_dropped(lifecycle.take_dropped())
        if _emit(released, publish):
            tally("error")
            return PlainTextResponse("could not publish the event", status_code=500)
        log.debug("webhook_accepted", record_id=event.id, released=len(released))
        tally("accepted")
        return Response(status_code=204)

    return endpoint


async def run_lifecycle_poller(
    lifecycle: CallLifecycle,
    publish: Publish,
    interval_s: float = 0.25,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Forever: every ``interval_s`` seconds, release events whose reorder window expired.

    Run it as a task next to the server (cancel it on shutdown, then publish
    ``lifecycle.flush(clock())``). ``clock`` must be the endpoint's clock. A raising
    ``publish`` is logged and the loop goes on.
    """
    if interval_s <= 0:
        raise ValueError("interval_s must be > 0")
    while True:
        await asyncio.sleep(interval_s)
        released = lifecycle.poll(clock())
        _log_dropped(lifecycle.take_dropped())
        _emit(released, publish)
