"""``X-Twilio-Signature`` checks for webhooks and WebSocket upgrades.

A thin wrapper over ``twilio.request_validator.RequestValidator`` (HMAC-SHA1 of the URL plus the
sorted POST params, base64; https://www.twilio.com/docs/usage/security#validating-requests); this
module never computes an HMAC itself. Its job is to build the URL Twilio signed:

* always from the configured public base URL (``MISE_PUBLIC_URL``), never from the request's
  ``Host`` / ``X-Forwarded-*`` headers, which proxies and tunnels rewrite;
* webhooks: ``public_url + path`` (+ ``"?" + query`` when the request had a query string; for a
  GET callback the params are in the query and the param dict is empty);
* WebSocket upgrades: the same base with ``https``→``wss`` / ``http``→``ws``, empty params,
  and also the trailing-``/`` variant (Twilio's "A few notes": "try appending a trailing /").

``RequestValidator.validate`` itself tries the URL both without a port and with the default
port added (``:443`` for https, ``:80`` otherwise), because Twilio drops the port of HTTPS voice
callbacks. So a public URL with or without ``:443`` validates either way.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from urllib.parse import urlsplit

from twilio.request_validator import RequestValidator, get_signature_algorithm

from mise_twilio.core.errors import ConfigError

__all__ = ["SIGNATURE_HEADER", "SIGNATURE_SETTINGS_HEADER", "Params", "TwilioSignature"]

SIGNATURE_HEADER = "X-Twilio-Signature"
SIGNATURE_SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"

Params = Mapping[str, str] | Sequence[tuple[str, str]]
"""Form params: a mapping (a plain dict, or a multi-dict with ``getlist``/``getall`` such as
Starlette's ``FormData``/``QueryParams``), or the ``(name, value)`` pairs in wire order
(repeated names allowed, as ``urllib.parse.parse_qsl`` returns them)."""


class _Pairs:
    """``(name, value)`` pairs as the multi-dict shape ``RequestValidator`` reads (``getall``)."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self._values: dict[str, list[str]] = {}
        for name, value in pairs:
            self._values.setdefault(name, []).append(value)

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def getall(self, name: str) -> list[str]:
        return self._values[name]


class TwilioSignature:
    """Checks ``X-Twilio-Signature`` against URLs built from a configured public base.

    ``auth_token``: the account's primary Auth Token (str, non-empty).
    ``public_url``: the base URL Twilio is configured with, ``http(s)://host[:port][/prefix]``
    (a trailing ``/`` is ignored). Raises ``ValueError`` when either is unusable.
    """

    __slots__ = ("_base_http", "_base_ws", "_validator")

    def __init__(self, auth_token: str, public_url: str) -> None:
        if not auth_token:
            raise ConfigError("MISE_TWILIO_AUTH_TOKEN must not be empty")
        parts = urlsplit(public_url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"MISE_PUBLIC_URL must be http(s)://host[/prefix], got {public_url!r}"
            )
        if parts.query or parts.fragment:
            raise ConfigError("MISE_PUBLIC_URL must not have a query string or fragment")
        rest = public_url[len(parts.scheme) :].rstrip("/")  # "://host[:port][/prefix]"
        self._base_http = scheme + rest
        self._base_ws = ("wss" if scheme == "https" else "ws") + rest
        self._validator = RequestValidator(auth_token)

    @property
    def public_url(self) -> str:
        """The normalised public base URL (no trailing ``/``)."""
        return self._base_http

    def webhook_url(self, path: str, *, query: str = "") -> str:
        """The URL Twilio signed for a webhook at ``path`` (``"/v1/webhook/twilio"``)."""
        url = self._base_http + _slash(path)
        return f"{url}?{query}" if query else url

    def websocket_urls(self, path: str) -> tuple[str, str]:
        """The ``ws(s)://`` URL for ``path`` as written and with the trailing ``/`` toggled."""
        url = self._base_ws + _slash(path)
        other = url[:-1] if url.endswith("/") else url + "/"
        return url, other

    def check_webhook(
        self,
        path: str,
        params: Params,
        signature: str | None,
        *,
        query: str = "",
        signature_settings: str | None = None,
    ) -> bool:
        """True when ``signature`` matches a webhook request.

        ``path``: the request path (``/v1/webhook/twilio``); ``params``: the POST form params
        exactly as received (every field, even unused ones), or empty for GET; ``query``: the
        raw query string as received (without ``?``; for GET it holds the params);
        ``signature``: the ``X-Twilio-Signature`` header; ``signature_settings``: the
        ``X-Twilio-Webhooks-Signature-Settings`` header, which selects HMAC_SHA256 instead of
        the default HMAC_SHA1. Missing/empty signature → False. Never raises for bad input.
        """
        if not signature:
            return False
        algorithm = get_signature_algorithm(signature_settings)
        checked: Mapping[str, str] | _Pairs
        checked = params if isinstance(params, Mapping) else _Pairs(params)
        url = self.webhook_url(path, query=query)
        return bool(self._validator.validate(url, checked, signature, algorithm))

    def check_websocket(self, path: str, signature: str | None) -> bool:
        """True when ``signature`` matches a WebSocket upgrade to ``path``.

        URL: ``wss://`` (``ws://`` for an http public URL) + public host + ``path``, no query
        (Twilio drops it), empty params; the trailing-``/`` variant is tried too.
        Missing/empty signature → False.
        """
        if not signature:
            return False
        return any(
            self._validator.validate(url, {}, signature) for url in self.websocket_urls(path)
        )

    def __repr__(self) -> str:
        return f"TwilioSignature(public_url={self._base_http!r})"


def _slash(path: str) -> str:
    return path if path.startswith("/") else "/" + path
