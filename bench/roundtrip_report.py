"""Figures and output of bench/roundtrip.py: the result records, ratios, tables, files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

BASELINES = ("echo", "raw-redis")


@dataclasses.dataclass(frozen=True)
class WrkRun:
    """One wrk measurement at a fixed concurrency."""

    connections: int
    requests: int
    duration_s: float
    req_per_s: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    non_2xx: int
    socket_errors: dict[str, int]

    @property
    def clean(self) -> bool:
        """No non-2xx answers and no connect/read/write/timeout errors."""
        return self.non_2xx == 0 and not any(
            n for kind, n in self.socket_errors.items() if kind != "status_gt_399"
        )


@dataclasses.dataclass
class ModeResult:
    """A mode's outcome: `ok` with runs, or `skipped`/`failed` with a note."""

    mode: str
    status: str
    note: str = ""
    load_avg_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    other_cpu_pct: float | None = None
    wall_s: float | None = None
    runs: dict[int, WrkRun] = dataclasses.field(default_factory=dict)


def ratios(results: list[ModeResult]) -> dict[str, dict[str, dict[str, float]]]:
    """mode -> baseline -> {c1_p50, c1_req_per_s, c32_req_per_s} as mode ÷ baseline."""
    ok = {r.mode: r for r in results if r.status == "ok"}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for mode, r in ok.items():
        for base in BASELINES:
            if base not in ok:
                continue
            b = ok[base]
            out.setdefault(mode, {})[base] = {
                "c1_p50": round(r.runs[1].p50_ms / b.runs[1].p50_ms, 2),
                "c1_req_per_s": round(r.runs[1].req_per_s / b.runs[1].req_per_s, 3),
                "c32_req_per_s": round(r.runs[32].req_per_s / b.runs[32].req_per_s, 3),
            }
    return out


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def figure_rows(results: list[ModeResult]) -> list[list[str]]:
    """One row per mode: c=1 and c=32 figures, non-2xx, machine load."""
    rows = []
    for r in results:
        other = "—" if r.other_cpu_pct is None else f"{r.other_cpu_pct:.0f}"
        load = [f"{r.load_avg_before[0]:.2f}", other]
        if r.status != "ok":
            rows.append([f"{r.mode} ({r.status})", *["—"] * 7, *load])
            continue
        c1, c32 = r.runs[1], r.runs[32]
        c1_cells = [_ms(c1.p50_ms), _ms(c1.p99_ms), f"{c1.req_per_s:,.0f}"]
        c32_cells = [f"{c32.req_per_s:,.0f}", _ms(c32.p50_ms), _ms(c32.p99_ms)]
        rows.append([r.mode, *c1_cells, *c32_cells, str(c1.non_2xx + c32.non_2xx), *load])
    return rows


def notes(results: list[ModeResult]) -> list[str]:
    """Why a mode was skipped or failed, and any wrk errors of a measured one."""
    out = [f"{r.mode}: {r.status}: {r.note.splitlines()[0]}" for r in results if r.note]
    for r in results:
        for run in r.runs.values():
            if not run.clean:
                out.append(
                    f"{r.mode} c={run.connections}: {run.non_2xx} non-2xx, "
                    f"wrk errors {run.socket_errors}"
                )
    return out


# Rich shows the two-line headers; Markdown gets them on one line.
FIGURE_HEADERS = ["mode", "c=1\np50 ms", "c=1\np99 ms", "c=1\nreq/s", "c=32\nreq/s"]
FIGURE_HEADERS += ["c=32\np50 ms", "c=32\np99 ms", "non-\n2xx", "load\n1 min", "other\nCPU %"]
RATIO_HEADERS = ["mode", "baseline", "c=1\np50 ratio", "c=1\nreq/s ratio", "c=32\nreq/s ratio"]


def ratio_rows(table: dict[str, dict[str, dict[str, float]]]) -> list[list[str]]:
    """One row per (mode, baseline) pair; echo, the root baseline, is not compared."""
    return [
        [mode, base, f"{r['c1_p50']:.2f}", f"{r['c1_req_per_s']:.3f}", f"{r['c32_req_per_s']:.3f}"]
        for mode, by_base in table.items()
        for base, r in by_base.items()
        if mode not in (base, "echo")
    ]


def print_tables(results: list[ModeResult], table: dict[str, Any]) -> None:
    """The figures, the ratios and the notes, on the terminal."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)  # piped: do not squeeze the columns into 80
    for title, headers, rows in (
        ("round trip", FIGURE_HEADERS, figure_rows(results)),
        ("mode ÷ baseline", RATIO_HEADERS, ratio_rows(table)),
    ):
        if not rows:
            continue
        t = Table(title=title, box=box.SIMPLE_HEAD)
        for header in headers:
            t.add_column(header, justify="left" if header == "mode" else "right")
        for row in rows:
            t.add_row(*row)
        console.print(t)
    for note in notes(results):
        console.print(note, markup=False, highlight=False)


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    titles = [h.replace("-\n", "-").replace("\n", " ") for h in headers]
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _md_facts(report: dict[str, Any]) -> str:
    m, s = report["machine"], report["settings"]
    load = " / ".join(f"{x:.2f}" for x in m["load_avg_start"])
    load_end = " / ".join(f"{x:.2f}" for x in report["load_avg_end"])
    return (
        f"- machine: {m['nproc']} CPUs, {m['cpu_model']}, Python {m['python']}, "
        f"batchgate {m['batchgate_commit']}\n"
        f"- load average (1/5/15 min): {load} at start, {load_end} at end. Other work on "
        "the machine shares the CPUs with the targets and wrk: `load 1 min` is taken before "
        "each mode, `other CPU %` is the share of all CPUs used by processes other than the "
        "benchmark's while the mode ran (/proc/stat minus our own rusage)\n"
        f"- wrk: {s['threads']} thread(s), POST `1` as application/json, "
        f"{s['warmup_s']} s warm-up at c={s['warmup_connections']}, then {s['seconds']} s "
        "at each of c=1 and c=32"
    )


def markdown(report: dict[str, Any], results: list[ModeResult]) -> str:
    """bench/results/roundtrip-latest.md: facts, figures, ratios, notes."""
    parts = [
        f"# Round trip of a no-op job — {report['started_at']}",
        _md_facts(report),
        _md_table(FIGURE_HEADERS, figure_rows(results)),
    ]
    if ratio_rows(report["ratios"]):
        parts.append(
            "Ratios are mode ÷ baseline, same run: for p50, above 1 is slower; "
            "for req/s, below 1 is fewer."
        )
        parts.append(_md_table(RATIO_HEADERS, ratio_rows(report["ratios"])))
    if notes(results):
        parts.append("Notes:\n\n" + "\n".join(f"- {n}" for n in notes(results)))
    return "\n\n".join(parts)


def write_results(report: dict[str, Any], results: list[ModeResult], out_dir: Path) -> Path:
    """Write the timestamped JSON and overwrite roundtrip-latest.md; return the JSON path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"roundtrip-{report['started_at'].replace(':', '').replace('-', '')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "roundtrip-latest.md").write_text(markdown(report, results) + "\n")
    return path
