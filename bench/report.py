"""Results: one row per (target, concurrency); the console table, JSON and the dated markdown section."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

THIN = "thin-proxy"
DIRECT = "direct"


@dataclass
class Row:
    target: str
    conc: int
    rps: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    cpu_us_per_req: float | None = None
    cpu_us_per_chunk: float | None = None  # streaming: CPU µs/req over the answer's chunk events
    upstream_cpu_us_per_req: float | None = None
    rss_mib: float | None = None
    requests: int | None = None
    errors: int | None = None
    codes: dict[str, int] = field(default_factory=dict)
    rps_vs_thin: float | None = None
    added_p50_ms: float | None = None
    error: str | None = None


def pick_medians(samples: Sequence[Row]) -> list[Row]:
    """Per (target, c), the sample with the median RPS (a whole sample, so its columns stay consistent)."""
    groups: dict[tuple[str, int], list[Row]] = {}
    for sample in samples:
        groups.setdefault((sample.target, sample.conc), []).append(sample)
    picked = []
    for group in groups.values():
        measured = [row for row in group if row.rps is not None]
        if not measured:
            picked.append(group[-1])
            continue
        median = statistics.median_low([row.rps or 0.0 for row in measured])
        picked.append(next(row for row in measured if row.rps == median))
    return picked


def add_comparisons(rows: Sequence[Row]) -> None:
    """RPS over the thin proxy's and p50 minus direct's, both at the same concurrency."""
    by_key = {(row.target, row.conc): row for row in rows}
    for row in rows:
        thin, direct = by_key.get((THIN, row.conc)), by_key.get((DIRECT, row.conc))
        if row.rps is not None and thin is not None and thin.rps:
            row.rps_vs_thin = row.rps / thin.rps
        if row.p50_ms is not None and direct is not None and direct.p50_ms is not None:
            row.added_p50_ms = row.p50_ms - direct.p50_ms


COLUMNS = ("target", "c", "RPS", "p50 ms", "p99 ms", "CPU µs/req", "RSS MiB", "errors", "x thin", "+p50 ms")
CHUNK_COLUMN = "CPU µs/chunk"


def _columns(rows: Sequence[Row]) -> list[str]:
    """The columns; CPU per chunk after CPU per request when the run streamed."""
    columns = list(COLUMNS)
    if any(row.cpu_us_per_chunk is not None for row in rows):
        columns.insert(columns.index("CPU µs/req") + 1, CHUNK_COLUMN)
    return columns


def _cells(row: Row, columns: Sequence[str]) -> list[str]:
    if row.error is not None and row.rps is None:
        return [row.target, str(row.conc), "FAILED", *[""] * (len(columns) - 3)]

    def num(value: float | None, spec: str) -> str:
        return "—" if value is None else format(value, spec)

    cells = [
        row.target,
        str(row.conc),
        num(row.rps, ",.0f"),
        num(row.p50_ms, ".2f"),
        num(row.p99_ms, ".2f"),
        num(row.cpu_us_per_req, ",.0f"),
        num(row.rss_mib, ".0f"),
        "—" if row.errors is None else str(row.errors),
        num(row.rps_vs_thin, ".2f"),
        num(row.added_p50_ms, "+.2f"),
    ]
    if CHUNK_COLUMN in columns:
        cells.insert(columns.index(CHUNK_COLUMN), num(row.cpu_us_per_chunk, ",.1f"))
    return cells


def text_table(rows: Sequence[Row]) -> str:
    columns = _columns(rows)
    cells = [columns, *(_cells(row, columns) for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = []
    for n, line in enumerate(cells):
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(line, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: Sequence[Row]) -> str:
    columns = _columns(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cells(row, columns)) + " |" for row in rows]
    return "\n".join(lines)


def failures(rows: Sequence[Row]) -> dict[str, str]:
    """First error per target (a target that failed to start fails every row the same way)."""
    seen: dict[str, str] = {}
    for row in rows:
        if row.error is not None:
            seen.setdefault(f"{row.target} (c={row.conc})" if row.rps is not None else row.target, row.error)
    return seen


def write_json(
    path: Path, meta: dict[str, object], rows: Sequence[Row], targets: list[dict[str, object]]
) -> None:
    payload = {"meta": meta, "targets": targets, "rows": [asdict(row) for row in rows]}
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


def append_markdown(path: Path, heading: str, command: str, notes: str, rows: Sequence[Row]) -> None:
    section = [f"## {heading}", "", "```sh", command, "```", "", markdown_table(rows), "", notes]
    problems = failures(rows)
    if problems:
        section += [
            "",
            *(f"- **{name}** failed: {reason.splitlines()[0]}" for name, reason in problems.items()),
        ]
    existing = path.read_text() if path.exists() else ""
    separator = (
        "" if not existing or existing.endswith("\n\n") else ("\n" if existing.endswith("\n") else "\n\n")
    )
    path.write_text(existing + separator + "\n".join(section) + "\n")
