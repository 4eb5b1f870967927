"""``bench/mutants.py`` stays runnable: each mutant's text is still in the core, once."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import Any

import pytest
from support import ROOT


def _mutants_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_mutants", ROOT / "bench" / "mutants.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module


MUTANTS = _mutants_module().MUTANTS


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_mutant_applies_once_and_compiles(mutant: Any) -> None:
    """A refactor that changes a mutated line must update the mutant with it (the bench
    otherwise stops at that mutant), and the mutated file must still be Python."""
    path = ROOT / mutant.path
    source = path.read_text(encoding="utf-8")
    assert source.count(mutant.old) == 1, f"{mutant.path}: {mutant.old!r}"
    mutated = source.replace(mutant.old, mutant.new)
    assert mutated != source
    compile(mutated, str(path), "exec")
    for test in mutant.tests:
        assert (ROOT / test).is_file(), test
