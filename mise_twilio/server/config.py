"""Settings: environment variables ``MISE_*`` (pydantic-settings), overridable by CLI flags.

This is the only module that reads the environment. The sans-I/O core receives plain parameter
objects (``VadParams``, ``SessionParams``) built from these settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of a running server; env names are ``MISE_`` + the field name upper-cased."""

    model_config = SettingsConfigDict(env_prefix="MISE_", extra="ignore")

    # --- listening -----------------------------------------------------------------------
    host: str = Field(default="127.0.0.1", description="Bind address.")
    port: int = Field(default=8080, ge=0, le=65535, description="Bind port (0: any free port).")
    public_url: str | None = Field(
        default=None,
        description="Public base URL Twilio uses, e.g. https://ingest.example.com. Signatures "
        "are checked against it (wss:// for the stream, https:// for webhooks), never Host.",
    )
    log_level: str = Field(default="info")
    log_format: Literal["json", "console"] = Field(default="json")

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

    # --- limits --------------------------------------------------------------------------
    max_message_bytes: int = Field(default=64 * 1024, ge=1024)
    idle_timeout_s: float = Field(
        default=10.0, gt=0, description="End a stream after this long without any message."
    )
    max_call_s: float = Field(default=4 * 3600.0, gt=0)
    max_webhook_bytes: int = Field(default=64 * 1024, ge=1024)

    # --- sinks ---------------------------------------------------------------------------
    data_dir: Path = Field(default=Path("./mise-data"))
    jsonl_path: Path | None = Field(
        default=None, description="JSONL sink file; default DATA_DIR/events.jsonl. 'off' = none."
    )
    jsonl_enabled: bool = True
    http_url: str | None = Field(default=None, description="HTTP ingest endpoint (POST batches).")
    http_token: SecretStr | None = Field(default=None, description="Bearer token for http_url.")
    redis_url: str | None = Field(default=None, description="e.g. redis://localhost:6379/0")
    redis_stream: str = Field(default="mise:events")
    redis_maxlen: int = Field(default=1_000_000, ge=1)
    sink_queue_max: int = Field(default=10_000, ge=1, description="Records queued per sink.")
    sink_batch_max: int = Field(default=500, ge=1)
    spool_dir: Path | None = Field(default=None, description="Default DATA_DIR/spool.")
    shutdown_deadline_s: float = Field(default=10.0, gt=0)
    turn_audio: Literal["none", "wav"] = Field(default="none")

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    @property
    def resolved_jsonl_path(self) -> Path:
        return self.jsonl_path if self.jsonl_path is not None else self.data_dir / "events.jsonl"

    @property
    def resolved_spool_dir(self) -> Path:
        return self.spool_dir if self.spool_dir is not None else self.data_dir / "spool"
