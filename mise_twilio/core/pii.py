"""Phone-number and caller-identity redaction for status-callback fields (sans-I/O).

Twilio's voice requests carry who called whom in ``From``, ``To``, ``Caller``, ``Called``,
``CallerName`` and ``ForwardedFrom`` (https://www.twilio.com/docs/voice/twiml#request-parameters).
Those values are personal data; by default mise_twilio replaces each one with a keyed hash that is
stable (the same number always gives the same token, across restarts, given the same key) so that
records can still be joined and counted, while the E.164 country calling code stays readable for
analytics.

Token format (``redact``), with ``H`` = the first 16 lowercase hex characters (64 bits) of
HMAC-SHA256(key, the whole original value as UTF-8):

=========================== ======================== ========================================
input                       output                   rule
=========================== ======================== ========================================
``+14155550123``            ``+1~H``                 E.164: ``+`` and the country calling code
``tel:+442071838750``       ``tel:+44~H``            ``tel:`` + E.164
``client:alice``            ``client:~H``            known scheme kept, the rest hashed
``sip:alice@example.com``   ``sip:~H``               (schemes: client, sip, sips, tel)
``anonymous``, ``unknown``  unchanged                withheld caller-ID placeholders
``""`` / ``None``           unchanged                nothing to hide
``JOHN SMITH``, ``4155550``  ``~H``                   anything else
=========================== ======================== ========================================

``~`` marks a hashed value. The hash covers the whole value (``+14155550123``, ``client:alice``),
so the same identity gives the same token in every field (``From`` and ``Caller``).

Country calling code: the ITU-T E.164 country codes form a prefix-free code, so the code of a
number is found by its leading digits alone (no library, no per-country metadata):

* 1 digit: ``1`` (NANP) and ``7`` (Russia, Kazakhstan);
* 2 digits: ``20 27 30 31 32 33 34 36 39 40 41 43 44 45 46 47 48 49 51-58 60-66 81 82 84 86
  90-95 98`` (``_TWO_DIGIT_CODES``);
* 3 digits: every other code (``353`` Ireland, ``880`` Bangladesh, ``971`` UAE, ``800`` …).

This is the assignment list of ITU-T E.164 Annex / the "List of ITU-T Recommendation E.164
assigned country codes"; it was cross-checked against every code in Google's ``phonenumbers``
metadata. A value is treated as E.164 when it is ``+`` followed by 2 to 15 digits, the first
not ``0``, and longer than its country code.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

__all__ = ["HASH_HEX_CHARS", "PLACEHOLDERS", "PiiPolicy", "country_calling_code"]

PLACEHOLDERS: frozenset[str] = frozenset(
    {"anonymous", "unknown", "restricted", "private", "blocked", "unavailable"}
)
"""Withheld caller-ID values kept verbatim (compared case-insensitively)."""

HASH_HEX_CHARS = 16
"""Hex characters of HMAC-SHA256 kept in a token (64 bits)."""

_SCHEMES: frozenset[str] = frozenset({"client", "sip", "sips", "tel"})
_ONE_DIGIT_CODES: frozenset[str] = frozenset({"1", "7"})
_TWO_DIGIT_CODES: frozenset[str] = frozenset(
    {
        "20", "27",
        "30", "31", "32", "33", "34", "36", "39",
        "40", "41", "43", "44", "45", "46", "47", "48", "49",
        "51", "52", "53", "54", "55", "56", "57", "58",
        "60", "61", "62", "63", "64", "65", "66",
        "81", "82", "84", "86",
        "90", "91", "92", "93", "94", "95", "98",
    }
)  # fmt: skip
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")

# One random key per process, shared by every keyless PiiPolicy so that tokens agree within the
# process. Created on first use.
_process_key: bytes | None = None


def _get_process_key() -> bytes:
    global _process_key
    if _process_key is None:
        _process_key = secrets.token_bytes(32)
    return _process_key


def country_calling_code(e164: str) -> str | None:
    """The country calling code of an E.164 number, without ``+``; ``None`` if not E.164.

    ``"+14155550123"`` → ``"1"``, ``"+442071838750"`` → ``"44"``, ``"+35312345678"`` → ``"353"``.
    Uses the prefix rule in this module's docstring (ITU-T E.164 assignments).
    """
    if _E164.fullmatch(e164) is None:
        return None
    digits = e164[1:]
    if digits[:1] in _ONE_DIGIT_CODES:
        code = digits[:1]
    elif digits[:2] in _TWO_DIGIT_CODES:
        code = digits[:2]
    else:
        code = digits[:3]
    if len(digits) <= len(code):
        return None
    return code


class PiiPolicy:
    """How caller identities are written to records.

    ``key``: the HMAC-SHA256 key (bytes, non-empty), e.g. ``MISE_PII_KEY`` encoded as UTF-8.
    With the same key, tokens are stable across restarts and replicas. ``None``: a random
    32-byte key is drawn once per process (``ephemeral_key`` is then ``True``; tokens change on
    every restart and differ between replicas, so the server should warn).
    ``keep``: ``True`` writes values unchanged (no hashing at all).

    Raises ``ValueError`` for an empty key.
    """

    __slots__ = ("_key", "ephemeral_key", "keep")

    def __init__(self, key: bytes | None, keep: bool) -> None:
        if key is not None and len(key) == 0:
            raise ValueError("PII key must not be empty (unset it to use a per-process key)")
        self.keep = keep
        self.ephemeral_key = key is None and not keep
        self._key = key

    def _digest(self, value: str) -> str:
        key = self._key if self._key is not None else _get_process_key()
        mac = hmac.new(key, value.encode("utf-8"), hashlib.sha256)
        return mac.hexdigest()[:HASH_HEX_CHARS]

    def redact(self, value: str | None) -> str | None:
        """One field value as a token (format in the module docstring); ``None`` stays ``None``.

        With ``keep=True`` the value is returned unchanged.
        """
        if value is None or self.keep or value == "":
            return value
        if value.lower() in PLACEHOLDERS:
            return value
        digest = self._digest(value)
        scheme, sep, rest = value.partition(":")
        if sep and scheme.lower() in _SCHEMES:
            prefix = scheme + ":"
            if scheme.lower() == "tel":
                code = country_calling_code(rest)
                if code is not None:
                    prefix += "+" + code
            return f"{prefix}~{digest}"
        code = country_calling_code(value)
        if code is not None:
            return f"+{code}~{digest}"
        return f"~{digest}"

    def __repr__(self) -> str:
        mode = "keep" if self.keep else ("ephemeral-key" if self.ephemeral_key else "keyed")
        return f"PiiPolicy({mode})"
