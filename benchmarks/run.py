"""Run the benchmark scripts (`benchmarks/bench_*.py`) one after another.

Every `bench_NAME.py` next to this file is a benchmark; it is found, not listed here, so a new
script joins `make bench` by existing. Each runs in its own process (one at a time: they would
compete for the CPU), writes its own section of BENCHMARKS.md and prints one JSON line.

    python benchmarks/run.py                  # all, at the targets' sizes
    python benchmarks/run.py import status    # some, by NAME
    python benchmarks/run.py --quick          # all, at smoke size
    python benchmarks/run.py --list
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def discover() -> dict[str, Path]:
    """NAME -> path of every `bench_NAME.py` in this folder, sorted by name."""
    return {p.stem.removeprefix("bench_"): p for p in sorted(HERE.glob("bench_*.py"))}


def select(found: dict[str, Path], names: list[str]) -> list[str]:
    """The chosen NAMEs in the order given (all when none); accepts `bench_x` and `bench_x.py`."""
    if not names:
        return list(found)
    chosen = []
    for raw in names:
        name = Path(raw).name.removesuffix(".py").removeprefix("bench_")
        if name not in found:
            raise SystemExit(f"no benchmark {raw!r} (have: {', '.join(found) or 'none'})")
        if name not in chosen:
            chosen.append(name)
    return chosen


def main() -> int:
    found = discover()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run (of: {', '.join(found)})")
    ap.add_argument("--quick", action="store_true", help="pass --quick: smoke sizes, not the targets'")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    ap.add_argument("--keep-going", action="store_true", help="run the rest after a failure")
    args = ap.parse_args()
    if args.list:
        for name, path in found.items():
            doc = _first_line(path)
            print(f"{name:12s} {doc}")
        return 0
    chosen = select(found, args.names)
    results: list[tuple[str, int, float]] = []
    for name in chosen:
        cmd = [sys.executable, str(found[name]), *(["--quick"] if args.quick else [])]
        print(f"== {name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        code = subprocess.run(cmd).returncode
        results.append((name, code, time.perf_counter() - t0))
        if code != 0 and not args.keep_going:
            break
    print("\n".join(f"== {n}: {'ok' if c == 0 else f'FAILED (exit {c})'} in {s:.0f} s"
                    for n, c, s in results), file=sys.stderr)
    skipped = chosen[len(results):]
    if skipped:
        print(f"== not run after the failure: {', '.join(skipped)}", file=sys.stderr)
    return 0 if all(c == 0 for _, c, _ in results) and not skipped else 1


def _first_line(path: Path) -> str:
    """The first line of a script's module docstring (read as text, not imported)."""
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.strip().strip('"').strip()
        if text:
            return text
    return ""


if __name__ == "__main__":
    sys.exit(main())
