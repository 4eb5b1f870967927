"""TwilioSignature: URLs built from the configured public base, validated by twilio's own code."""

from __future__ import annotations

import pytest
from support import status_form
from twilio.request_validator import RequestValidator

from mise_twilio.core.errors import ConfigError
from mise_twilio.server.signature import TwilioSignature

TOKEN = "test-auth-token-0123456789abcdef"
PUBLIC = "https://ingest.example.com"
PATH = "/v1/webhook/twilio"

# A status callback in the shape of the real one in docs/protocol.md §5 (initiated).
PARAMS = status_form()


def _sign(url: str, params: dict[str, str] | None = None, token: str = TOKEN) -> str:
    return str(RequestValidator(token).compute_signature(url, params or {}))


@pytest.fixture
def sig() -> TwilioSignature:
    return TwilioSignature(TOKEN, PUBLIC)


def test_signed_post_validates(sig: TwilioSignature) -> None:
    good = _sign(PUBLIC + PATH, PARAMS)
    assert sig.check_webhook(PATH, PARAMS, good)
    # the same params as wire-order pairs (what parse_qsl gives)
    assert sig.check_webhook(PATH, list(PARAMS.items()), good)


def test_forged_missing_and_tampered_fail(sig: TwilioSignature) -> None:
    good = _sign(PUBLIC + PATH, PARAMS)
    assert not sig.check_webhook(PATH, PARAMS, None)
    assert not sig.check_webhook(PATH, PARAMS, "")
    assert not sig.check_webhook(PATH, PARAMS, "bm90IGEgc2lnbmF0dXJlIGF0IGFsbA==")
    assert not sig.check_webhook(PATH, PARAMS, _sign(PUBLIC + PATH, PARAMS, token="other"))
    assert not sig.check_webhook(PATH, {**PARAMS, "CallStatus": "completed"}, good)
    dropped = {k: v for k, v in PARAMS.items() if k != "CallerZip"}
    assert not sig.check_webhook(PATH, dropped, good)


def test_signed_for_another_url_or_scheme_fails(sig: TwilioSignature) -> None:
    assert not sig.check_webhook(PATH, PARAMS, _sign("https://evil.example.com" + PATH, PARAMS))
    assert not sig.check_webhook(PATH, PARAMS, _sign(PUBLIC + "/other", PARAMS))
    assert not sig.check_webhook(PATH, PARAMS, _sign("http://ingest.example.com" + PATH, PARAMS))
    http_sig = TwilioSignature(TOKEN, "http://ingest.example.com")
    assert not http_sig.check_webhook(PATH, PARAMS, _sign(PUBLIC + PATH, PARAMS))
    assert http_sig.check_webhook(PATH, PARAMS, _sign("http://ingest.example.com" + PATH, PARAMS))


def test_port_variants_validate_both_ways() -> None:
    # Twilio drops :443 on HTTPS voice callbacks; RequestValidator tries with and without.
    with_port = TwilioSignature(TOKEN, "https://ingest.example.com:443")
    assert with_port.check_webhook(PATH, PARAMS, _sign(PUBLIC + PATH, PARAMS))
    without = TwilioSignature(TOKEN, PUBLIC)
    assert without.check_webhook(
        PATH, PARAMS, _sign("https://ingest.example.com:443" + PATH, PARAMS)
    )


def test_get_callback_is_signed_over_the_query(sig: TwilioSignature) -> None:
    query = "CallSid=CA0123456789abcdef0123456789abcdef&CallStatus=ringing&From=%2B14155550123"
    good = _sign(f"{PUBLIC}{PATH}?{query}")
    assert sig.check_webhook(PATH, {}, good, query=query)
    assert not sig.check_webhook(PATH, {}, good)
    assert not sig.check_webhook(PATH, {}, good, query=query.replace("ringing", "completed"))


def test_public_url_with_prefix_and_trailing_slash() -> None:
    sig = TwilioSignature(TOKEN, "https://example.com/mise/")
    assert sig.public_url == "https://example.com/mise"
    assert sig.webhook_url(PATH) == "https://example.com/mise/v1/webhook/twilio"
    assert sig.check_webhook(PATH, PARAMS, _sign("https://example.com/mise" + PATH, PARAMS))


def test_sha256_settings_header_selects_the_algorithm(sig: TwilioSignature) -> None:
    v = RequestValidator(TOKEN)
    sha256 = v.compute_signature(PUBLIC + PATH, PARAMS, "HMAC_SHA256")
    settings = "key=webhooks_sharedkey_x,algorithm=HMAC_SHA256"
    assert sig.check_webhook(PATH, PARAMS, sha256, signature_settings=settings)
    assert not sig.check_webhook(PATH, PARAMS, sha256)


def test_websocket_wss_and_trailing_slash(sig: TwilioSignature) -> None:
    path = "/v1/stream/twilio"
    assert sig.websocket_urls(path) == (
        "wss://ingest.example.com/v1/stream/twilio",
        "wss://ingest.example.com/v1/stream/twilio/",
    )
    assert sig.check_websocket(path, _sign("wss://ingest.example.com" + path))
    assert sig.check_websocket(path, _sign("wss://ingest.example.com" + path + "/"))
    # signed over https (the classic mistake), another host, or missing: refused
    assert not sig.check_websocket(path, _sign("https://ingest.example.com" + path))
    assert not sig.check_websocket(path, _sign("wss://other.example.com" + path))
    assert not sig.check_websocket(path, None)
    assert not sig.check_websocket(path, "")
    # path given with a trailing slash: the bare variant is tried too
    assert sig.check_websocket(path + "/", _sign("wss://ingest.example.com" + path))
    ws = TwilioSignature(TOKEN, "http://localhost:8080")
    assert ws.check_websocket(path, _sign("ws://localhost:8080" + path))
    assert not ws.check_websocket(path, _sign("wss://localhost:8080" + path))


def test_security_page_worked_examples() -> None:
    # https://www.twilio.com/docs/usage/security#validating-requests, token 12345.
    # The current page uses example.com and +14158675310. (The brief's copy of this vector
    # paired example.com with +12349013030, which belongs to the older mycompany.com vector
    # below, and does not give L/OH5...; both documented vectors hold here.)
    current = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+14158675310",
        "Digits": "1234",
        "From": "+14158675310",
        "To": "+18005551212",
    }
    sig = TwilioSignature("12345", "https://example.com")
    ok = sig.check_webhook
    assert ok("/myapp.php", current, "L/OH5YylLD5NRKLltdqwSvS0BnU=", query="foo=1&bar=2")
    assert not ok("/myapp.php", current, "L/OH5YylLD5NRKLltdqwSvS0BnU=")
    older = {**current, "Caller": "+12349013030", "From": "+12349013030"}
    old_sig = TwilioSignature("12345", "https://mycompany.com")
    assert old_sig.check_webhook(
        "/myapp.php", older, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=", query="foo=1&bar=2"
    )


@pytest.mark.parametrize(
    ("token", "url"),
    [("", PUBLIC), (TOKEN, "ingest.example.com"), (TOKEN, "ftp://x"), (TOKEN, PUBLIC + "?a=1")],
)
def test_bad_configuration_is_refused(token: str, url: str) -> None:
    with pytest.raises(ConfigError):
        TwilioSignature(token, url)
