"""Settings: environment variables ``MISE_*`` (pydantic-settings), overridable by CLI flags.

This is the only module that reads the environment. Every tunable of the sans-I/O core is
reachable from here: the core's own parameter classes are nested fields (``vad``, ``turns``,
``features``, ``lifecycle``; dataclasses validated by pydantic) set with ``__`` between the
levels, e.g. ``MISE_VAD__HANGOVER_MS=300`` or ``MISE_LIFECYCLE__REORDER_WINDOW_S=3``. The edge
builds ``SessionParams`` and the lifecycle objects from them (``session_params``).
``mise-twilio config`` prints every setting with its variable, type, default and unit. An
unknown name under a nested setting is refused (``MISE_VAD__HANGOVR_MS``); an unknown top-level
``MISE_*`` variable is only reported (``unknown_environment``): other tools share the prefix.

Proxy mode's bots are named here and only here (never taken from a request, so a caller cannot
point the relay anywhere else):

    MISE_UPSTREAMS="support=wss://bot.internal/twilio,sales=ws://10.0.0.5:8765/ws"
    MISE_UPSTREAM_HEADERS__support='{"Authorization": "Bearer ..."}'

``upstream_headers`` may also be given whole as JSON (``MISE_UPSTREAM_HEADERS='{"support":
{...}}'``). Names are lower-case (environment keys after ``__`` are lower-cased) letters,
digits, ``-`` and ``_``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    AnyUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    UrlConstraints,
    ValidationError,
    ValidationInfo,
    WebsocketUrl,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from mise_twilio.core.call import SessionParams
from mise_twilio.core.features import FeatureParams
from mise_twilio.core.turns import TurnParams
from mise_twilio.core.vad import VadParams

_HTTP_URL: TypeAdapter[AnyHttpUrl] = TypeAdapter(AnyHttpUrl)
_WEBSOCKET_URL: TypeAdapter[WebsocketUrl] = TypeAdapter(WebsocketUrl)
_REDIS_URL: TypeAdapter[AnyUrl] = TypeAdapter(
    Annotated[AnyUrl, UrlConstraints(allowed_schemes=["redis", "rediss", "unix"])]
)


def check_url(value: str, kind: Literal["http", "websocket"]) -> None:
    """Raises ``pydantic.ValidationError`` unless ``value`` is an absolute URL with a host:
    ``http``/``https`` for ``"http"``, ``ws``/``wss`` for ``"websocket"`` (pydantic's URL
    types). Callers keep the string as given: pydantic's normal form adds a trailing slash to
    a bare host, and signatures are computed over the exact text."""
    (_HTTP_URL if kind == "http" else _WEBSOCKET_URL).validate_python(value)


def _http_url(value: str) -> str:
    check_url(value, "http")
    return value


def _redis_url(value: str) -> str:
    _REDIS_URL.validate_python(value)
    return value


HttpUrlText = Annotated[str, AfterValidator(_http_url)]
"""An ``http://`` or ``https://`` URL with a host, kept as the string given."""
RedisUrlText = Annotated[str, AfterValidator(_redis_url)]
"""A ``redis://``, ``rediss://`` or ``unix://`` URL (redis-py's ``from_url`` schemes)."""
LogLevel = Literal["debug", "info", "warning", "error", "critical"]


class LifecycleSettings(BaseModel):
    """Status-callback ordering (``CallLifecycle``) and the completed/summary join
    (``SummaryJoin``), ``MISE_LIFECYCLE__*``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    reorder_window_s: float = Field(
        default=2.0, ge=0, description="an out-of-order status waits this long for its gap"
    )
    terminal_retention_s: float = Field(
        default=600.0, ge=0, description="a finished call's duplicates are dropped this long"
    )
    max_calls: int = Field(default=10_000, ge=1, description="calls remembered per process")
    completed_hold_s: float = Field(
        default=5.0, ge=0, description="call.completed waits this long for its open stream"
    )
    completed_close_grace_s: float = Field(
        default=2.0, ge=0, description="then the open stream is ended after this long"
    )
    completed_remote_hold_s: float = Field(
        default=30.0,
        ge=0,
        description="call.completed waits this long for a stream open on another replica "
        "(keep it above MISE_IDLE_TIMEOUT_S)",
    )
    shared_join: bool = Field(
        default=True, description="with MISE_REDIS_URL: join across replicas through Redis"
    )
    shared_join_ttl_s: float = Field(
        default=6 * 3600.0, ge=1, description="a call's join hash in Redis expires after this"
    )


UPSTREAM_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
"""An upstream's name: it is a URL path segment and an environment-variable key."""
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token
_RESERVED_HEADERS = frozenset(
    {"host", "upgrade", "connection", "content-length", "transfer-encoding"}
)


