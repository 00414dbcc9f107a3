"""Packaging: what `pip install sslall` gives, and that it is enough.

Every third-party package sslall imports is declared in pyproject.toml, the ones only an extra
brings are imported lazily, and click (typer's business) is not imported at all. The built wheel,
installed without extras, runs a demo and a round, and a Label Studio command then says how to
install the SDK in one line.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from conftest import invoke
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from typer.testing import CliRunner

from sslall.labelstudio._client import SDK_MISSING
from sslall.labelstudio._pull import pull_if_configured
from sslall.labelstudio._push import push_if_configured
from sslall.store._pools import PoolStore
from sslall.workspace import Workspace

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
BASE = [Requirement(r) for r in PROJECT["dependencies"]]
EXTRAS = {name: [Requirement(r) for r in reqs]
          for name, reqs in PROJECT["optional-dependencies"].items()}
PACKAGE_DISTS = metadata.packages_distributions()


def _imports() -> list[tuple[str, str, bool]]:
    """(module file, top-level name, imported at module level) for every absolute import of
    something outside sslall and the standard library."""
    found = []
    for path in sorted((ROOT / "sslall").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            lazy, up = False, parents.get(node)
            while up is not None:
                lazy = lazy or isinstance(up, ast.FunctionDef | ast.AsyncFunctionDef)
                up = parents.get(up)
            for name in names:
                top = name.partition(".")[0]
                if top != "sslall" and top not in sys.stdlib_module_names:
                    found.append((str(path.relative_to(ROOT)), top, not lazy))
    return found


def _distributions(top: str) -> set[str]:
    """The distributions that provide import name `top` (as installed here)."""
    return {canonicalize_name(d) for d in PACKAGE_DISTS.get(top, [top])}


def _names(requirements: list[Requirement]) -> set[str]:
    return {canonicalize_name(r.name) for r in requirements if r.name != PROJECT["name"]}


def test_every_third_party_import_is_declared() -> None:
    declared = _names(BASE).union(*(_names(reqs) for reqs in EXTRAS.values()))
    undeclared = sorted({f"{top} ({where})" for where, top, _ in _imports()
                         if not _distributions(top) & declared})
    assert not undeclared, f"imported but not in pyproject.toml: {undeclared}"


def test_packages_of_extras_are_imported_lazily() -> None:
    """A module-level import of a package only an extra installs would break `import sslall...`
    in a plain install; inside the function that needs it, only that feature needs the extra."""
    base = _names(BASE)
    eager = sorted({f"{top} ({where})" for where, top, module_level in _imports()
                    if module_level and not _distributions(top) & base})
    assert not eager, f"extras-only packages imported at module level: {eager}"


def test_sslall_imports_no_click() -> None:
    """typer vendors click since 0.26: click's classes are not what typer raises."""
    assert [where for where, top, _ in _imports() if top == "click"] == []


def test_label_studio_sdk_is_an_extra_not_a_dependency() -> None:
    assert "label-studio-sdk" not in _names(BASE)
    assert "label-studio-sdk" in _names(EXTRAS["labelstudio"])
    assert "labelstudio" in {e for r in EXTRAS["dev"] for e in r.extras}


def test_faiss_cpu_is_the_only_faiss() -> None:
    """faiss-cpu and faiss-gpu-* install the same module: no extra may add the second."""
    everything = _names(BASE).union(*(_names(reqs) for reqs in EXTRAS.values()))
    assert "faiss-cpu" in _names(BASE)
    assert sorted(n for n in everything if n.startswith("faiss") and n != "faiss-cpu") == []


def test_typer_usage_errors_pass_through_cli_errors() -> None:
    """typer's own exceptions keep typer's handling (its usage line, exit 2; Abort, exit 1),
    not sslall's "unexpected error ... please report it"."""
    import typer

    from sslall.cli._console import cli_errors

    app = typer.Typer()

    @app.command()
    @cli_errors
    def main(abort: bool = False) -> None:
        if abort:
            raise typer.Abort()
        raise typer.BadParameter("not like that")

    bad = CliRunner().invoke(app, [])
    assert bad.exit_code == 2 and "not like that" in bad.output
    aborted = CliRunner().invoke(app, ["--abort"])
    assert aborted.exit_code == 1
    assert "unexpected" not in bad.output + aborted.output


