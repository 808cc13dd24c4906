"""Write a benchmark's results as JSON plus a markdown table (the README quotes the table)."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dpstack.version import __version__


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if 0 < abs(value) < 1e-3:  # parity errors and the like
            return f"{value:.1e}"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3f}"
    return str(value)


def machine() -> str:
    """The CPU model, its wide-vector extensions and the core count, recorded with every result: these shared
    machines change between sessions, and the extensions decide what fp32 / bf16 arithmetic costs."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            lines = cpuinfo.read().splitlines()
        model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), model)
        flags = set(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))
    except OSError:
        pass
    extensions = [name for name in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if name in flags]
    return f"{model} ({' '.join(extensions) or 'no AVX2'}), {os.cpu_count()} cores"


def write_results(
    out_dir: Path,
    name: str,
    rows: Sequence[dict[str, Any]],
    columns: Sequence[tuple[str, str]],
    meta: dict[str, Any],
) -> tuple[Path, Path]:
    """Write `<out_dir>/<name>.json` (every row and `meta`) and `<out_dir>/<name>.md` (chosen columns; a row
    without a column leaves its cell empty)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"machine": machine(), **meta, "dpstack_version": __version__, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    json_path = out_dir / f"{name}.json"
    json_path.write_text(json.dumps({"benchmark": name, "meta": meta, "rows": list(rows)}, indent=2) + "\n")
    lines = [
        "| " + " | ".join(title for title, _ in columns) + " |",
        "| " + " | ".join("---" for _ in columns) + " |",
        *("| " + " | ".join(_cell(row.get(key, "")) for _, key in columns) + " |" for row in rows),
    ]
    md_path = out_dir / f"{name}.md"
    md_path.write_text("\n".join(lines) + "\n")
    print(f"wrote {json_path} and {md_path}")
    return json_path, md_path


def merge_with_previous(
    out_dir: Path,
    name: str,
    rows: list[dict[str, Any]],
    order: Sequence[Any] | None = None,
    *,
    key: Callable[[dict[str, Any]], Any] = lambda row: row["recipe"],
) -> list[dict[str, Any]]:
    """`rows` plus the rows of `<out_dir>/<name>.json` whose `key` this run did not re-measure: the kept rows
    first, or all of them in the order of their keys in `order`."""
    previous = out_dir / f"{name}.json"
    if not previous.exists():
        return rows
    done = {key(r) for r in rows}
    merged = [r for r in json.loads(previous.read_text())["rows"] if key(r) not in done] + rows
    return merged if order is None else sorted(merged, key=lambda r: list(order).index(key(r)))
