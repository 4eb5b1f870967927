"""pytest set-up: the redis-server plugin and fixtures shared by unit and e2e tests."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from support import FIXTURE_NAMES, fixture_lines

from mise_twilio.core.records import AnyRecord
from mise_twilio.server.config import Settings

pytest_plugins = ["conftest_redis"]

# Hypothesis profiles, chosen with HYPOTHESIS_PROFILE (default "dev"):
# - "ci": derandomized (the same examples on every run, so a CI failure is the code's, not
#   the draw's) and no example database (a clean clone has none; a local one must not leak in).
# - "dev": Hypothesis' defaults, random and with the local database.
# - Neither has a deadline: an example that takes over 200 ms on a loaded machine is not a
#   failure (tests assert behaviour, never timings; bench/ measures speed).
# - "fuzz": the long random run for local use (``HYPOTHESIS_PROFILE=fuzz pytest
#   tests/test_call_fuzz.py``); tests that pin ``max_examples`` keep their own count.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True, deadline=None)
settings.register_profile("dev", deadline=None)
settings.register_profile(
    "fuzz", max_examples=5000, suppress_health_check=[HealthCheck.too_slow], deadline=None
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


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


# Skips CI accepts (``PYTEST_FAIL_ON_SKIP=1``, set by .ci/run): (test id prefix, reason text).
# Anything else skipped in CI fails the run, so a missing service or data set cannot pass as
# green. Keep this list short and say why each entry may skip.
CI_ALLOWED_SKIPS: tuple[tuple[str, str], ...] = (
    # espeak-ng's output depends on its build; another build cannot regenerate the fixtures
    # byte for byte, and that says nothing about this code.
    ("tests/test_fixtures_gen.py::test_regenerate_is_byte_identical", "espeak-ng differs"),
)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("PYTEST_FAIL_ON_SKIP") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    unexpected = []
    for report in reporter.stats.get("skipped", []):
        reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else ""
        if not any(
            report.nodeid.startswith(prefix) and text in reason for prefix, text in CI_ALLOWED_SKIPS
        ):
            unexpected.append(f"{report.nodeid}: {reason}")
    if unexpected:
        reporter.write_line("")
        reporter.write_line(f"{len(unexpected)} test(s) skipped that CI must run:", red=True)
        for line in unexpected:
            reporter.write_line(f"  {line}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