class Settings(BaseSettings):
    """Every knob of a running server; env names are ``MISE_`` + the field name upper-cased,
    nested ones joined with ``__`` (``MISE_VAD__HANGOVER_MS``)."""

    model_config = SettingsConfigDict(env_prefix="MISE_", env_nested_delimiter="__", extra="forbid")

    # --- listening -----------------------------------------------------------------------
    host: str = Field(default="127.0.0.1", description="Bind address.")
    port: int = Field(default=8080, ge=0, le=65535, description="Bind port (0: any free port).")
    public_url: HttpUrlText | None = Field(
        default=None,
        description="Public base URL Twilio uses, e.g. https://ingest.example.com. Signatures "
        "are checked against it (wss:// for the stream, https:// for webhooks), never Host.",
    )
    log_level: LogLevel = Field(
        default="info", description="debug, info, warning, error or critical."
    )
    log_format: Literal["json", "console"] = Field(
        default="json", description="structlog output on stderr."
    )

    # --- security ------------------------------------------------------------------------
    twilio_auth_token: SecretStr | None = Field(
        default=None, description="Auth token for X-Twilio-Signature; unset = open server."
    )
    api_key: SecretStr | None = Field(
        default=None, description="Shared secret expected in <Parameter name='api_key'>."
    )
    pii_key: SecretStr | None = Field(
        default=None, description="HMAC-SHA256 key for phone-number hashing (stable ids)."
    )
    keep_pii: bool = Field(default=False, description="Keep From/To/Caller/... unhashed.")

    # --- limits (per stream: ``SessionParams``) -------------------------------------------
    max_message_bytes: int = Field(
        default=64 * 1024, ge=1024, description="Larger Twilio frames become a diagnostic."
    )
    max_chunk_ms: int = Field(default=1000, ge=20, description="Longest media chunk accepted.")
    max_gap_ms: int = Field(
        default=5000, ge=20, description="A longer timestamp jump is a discontinuity."
    )
    max_timestamp_ms: int = Field(
        default=6 * 3600 * 1000, ge=1, description="media.timestamp above this is rejected."
    )
    max_track_skew_ms: int = Field(
        default=5000,
        ge=20,
        description="One track may lag the other this long before the other goes on without it.",
    )
    max_diagnostics_per_code: int = Field(
        default=10, ge=0, description="Diagnostics of one code beyond this are only counted."
    )
    max_custom_parameters: int = Field(default=99, ge=0, description="customParameters kept.")
    measure_features: bool = Field(default=True, description="Energy/pitch/rate per turn.")
    idle_timeout_s: float = Field(
        default=10.0, gt=0, description="End a stream after this long without any message."
    )
    max_call_s: float = Field(default=4 * 3600.0, gt=0, description="End a longer stream.")
    max_webhook_bytes: int = Field(
        default=64 * 1024, ge=1024, description="Larger status callbacks are refused (413)."
    )

    # --- sinks ---------------------------------------------------------------------------
    data_dir: Path = Field(default=Path("./mise-data"), description="JSONL file and spools.")
    jsonl_path: Path | None = Field(
        default=None, description="JSONL sink file; default DATA_DIR/events.jsonl. 'off' = none."
    )
    jsonl_enabled: bool = Field(default=True, description="Write the JSONL sink.")
    http_url: HttpUrlText | None = Field(
        default=None, description="HTTP ingest endpoint (POST batches)."
    )
    http_token: SecretStr | None = Field(default=None, description="Bearer token for http_url.")
    redis_url: RedisUrlText | None = Field(
        default=None, description="e.g. redis://localhost:6379/0"
    )
    redis_stream: str = Field(default="mise:events", description="Redis Streams key.")
    redis_maxlen: int = Field(
        default=1_000_000, ge=1, description="Approximate MAXLEN trim of the stream."
    )
    sink_queue_max: int = Field(default=10_000, ge=1, description="Records queued per sink.")
    sink_batch_max: int = Field(default=500, ge=1, description="Records per delivery.")
    sink_write_ahead: bool = Field(
        default=True,
        description="Every record on every sink's spool before any sink delivers it (SIGKILL "
        "loses none a sink has seen); false: deliver from memory while a sink keeps up.",
    )
    spool_dir: Path | None = Field(default=None, description="Default DATA_DIR/spool.")
    shutdown_deadline_s: float = Field(
        default=10.0, gt=0, description="SIGTERM: close streams, drain sinks within this."
    )
    drain_delay_s: float = Field(
        default=0.0,
        ge=0,
        description="SIGTERM: /readyz answers 503 and everything is served this long first, "
        "so the load balancer stops routing here (>= its check interval x fall count).",
    )
    stream_grace_s: float = Field(
        default=0.0,
        ge=0,
        description="then open streams get this long to end on their own before they are "
        "closed (reason shutdown).",
    )
    turn_audio: Literal["none", "wav"] = Field(
        default="none", description="wav: each turn also saved as a 16 kHz WAV file"
    )

    # --- proxy mode (WS /v1/stream/twilio/proxy/NAME) --------------------------------------
    upstreams: Annotated[dict[str, WebsocketUrl], NoDecode] = Field(
        default_factory=dict,
        description="Proxy mode's bots: NAME=ws(s)://URL,... (Twilio connects to "
        "/v1/stream/twilio/proxy/NAME).",
    )
    upstream_headers: dict[str, dict[str, SecretStr]] = Field(
        default_factory=dict,
        description='Extra upgrade headers per bot: MISE_UPSTREAM_HEADERS__NAME=\'{"H": "v"}\'.',
    )
    upstream_open_timeout_s: float = Field(
        default=5.0, gt=0, description="Opening a bot's WebSocket may take this long."
    )
    proxy_backlog_bytes: int = Field(
        default=256 * 1024,
        ge=1024,
        description="Frames queued toward a side that does not keep up, beyond this, end the "
        "call (about 15 s of Twilio's media).",
    )
    proxy_analysis_backlog_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1,
        description="Proxied frames waiting for the analysis process, beyond this, are relayed "
        "but not analysed (an analysis_backlog diagnostic per call; server/analysis.py).",
    )
    proxy_analysis_nice: int = Field(
        default=19,
        ge=0,
        le=19,
        description="The analysis process's nice value: when it shares a core with the relay, "
        "the relay's frames go first (0: the same priority as the relay).",
    )
    max_playback_queue_ms: int = Field(
        default=600_000, ge=1000, description="Bot audio queued ahead of playback that is modelled."
    )

    # --- the core's analysis and lifecycle ---------------------------------------------
    vad: VadParams = Field(default_factory=VadParams)
    turns: TurnParams = Field(default_factory=TurnParams)
    features: FeatureParams = Field(default_factory=FeatureParams)
    lifecycle: LifecycleSettings = Field(default_factory=LifecycleSettings)

    @field_validator("vad", "turns", "features", mode="before")
    @classmethod
    def _known_params(cls, value: object, info: ValidationInfo) -> object:
        # pydantic ignores unknown keys of a dataclass (a BaseModel here forbids them): a typo
        # such as MISE_VAD__HANGOVR_MS would run with the default, unannounced.
        params = cls.model_fields[info.field_name].annotation if info.field_name else None
        if not isinstance(value, dict) or not dataclasses.is_dataclass(params):
            return value
        known = {f.name for f in dataclasses.fields(params)}
        prefix = f"MISE_{str(info.field_name).upper()}__"
        for key in value:
            if key in known:
                continue
            if str(key).lower() in known:  # only JSON keeps case (MISE_VAD='{"HANGOVER_MS": 1}')
                raise ValueError(f"{prefix[:-2]}: write {key!r} as {str(key).lower()!r}")
            env = prefix + str(key).upper()
            names = [prefix + k.upper() for k in known]
            raise ValueError(f"{env} is not a setting" + _did_you_mean(env, names))
        return value

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("public_url", "http_url", "redis_url", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # ``MISE_HTTP_URL=`` (set but empty, as compose files often leave it) means "off".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("upstreams", mode="before")
    @classmethod
    def _parse_upstreams(cls, value: Any) -> Any:
        """``name=url,name=url`` (the environment's form) or a mapping; names checked."""
        if isinstance(value, str):
            pairs: dict[str, str] = {}
            for item in filter(None, (part.strip() for part in value.split(","))):
                name, sep, url = item.partition("=")
                name = name.strip()
                if not sep or not url.strip():
                    raise ValueError(f"upstream {item!r} is not NAME=ws(s)://URL")
                if name in pairs:
                    raise ValueError(f"upstream {name!r} is named twice")
                pairs[name] = url.strip()
            value = pairs
        if isinstance(value, dict):
            for name in value:
                if not isinstance(name, str) or not UPSTREAM_NAME_RE.fullmatch(name):
                    raise ValueError(
                        f"upstream name {name!r}: use lower-case letters, digits, '-' and '_' "
                        "(at most 63)"
                    )
        return value

    @model_validator(mode="after")
    def _check_upstream_headers(self) -> Settings:
        for name, headers in self.upstream_headers.items():
            if name not in self.upstreams:
                raise ValueError(f"MISE_UPSTREAM_HEADERS names {name!r}, not in MISE_UPSTREAMS")
            for header, secret in headers.items():
                if not _HEADER_NAME_RE.fullmatch(header) or header.lower() in _RESERVED_HEADERS:
                    raise ValueError(f"upstream {name!r}: {header!r} is not a header it may set")
                if header.lower().startswith("sec-websocket-"):
                    raise ValueError(f"upstream {name!r}: {header!r} belongs to the handshake")
                if any(c in secret.get_secret_value() for c in "\r\n\0"):
                    raise ValueError(f"upstream {name!r}: header {header!r} has a line break")
        return self

    def upstream(self, name: str) -> tuple[str, dict[str, str]] | None:
        """Proxy mode: the URL and extra upgrade headers of the bot named ``name``, or ``None``
        when no bot has that name."""
        url = self.upstreams.get(name)
        if url is None:
            return None
        headers = {k: v.get_secret_value() for k, v in self.upstream_headers.get(name, {}).items()}
        return str(url), headers

    @property
    def resolved_jsonl_path(self) -> Path:
        return self.jsonl_path if self.jsonl_path is not None else self.data_dir / "events.jsonl"

    @property
    def resolved_spool_dir(self) -> Path:
        return self.spool_dir if self.spool_dir is not None else self.data_dir / "spool"


def session_params(settings: Settings) -> SessionParams:
    """The ``SessionParams`` every stream of this server uses."""
    return SessionParams(
        vad=settings.vad,
        turns=settings.turns,
        features=settings.features,
        max_message_bytes=settings.max_message_bytes,
        max_chunk_ms=settings.max_chunk_ms,
        max_gap_ms=settings.max_gap_ms,
        max_timestamp_ms=settings.max_timestamp_ms,
        max_track_skew_ms=settings.max_track_skew_ms,
        max_diagnostics_per_code=settings.max_diagnostics_per_code,
        max_custom_parameters=settings.max_custom_parameters,
        expected_api_key=settings.api_key.get_secret_value() if settings.api_key else None,
        measure_features=settings.measure_features,
        keep_turn_audio=settings.turn_audio != "none",
        max_playback_queue_ms=settings.max_playback_queue_ms,
    )


@dataclass(frozen=True, slots=True)
class SettingInfo:
    """One setting as ``mise-twilio config`` prints it."""

    env: str
    type: str
    default: str
    unit: str
    description: str


_UNITS = (
    ("_db_per_s", "dB/s"),
    ("_dbfs", "dBFS"),
    ("_db", "dB"),
    ("_ms", "ms"),
    ("_s", "s"),
    ("_hz", "Hz"),
    ("_bytes", "bytes"),
    ("_semitones", "semitones"),
)
_SECRET = {"twilio_auth_token", "api_key", "pii_key", "http_token", "upstream_headers"}


def describe_settings() -> list[SettingInfo]:
    """Every setting, nested ones included, in declaration order: its environment variable,
    type, default, unit (from the name's suffix) and description. Generated from ``Settings``
    and the core's parameter classes, so it cannot drift from them."""
    out: list[SettingInfo] = []
    for name, info in Settings.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and (
            dataclasses.is_dataclass(annotation) or issubclass(annotation, BaseModel)
        ):
            out.extend(_nested(name, annotation))
            continue
        value = info.get_default(call_default_factory=True)
        default = "-" if value is None or value == {} else str(value)
        if name in _SECRET:
            default = "-"
        out.append(
            SettingInfo(
                f"MISE_{name.upper()}",
                _type_name(annotation),
                default,
                _unit(name),
                info.description or "",
            )
        )
    return out


def _nested(prefix: str, cls: type) -> list[SettingInfo]:
    rows: list[SettingInfo] = []
    if dataclasses.is_dataclass(cls):
        docs = _bullet_docs(cls.__doc__ or "")
        for f in dataclasses.fields(cls):
            doc = str(f.metadata.get("doc", "")) or docs.get(f.name, "")
            rows.append(
                SettingInfo(
                    f"MISE_{prefix.upper()}__{f.name.upper()}",
                    _type_name(f.type),
                    str(f.default),
                    _unit(f.name),
                    doc,
                )
            )
    elif issubclass(cls, BaseModel):
        for name, info in cls.model_fields.items():
            rows.append(
                SettingInfo(
                    f"MISE_{prefix.upper()}__{name.upper()}",
                    _type_name(info.annotation),
                    str(info.default),
                    _unit(name),
                    info.description or "",
                )
            )
    return rows


def _unit(name: str) -> str:
    for suffix, unit in _UNITS:
        if name.endswith(suffix):
            return unit
    return ""


def _type_name(annotation: object) -> str:
    """A setting's type as ``mise-twilio config`` shows it: ``int``, ``http(s) URL | None``,
    ``none|wav`` (one of), ``dict[str, secret]`` (never a validator's repr)."""
    for alias, name in _TYPE_NAMES:
        if annotation == alias:
            return name
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return "|".join(str(a) for a in args)
    if origin is typing.Union or origin is types.UnionType:
        names = [_type_name(a) for a in args if a is not type(None)]
        return " | ".join(names + ["None"] * (type(None) in args))
    if origin is not None:
        inner = ", ".join(_type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation)


_TYPE_NAMES: tuple[tuple[object, str], ...] = (
    (HttpUrlText, "http(s) URL"),
    (RedisUrlText, "redis URL"),
    (WebsocketUrl, "ws(s) URL"),
    (SecretStr, "secret"),
)


def _bullet_docs(doc: str) -> dict[str, str]:
    """``* ``name``: text`` / ``- ``name`` text`` bullets of a docstring → first sentence."""
    found: dict[str, str] = {}
    for match in re.finditer(r"^\s*[*-] ``(\w+)``(?: / ``\w+``)*:? ?(.*)$", doc, re.M):
        text = match.group(2).split(". ")[0].strip().rstrip(".")
        found.setdefault(match.group(1), text)
    return found


def _did_you_mean(env: str, names: list[str]) -> str:
    close = difflib.get_close_matches(env, names, n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def twilio_auth_token_from_environment() -> str | None:
    """``MISE_TWILIO_AUTH_TOKEN`` as set (``None`` when unset or empty), without the rest of
    ``Settings``: for ``mise-twilio replay --to``, which signs as Twilio does and should not
    need the token on its command line, where the process list shows it."""
    return os.environ.get("MISE_TWILIO_AUTH_TOKEN") or None


def unknown_environment(environ: Mapping[str, str] | None = None) -> list[str]:
    """Each ``MISE_*`` variable of ``environ`` (default: this process's environment) that names
    no setting, as one line saying so (with the closest setting's name when one is close: a
    typo). These are ignored, not refused: other tools use the prefix too (jdx's ``mise`` sets
    ``MISE_SHELL``). Unknown names under a nested setting (``MISE_VAD__...``) are refused by
    ``Settings`` itself."""
    if environ is None:
        environ = os.environ
    names = [info.env for info in describe_settings()]
    tops = {f"MISE_{name.upper()}" for name in Settings.model_fields}
    lines = []
    for key in sorted(environ):
        env = key.upper()  # pydantic-settings reads the environment case-insensitively
        if not env.startswith("MISE_") or env in tops or env.split("__", 1)[0] in tops:
            continue
        lines.append(f"{key} is not a mise_twilio setting, ignored" + _did_you_mean(env, names))
    return lines


def validation_error_lines(exc: ValidationError) -> list[str]:
    """A ``Settings`` ``ValidationError`` as one line per bad setting, named by its
    environment variable: ``MISE_PORT='abc': Input should be a valid integer, …``. Secret
    settings never show their value."""
    lines = []
    for error in exc.errors(include_url=False):
        names = [str(part) for part in error["loc"]]
        env = "MISE_" + "__".join(n.upper() for n in names) if names else "settings"
        shown = error.get("input")
        secret = bool(names) and names[0] in _SECRET
        value = "" if secret or not isinstance(shown, str | int | float) else f"={shown!r}"
        message = error["msg"].removeprefix("Value error, ")
        if message.startswith("MISE_"):  # names its own variable (``_known_params``)
            lines.append(message)
            continue
        lines.append(f"{env}{value}: {message}")
    return lines
