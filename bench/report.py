"""The benchmark's output: the table printed at the end of a run, and the JSON written
beside it (with what the machine was)."""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from bench.harness import Figure, Stats
from bench.sampling import (
    DISTURBED_SHARE,
    load_average,
)


def format_number(value: float | None) -> str:
    """A compact human form of a figure: 3 significant digits, thousands separated."""
    if value is None or math.isnan(value):
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _spread(stats: Stats | None, unit: str) -> str:
    if stats is None:
        return "-"
    return f"{format_number(stats.median)} {unit} [{format_number(stats.minimum)}-{format_number(stats.maximum)}]"


def _cpu_text(figure: Figure, baseline: bool) -> str:
    shares = figure.cpu(baseline)

    def percent(value: float | None) -> str:
        return "-" if value is None else f"{value * 100:.0f}"

    text = f"{percent(shares['server'])}/{percent(shares['load_generator'])}"
    others = shares.get("server_core_others")
    load_others = shares.get("load_core_others")
    if load_others is not None and load_others >= 0.05:
        text += f"(+{percent(others or 0.0)}, load +{percent(load_others)})"
    elif others is not None and others >= 0.05:
        text += f"(+{percent(others)})"
    return text


def render_table(figures: Iterable[Figure]) -> str:
    """A plain-text table: per figure one line with the ratio (and the spread of the
    run-by-run ratios), target, verdict and CPU shares, then the figure's and the
    baseline's medians with their min-max over the runs."""
    header = (
        "#",
        "ratio [runs min-max]",
        "target",
        "met",
        "CPU% server/load(+others on server core, load +others on load core): figure | baseline",
    )
    rows: list[tuple[tuple[str, ...], list[str]]] = []
    for figure in figures:
        if figure.skipped is not None:
            rows.append(((figure.id, "-", "-", "SKIPPED", ""), [f"{figure.title}: {figure.skipped[:200]}"]))
            continue
        if figure.error is not None:
            last = figure.error.strip().splitlines()[-1] if figure.error.strip() else "error"
            rows.append(((figure.id, "-", "-", "FAILED", ""), [f"{figure.title}: {last[:160]}"]))
            continue
        paired = figure.paired_ratios
        ratio = format_number(figure.ratio)
        if paired:
            ratio += f" [{format_number(min(paired))}-{format_number(max(paired))}]"
        if figure.target is None:
            target = "-"
        elif figure.judged == "value":
            target = f"{figure.sense} {format_number(figure.target)} {figure.unit}"
        else:
            target = f"{figure.sense} {format_number(figure.target)}"
        met = {True: "yes", False: "NO", None: "-"}[figure.met]
        if figure.disturbed and figure.met is not None:
            met += "*"
        cpu = f"{_cpu_text(figure, False)} | {_cpu_text(figure, True)}"
        lines = [f"{figure.title}: {_spread(figure.stats, figure.unit)}"]
        if figure.baseline_title:
            lines.append(f"vs {figure.baseline_title}: {_spread(figure.baseline_stats, figure.baseline_unit)}")
        rows.append(((figure.id, ratio, target, met, cpu), lines))
    cells = [header, *(cells for cells, _ in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(f"{cell:<{widths[i]}}" for i, cell in enumerate(row)).rstrip()

    text = [line(header), "-" * max(len(line(header)), 60)]
    for row, descriptions in rows:
        text.append(line(row))
        text.extend(f"{'':<{widths[0]}}    {description}" for description in descriptions)
    if any(row[3].endswith("*") for row, _ in rows):
        text.append(
            f"* other processes took {DISTURBED_SHARE:.0%} or more of a core used (the server's, or the load"
            " generator's less its interrupt time) in half the pairs of runs or more:"
            " the verdict is not trustworthy (run again on a quiet machine)"
        )
    return "\n".join(text)


def machine_info() -> dict[str, Any]:
    """What the run happened on: CPUs, load, versions, the commit measured."""
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "affinity_available": hasattr(os, "sched_setaffinity"),
        "load_average": load_average(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    for name in ("twisted", "cryptography", "OpenSSL", "lxml"):
        try:
            module = importlib.import_module(name)
            info[name] = getattr(module, "__version__", "?")
        except ImportError:  # pragma: no cover - reported, not fatal
            info[name] = None
    try:
        from cryptography.hazmat.backends.openssl import backend

        info["openssl"] = backend.openssl_version_text()
    except ImportError:  # pragma: no cover
        info["openssl"] = None
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        commit = subprocess.run(
            ["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        info["git"] = {"commit": commit or None, "dirty": bool(dirty)}
    except OSError:  # pragma: no cover
        info["git"] = None
    return info


def write_json(path: str, figures: Sequence[Figure], meta: dict[str, Any]) -> None:
    """Write every figure, with the run's metadata, as one JSON document."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    document = {"meta": meta, "figures": [figure.to_json() for figure in figures]}
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2, sort_keys=False, default=_json_default)
        handle.write("\n")
    os.replace(temporary, path)


def _json_default(value: object) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


# ---------------------------------------------------------------------------------------
# Settings and the suite context