@pytest.fixture
def no_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Label Studio SDK cannot be imported (as in a plain install; test_wheel_* below
    checks that case for real)."""
    for name in [m for m in sys.modules if m.partition(".")[0] == "label_studio_sdk"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "label_studio_sdk", None)


@pytest.mark.parametrize("command", ["push", "pull", "status"])
def test_label_commands_without_sdk_say_how_to_install(no_sdk: None, workspace: Path,
                                                       runner: CliRunner, command: str) -> None:
    result = invoke(runner, "label", command, "-w", workspace)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: {SDK_MISSING}"]


def test_round_hooks_without_sdk_warn_instead_of_failing(no_sdk: None, workspace: Path) -> None:
    """A round with [labelstudio] url set goes on without the SDK, as it does when the server
    is down: the review queue stays for the next push, and the line says what to install."""
    toml = workspace / "sslall.toml"
    toml.write_text(toml.read_text(encoding="utf-8").replace(
        'url = ""', 'url = "http://127.0.0.1:9"', 1), encoding="utf-8")
    ws = Workspace(workspace)
    config = ws.config()
    assert config.labelstudio.url
    with PoolStore(ws.db_path) as store:
        pulled = pull_if_configured(ws, config, store)
        pushed = push_if_configured(ws, config, store)
    assert pulled is not None and pulled.error == f"Label Studio pull skipped: {SDK_MISSING}"
    assert pushed is not None and pushed.error == f"Label Studio push skipped: {SDK_MISSING}"


# -- the built wheel in a fresh venv ---------------------------------------------------------
# Installing torch & co. from PyPI in a test would take minutes and gigabytes and need the
# network. Instead the fresh venv sees exactly the distributions pip would install for the
# wheel's base requirements (their closure, read from the installed metadata; linked from this
# venv, not copied) and nothing else: no label-studio-sdk nor what only it needs (nltk, black,
# faker, ...), no editable sslall.
# `pip install --no-index` of the wheel then proves that closure satisfies what the wheel
# declares, and `pip check` that it is consistent.


def _closure(requirements: list[Requirement]) -> dict[str, metadata.Distribution]:
    """Installed distributions that `requirements` (no extras) pull in, by canonical name."""
    found: dict[str, metadata.Distribution] = {}
    done: set[tuple[str, str]] = set()  # (distribution, extra) whose requirements are queued
    todo = [r for r in requirements if r.marker is None or r.marker.evaluate({"extra": ""})]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name not in found:
            found[name] = metadata.distribution(req.name)
        for extra in ("", *sorted(req.extras)):
            if (name, extra) in done:
                continue
            done.add((name, extra))
            for sub in map(Requirement, found[name].requires or []):
                if (sub.marker.evaluate({"extra": extra}) if sub.marker is not None
                        else extra == ""):
                    todo.append(sub)
    return found


def _link_site(dists: dict[str, metadata.Distribution], target: Path) -> None:
    """A folder holding (as symlinks) the top-level entries of `dists`' installed files."""
    target.mkdir()
    for dist in dists.values():
        assert dist.files, f"{dist.metadata['Name']} lists no files (no RECORD)"
        for top in {f.parts[0] for f in dist.files if f.parts[0] != ".."}:
            link = target / top
            if not link.exists():
                link.symlink_to(Path(str(dist.locate_file(top))).resolve())


def _run(*args: object, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{proc.args}: rc {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def _build_wheel(tmp: Path) -> Path:
    """The wheel of this checkout, built from a copy (setuptools writes build/ and egg-info)."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "sslall", src / "sslall",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _ok(_run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
             "--no-index", "--wheel-dir", tmp / "dist", src, cwd=tmp))
    (wheel,) = (tmp / "dist").glob("sslall-*.whl")
    return wheel


def test_wheel_without_extras_runs_a_demo_and_a_round(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        (meta,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        requires = [line.partition(":")[2].strip() for line in
                    zf.read(meta).decode().splitlines() if line.startswith("Requires-Dist:")]
    base = [r for r in map(Requirement, requires)
            if r.marker is None or r.marker.evaluate({"extra": ""})]
    assert "label-studio-sdk" not in {canonicalize_name(r.name) for r in base}

    venv = tmp_path / "venv"
    _ok(_run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path))
    python = venv / "bin" / "python"
    site = Path(_ok(_run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))",
                         cwd=tmp_path)).stdout.strip())
    _link_site(_closure(base), tmp_path / "deps")
    (site / "_sslall_deps.pth").write_text(f"{tmp_path / 'deps'}\n", encoding="utf-8")
    pip = (sys.executable, "-m", "pip", "--python", python)
    _ok(_run(*pip, "install", "--quiet", "--no-index", wheel, cwd=tmp_path))
    _ok(_run(*pip, "check", cwd=tmp_path))
    assert _run(*pip, "show", "label-studio-sdk", cwd=tmp_path).returncode == 1
    where = _ok(_run(python, "-c", "import sslall; print(sslall.__file__)", cwd=tmp_path))
    assert Path(where.stdout.strip()).is_relative_to(site)
    assert _run(python, "-c", "import label_studio_sdk", cwd=tmp_path).returncode == 1

    sslall = venv / "bin" / "sslall"
    _ok(_run(sslall, "demo", tmp_path / "demo", "--rounds", "1", "--per-class", "40",
             "--backbone", "baseline-cnn", "--image-size", "32", cwd=tmp_path))
    ws = tmp_path / "demo" / "workspace"
    toml = ws / "sslall.toml"
    toml.write_text(toml.read_text(encoding="utf-8").replace(
        'url = ""', 'url = "http://127.0.0.1:9"', 1), encoding="utf-8")
    round_ = _ok(_run(sslall, "round", "-w", ws, cwd=tmp_path))
    assert "round 2 recorded" in round_.stdout
    for step in ("pull", "push"):
        assert f"warning: Label Studio {step} skipped: {SDK_MISSING}\n" in round_.stderr
    for command in ("push", "pull", "status"):
        label = _run(sslall, "label", command, "-w", ws, cwd=tmp_path)
        assert (label.returncode, label.stdout, label.stderr) == (2, "", f"error: {SDK_MISSING}\n")
