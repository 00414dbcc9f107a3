"""The public Python API: `sslall.__all__` matches what the package exposes, names load lazily,
the public modules declare theirs, and the README's "Python API" example runs."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import sslall

ROOT = Path(__file__).resolve().parents[1]
PUBLIC_MODULES = ("sslall.config", "sslall.errors", "sslall.workspace", "sslall.rounds")
HEAVY = ("torch", "timm", "faiss")


def _fresh(code: str) -> str:
    """stdout of `code` run by a new interpreter that imports this checkout's sslall."""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize("name", sslall.__all__)
def test_every_name_in_all_resolves(name: str) -> None:
    value = getattr(sslall, name)
    assert not isinstance(value, ModuleType)
    if name != "__version__":
        assert value.__name__ == name  # the object itself, not something imported under its name


def test_all_lists_exactly_the_public_names() -> None:
    for name in sslall.__all__:
        getattr(sslall, name)  # every lazy name loaded, as httpx's test sees its module's vars
    public = sorted(name for name in dir(sslall)
                    if not name.startswith("_") and not isinstance(getattr(sslall, name), ModuleType))
    assert public == sorted(n for n in sslall.__all__ if n != "__version__")
    assert len(set(sslall.__all__)) == len(sslall.__all__)


def test_an_unknown_name_raises_attribute_error_naming_it() -> None:
    with pytest.raises(AttributeError, match=r"module 'sslall' has no attribute 'Predicter'.*__all__"):
        sslall.Predicter  # noqa: B018
    with pytest.raises(ImportError, match="Predicter"):
        from sslall import Predicter  # noqa: F401


def test_import_sslall_loads_no_torch_timm_or_faiss() -> None:
    out = _fresh(f"import sys, sslall\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
                 "sslall.Workspace, sslall.Config, sslall.load_config, sslall.SslallError\n"
                 f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    assert out.splitlines() == ["[]", "[]"]


def test_a_name_loads_only_when_first_used() -> None:
    out = _fresh("import sys, sslall\nprint('sslall.workspace' in sys.modules)\n"
                 "print(sslall.Workspace.__module__, 'sslall.workspace' in sys.modules)")
    assert out.splitlines() == ["False", "sslall.workspace True"]


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_public_modules_declare_all(module: str) -> None:
    mod = importlib.import_module(module)
    assert len(set(mod.__all__)) == len(mod.__all__)
    missing = [name for name in mod.__all__ if not hasattr(mod, name)]
    assert missing == []
    exported = {name for name, where in sslall._EXPORTS.items() if where == module}
    assert exported <= set(mod.__all__)  # what the package re-exports is public here too


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("\n```", 1)[0]


def test_the_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    code = _readme_example()
    assert "tiny settings" in code.lower() and "sslall.acquire(" in code
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(code, "README.md (Python API)", "exec"), namespace)
    assert namespace["result"].round == 1
    assert (tmp_path / "ward7" / "runs" / "round-0001").is_dir()
    pred = namespace["pred"]
    assert pred.path == "<image 0>" and pred.error is None and pred.probs.sum() == pytest.approx(1)
    assert namespace["ranked"].tolist() == [3, 1]
    assert "[3 1]" in capsys.readouterr().out
