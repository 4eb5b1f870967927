"""PiiPolicy: keyed, stable phone tokens that keep the E.164 country calling code."""

from __future__ import annotations

import hashlib
import hmac
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mise_twilio.core.pii import PiiPolicy, country_calling_code

KEY = b"test-pii-key"
TOKEN = re.compile(r"[0-9a-f]{16}")


def _h(value: str, key: bytes = KEY) -> str:
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:16]


@pytest.mark.parametrize(
    ("number", "code"),
    [
        ("+14155550123", "1"),  # NANP
        ("+18005551212", "1"),
        ("+74951234567", "7"),  # Russia
        ("+77012345678", "7"),  # Kazakhstan
        ("+442071838750", "44"),
        ("+919876543210", "91"),  # India (ToCountry=IN in the real callback)
        ("+201001234567", "20"),
        ("+27211234567", "27"),
        ("+35312345678", "353"),  # Ireland: 35x is 3-digit
        ("+8801712345678", "880"),  # Bangladesh
        ("+971501234567", "971"),
        ("+85212345678", "852"),
        ("+4212345678", "421"),  # Slovakia: 42x is 3-digit
        ("+80012345678", "800"),  # international freephone
    ],
)
def test_country_calling_code(number: str, code: str) -> None:
    assert country_calling_code(number) == code


@pytest.mark.parametrize("value", ["14155550123", "+0123456", "+1", "+353", "+1-415", "", "+"])
def test_country_calling_code_rejects_non_e164(value: str) -> None:
    assert country_calling_code(value) is None


def test_e164_keeps_country_code_and_hashes_whole_number() -> None:
    pii = PiiPolicy(KEY, keep=False)
    assert pii.redact("+14155550123") == f"+1~{_h('+14155550123')}"
    assert pii.redact("+442071838750") == f"+44~{_h('+442071838750')}"
    assert pii.redact("+35312345678") == f"+353~{_h('+35312345678')}"


def test_schemes_placeholders_and_other_values() -> None:
    pii = PiiPolicy(KEY, keep=False)
    assert pii.redact("client:alice") == f"client:~{_h('client:alice')}"
    assert pii.redact("sip:alice@example.com") == f"sip:~{_h('sip:alice@example.com')}"
    assert pii.redact("tel:+442071838750") == f"tel:+44~{_h('tel:+442071838750')}"
    for placeholder in ("anonymous", "unknown", "Anonymous", "UNKNOWN", "restricted"):
        assert pii.redact(placeholder) == placeholder
    assert pii.redact("") == ""
    assert pii.redact(None) is None
    assert pii.redact("JOHN SMITH") == f"~{_h('JOHN SMITH')}"
    assert pii.redact("4155550123") == f"~{_h('4155550123')}"


def test_stable_across_instances_with_the_same_key_and_different_with_another() -> None:
    a = PiiPolicy(KEY, keep=False).redact("+14155550123")
    b = PiiPolicy(KEY, keep=False).redact("+14155550123")
    c = PiiPolicy(b"other-key", keep=False).redact("+14155550123")
    assert a == b
    assert a != c
    assert c is not None and c.startswith("+1~")


def test_keyless_policy_uses_one_random_key_per_process() -> None:
    p1 = PiiPolicy(None, keep=False)
    p2 = PiiPolicy(None, keep=False)
    assert p1.ephemeral_key and p2.ephemeral_key
    token = p1.redact("+14155550123")
    assert token == p2.redact("+14155550123")
    assert token != PiiPolicy(KEY, keep=False).redact("+14155550123")
    assert token is not None and TOKEN.fullmatch(token.split("~", 1)[1])


def test_keep_returns_values_unchanged() -> None:
    pii = PiiPolicy(None, keep=True)
    assert not pii.ephemeral_key
    assert pii.redact("+14155550123") == "+14155550123"
    assert pii.redact("client:alice") == "client:alice"


def test_empty_key_is_refused() -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        PiiPolicy(b"", keep=False)


@given(st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True))
def test_any_e164_number_never_leaks_its_subscriber_digits(number: str) -> None:
    token = PiiPolicy(KEY, keep=False).redact(number)
    assert token is not None
    code = country_calling_code(number)
    assert code is not None
    assert token == f"+{code}~{_h(number)}"
    assert number[1 + len(code) :] not in token.split("~", 1)[0]
