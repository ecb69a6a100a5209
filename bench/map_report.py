"""Figures and output of bench/map.py: the measurement record, the summary, the files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from roundtrip_report import _md_table


@dataclasses.dataclass(frozen=True)
class Headline:
    """One figure as reported: its value, its target, and whether the value meets it."""

    figure: str
    value: float
    unit: str
    target: str = ""  # e.g. "<= 5 s"; empty for a figure given for context
    met: bool | None = None

    def cells(self) -> list[str]:
        value = f"{self.value:,.0f}" if abs(self.value) >= 1000 else f"{self.value:.3g}"
        verdict = "—" if self.met is None else ("yes" if self.met else "**no**")
        return [self.figure, f"{value} {self.unit}".strip(), self.target or "—", verdict]


@dataclasses.dataclass
class Measurement:
    """One of the measurements (a, b, c): `ok` with figures, or `failed` with a note."""

    name: str
    title: str
    status: str = "ok"
    note: str = ""
    load_avg_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_avg_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    other_cpu_pct: float | None = None  # set by roundtrip.other_cpu
    wall_s: float | None = None  # set by roundtrip.other_cpu
    figures: dict[str, Any] = dataclasses.field(default_factory=dict)
    headlines: list[Headline] = dataclasses.field(default_factory=list)


HEADERS = ["measurement", "figure", "value", "target", "meets"]
LOAD_HEADERS = ["measurement", "status", "load 1 min before", "load 1 min after", "other CPU %"]
LOAD_HEADERS += ["wall s"]


def figure_rows(results: list[Measurement]) -> list[list[str]]:
    rows = []
    for m in results:
        if m.status != "ok":
            rows.append([f"{m.name} ({m.status})", m.note.splitlines()[0][:80], "—", "—", "—"])
        rows += [[m.name, *h.cells()] for h in m.headlines]
    return rows


def load_rows(results: list[Measurement]) -> list[list[str]]:
    def opt(x: float | None) -> str:
        return "—" if x is None else f"{x:.1f}"

    return [
        [m.name, m.status, f"{m.load_avg_before[0]:.2f}", f"{m.load_avg_after[0]:.2f}",
         opt(m.other_cpu_pct), opt(m.wall_s)]
        for m in results
    ]  # fmt: skip


def print_summary(results: list[Measurement]) -> None:
    """The figures with their targets, and the load each measurement ran under."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)
    for title, headers, rows in (
        ("map jobs", HEADERS, figure_rows(results)),
        ("load", LOAD_HEADERS, load_rows(results)),
    ):
        t = Table(title=title, box=box.SIMPLE_HEAD)
        for header in headers:
            t.add_column(header, justify="left" if header in ("measurement", "figure") else "right")
        for row in rows:
            t.add_row(*(cell.replace("**", "") for cell in row))
        console.print(t)
    for m in results:
        if m.note:
            console.print(f"{m.name}: {m.status}: {m.note}", markup=False, highlight=False)


def _md_facts(report: dict[str, Any]) -> str:
    m, s = report["machine"], report["settings"]
    load = " / ".join(f"{x:.2f}" for x in m["load_avg_start"])
    load_end = " / ".join(f"{x:.2f}" for x in report["load_avg_end"])
    return (
        f"- command: `{report['command']}`\n"
        f"- machine: {m['nproc']} CPUs, {m['cpu_model']}, {report['memory_mb']:,} MB RAM, "
        f"Python {m['python']}, batchgate {m['batchgate_commit']}\n"
        f"- load average (1/5/15 min): {load} at start, {load_end} at end. Other work on the "
        "machine shares the 2 CPUs: `other CPU %` is the share "
        "of all CPUs used by processes other than the benchmark's while the measurement ran\n"
        f"- server: `batchgate serve bench/map_app.py --workers 2 --max-body 2GB "
        f"--max-items 20000000` on a free 127.0.0.1 port, a fresh one and a fresh "
        f"`--data-dir` per measurement; settings: `{json.dumps(s)}`"
    )


def markdown(report: dict[str, Any], results: list[Measurement]) -> str:
    """bench/results/map-latest.md: facts, figures against targets, load, notes."""
    parts = [
        f"# Map jobs — {report['started_at']}",
        _md_facts(report),
        _md_table(HEADERS, figure_rows(results)),
        _md_table(LOAD_HEADERS, load_rows(results)),
    ]
    details = [f"- {m.name}: {line}" for m in results for line in m.figures.get("notes", [])]
    details += [f"- {m.name}: {m.status}: {m.note}" for m in results if m.note]
    if details:
        parts.append("Notes:\n\n" + "\n".join(details))
    parts.append(f"Every figure and run: `{report['json_name']}`.")
    return "\n\n".join(parts)


def write_results(report: dict[str, Any], results: list[Measurement], out_dir: Path) -> Path:
    """Write map-<timestamp>.json and overwrite map-latest.md; return the JSON path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"map-{report['started_at'].replace(':', '').replace('-', '')}.json"
    report["json_name"] = path.name
    report["measurements"] = [dataclasses.asdict(m) for m in results]
    path.write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "map-latest.md").write_text(markdown(report, results) + "\n")
    return path
