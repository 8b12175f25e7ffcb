"""What the duplicate-row check (``runtime.duplicates``) adds to indexing a split, measured side by side.

    python benchmarks/dedupe_cost.py [--rows 100000] [--file-bytes 6000] [--rounds 3]

Writes ``--rows`` distinct files of ``--file-bytes`` random bytes (6 KB: a 64 px lab PNG is about that) and a csv
listing each once, then times, in interleaved rounds on a warm page cache: ``load_index`` with the check off
(``find_duplicates`` replaced by a no-op), with ``--dedupe path`` (``os.path.realpath`` of every row) and with
``--dedupe content`` (sha256 of every file, ``HASH_THREADS`` threads). Prints one JSON object: the minimum seconds of
each and the check's cost (minimum with check - minimum without).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from clip_debias.runtime import datasets, duplicates
from clip_debias.runtime.limits import IndexChecks


def write_split(root: Path, rows: int, size: int) -> Path:
    """``rows`` files of ``size`` random bytes under ``root/img/`` (1,000 per folder) and ``root/data.csv``."""
    lines = ["path,label"]
    for i in range(rows):
        folder = root / "img" / f"{i // 1000:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:06d}.png").write_bytes(os.urandom(size))
        lines.append(f"img/{i // 1000:04d}/{i:06d}.png,{i % 2}")
    (root / "data.csv").write_text("\n".join(lines) + "\n")
    return root / "data.csv"


def timed(csv: Path, mode: str) -> float:
    """Seconds of one ``load_index`` with the check ``mode`` (off | path | content)."""
    real = datasets.find_duplicates
    if mode == "off":
        datasets.find_duplicates = lambda paths, pairs, m: duplicates.Duplicates([], [])  # type: ignore
    try:
        t0 = time.perf_counter()
        datasets.load_index("csv", csv, "test", checks=IndexChecks(dedupe="content" if mode == "content" else "path"))
        return time.perf_counter() - t0
    finally:
        datasets.find_duplicates = real


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--file-bytes", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        csv = write_split(Path(tmp), args.rows, args.file_bytes)
        times: dict[str, list[float]] = {"off": [], "path": [], "content": []}
        timed(csv, "content")  # warm the page cache
        for _ in range(args.rounds):
            for mode in times:
                times[mode].append(timed(csv, mode))
    best = {mode: min(t) for mode, t in times.items()}
    print(json.dumps({
        "rows": args.rows, "file_bytes": args.file_bytes, "rounds": args.rounds,
        "cpu": platform.processor() or platform.machine(), "load_1min": os.getloadavg()[0],
        "load_index_s": {m: round(t, 3) for m, t in best.items()},
        "check_cost_s": {m: round(best[m] - best["off"], 3) for m in ("path", "content")},
    }, indent=2))


if __name__ == "__main__":
    main()
