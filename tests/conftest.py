"""pytest set-up: the redis-server plugin and fixtures shared by unit and e2e tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import FIXTURE_NAMES, fixture_lines

from mise_twilio.config import Settings
from mise_twilio.records import AnyRecord

pytest_plugins = ["conftest_redis"]


@pytest.fixture(scope="session")
def offline_records() -> dict[str, list[AnyRecord]]:
    """Every committed fixture replayed offline once per test session (default params)."""
    from mise_twilio.replay import replay_offline

    return {name: replay_offline(fixture_lines(name)) for name in FIXTURE_NAMES}


@pytest.fixture
def server_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings for a loopback test server writing under ``tmp_path``; keyword overrides."""

    def make(**overrides: Any) -> Settings:
        return Settings(host="127.0.0.1", port=0, data_dir=tmp_path / "data", **overrides)

    return make
