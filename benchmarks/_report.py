"""Shared helpers of the benchmark scripts: paths, the machine, JSON output, BENCHMARKS.md.

Each benchmark owns one section of BENCHMARKS.md, delimited by `<!-- bench:NAME -->` and
`<!-- /bench:NAME -->`; `write_section` replaces that section in place (or appends it), so
running one script never disturbs the others' figures.
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import platform
import pstats
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REPORT = REPO / "BENCHMARKS.md"
VENV_BIN = REPO / ".venv" / "bin"

_HEADER = """# Benchmarks

Figures written by the scripts under `benchmarks/` (`make bench` runs them all through
`benchmarks/run.py`; each script also runs alone and rewrites only its own section).
Each section says what was measured, on which machine, when, and with which command.

**Caveat:** the reference machine is a shared 2-core VM; another engineer's test runs may
have been using the CPU at the same time. Absolute times are therefore noisy. Where a target
is a ratio, both sides are measured side by side in the same run, interleaved where possible,
and the ratio is what to trust.
"""


def data_root() -> Path:
    """Real image data: `$SSLALL_DATA`, else `../shared/data` relative to the repo root."""
    given = os.environ.get("SSLALL_DATA")
    if given:
        return Path(given).expanduser().resolve()
    near = (REPO.parent / "shared" / "data").resolve()
    return near if near.is_dir() else Path("/work/shared/data")


def pick_images(folder: Path, n: int) -> list[Path]:
    """n image files spread evenly over the sorted files under folder (deterministic)."""
    from sslall.data._images import IMAGE_SUFFIXES

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise SystemExit(f"no images under {folder}; set SSLALL_DATA (see ../shared/data/README.md)")
    if n >= len(files):
        return files
    return [files[int(i * len(files) / n)] for i in range(n)]


def samples_of(paths: Sequence[Path]) -> list[tuple[str, str]]:
    """(sha256 id, path) pairs, as the pool store names samples."""
    from sslall._fsutil import sha256_file

    return [(sha256_file(p), str(p)) for p in paths]


def profile_text(prof: cProfile.Profile, sort: str, limit: int) -> str:
    """The top `limit` rows of a profile by `sort`, paths relative to the repo."""
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats(sort).print_stats(limit)
    lines = buf.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    root = str(REPO) + "/"
    return "\n".join(line.replace(root, "").rstrip() for line in lines[start:] if line.strip())


@contextmanager
def work_folder(keep: Path | None, name: str) -> Iterator[Path]:
    """`keep` (created, and left in place) or a new temporary folder removed afterwards."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    root = Path(tempfile.mkdtemp(prefix=f"sslall-bench-{name}-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def sslall_exe() -> list[str]:
    """The `sslall` console script of the repo's venv (falls back to `python -m sslall`)."""
    exe = VENV_BIN / "sslall"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "sslall"]


def sslall_init(ws: Path, classes: Sequence[str]) -> None:
    """`sslall init WS --classes ...`: a real, empty workspace."""
    subprocess.run([*sslall_exe(), "init", str(ws), "--classes", ",".join(classes)], check=True,
                   stdout=subprocess.DEVNULL)


def total_ram_bytes() -> int:
    with open("/proc/meminfo", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def machine() -> dict:
    """The machine, as `platform`, `os.cpu_count()` and /proc/meminfo see it."""
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": _cpu_model() or platform.processor(),
        "cpu_count": os.cpu_count(),
        "ram_gib": round(total_ram_bytes() / 2**30, 1),
        "python": platform.python_version(),
        "loadavg_at_end": [round(x, 2) for x in load],
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def command_line() -> str:
    """The exact command that ran this script, relative to the repo root."""
    exe = Path(sys.executable)
    try:
        exe_s = str(exe.relative_to(REPO)) if exe.is_relative_to(REPO) else str(exe)
    except ValueError:
        exe_s = str(exe)
    script = Path(sys.argv[0]).resolve()
    script_s = str(script.relative_to(REPO)) if script.is_relative_to(REPO) else str(script)
    env = f"SSLALL_DATA={shlex.quote(os.environ['SSLALL_DATA'])} " if "SSLALL_DATA" in os.environ else ""
    return env + shlex.join([exe_s, script_s, *sys.argv[1:]])


def emit(results: dict) -> None:
    """Print the results as one JSON line on stdout."""
    sys.stdout.write(json.dumps(results, sort_keys=True, default=_jsonable) + "\n")
    sys.stdout.flush()


def _jsonable(obj: object) -> object:
    if hasattr(obj, "item"):
        return obj.item()  # numpy scalars
    return str(obj)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**NOT met**"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def mib(n_bytes: float) -> float:
    return round(n_bytes / 2**20, 1)


def write_section(name: str, title: str, body: str, *, quick: bool = False,
                  notes: Sequence[str] = ()) -> Path:
    """Replace (or append) the section NAME of BENCHMARKS.md with the given body.

    The section gets the title, the body (what was measured and the table), notes, the
    exact command, the machine and the date.
    """
    m = machine()
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"<!-- bench:{name} -->", f"## {title}", ""]
    if quick:
        parts += ["*Smoke-size run (`--quick`): figures are not the targets' sizes.*", ""]
    parts += [body.strip(), ""]
    for note in notes:
        parts.append(f"- {note}")
    if notes:
        parts.append("")
    parts += [
        "Command (from the repo root):",
        "",
        "```bash",
        command_line(),
        "```",
        "",
        f"Machine: {m['platform']}, {m['processor']}, {m['cpu_count']} CPUs "
        f"(`os.cpu_count()`), {m['ram_gib']} GiB RAM, Python {m['python']}; "
        f"load average at the end {m['loadavg_at_end']}. Date: {date}.",
        f"<!-- /bench:{name} -->",
    ]
    block = "\n".join(parts)
    text = REPORT.read_text(encoding="utf-8") if REPORT.exists() else _HEADER
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->",
                         re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    REPORT.write_text(text.rstrip("\n") + "\n", encoding="utf-8")
    return REPORT
