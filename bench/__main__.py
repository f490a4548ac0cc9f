"""``python -m bench``: run the benchmarks, print the table, write the JSON.

See ``bench/README.rst`` for the method. Exit status: 0 when every benchmark ran (whether
or not its target was met), 1 when one failed to run, 2 with ``--strict`` when a target
was missed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from typing import Any

from bench import MODULES, OPT_IN, short_name
from bench.harness import Context, Figure, Settings, failed_figure
from bench.report import machine_info, render_table, write_json
from bench.sampling import DISTURBED_SHARE, LOAD_CPU, SERVER_CPU, pin


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmarks of IRP and SixChat, each against a baseline of the bare stack,"
        " run side by side; prints a table and writes JSON.",
    )
    parser.add_argument("--quick", action="store_true", help="short runs and small sizes (CI: well under a minute)")
    parser.add_argument("--only", default="", help="comma-separated figure ids or module names (default: all)")
    parser.add_argument("--runs", type=int, default=None, help="runs of each figure and baseline (default 5, quick 3)")
    parser.add_argument("--json", default=None, help="where to write the results (default bench/results/latest[-quick].json)")
    parser.add_argument("--key-type", default="p384", choices=("p384", "p256", "ed25519"), help="key type of every CA and leaf (default p384, the product's)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (databases, server logs)")
    parser.add_argument("--strict", action="store_true", help="exit with status 2 when a target is missed")
    parser.add_argument("--list", action="store_true", help="list the benchmark modules and their figures, then exit")
    parser.add_argument(
        "--retries",
        type=int,
        default=None,
        help="run a module again when other processes took 15%% or more of a core it used (the"
        " server's or the load generator's) in half its pairs of runs or more (default 1; 0 with --quick)",
    )
    return parser.parse_args(argv)


def selected_modules(only: str) -> list[str]:
    """The modules named by ``--only`` (by module name, short name such as ``postgres``,
    or figure id), in run order; by default all but the opt-in ones (:data:`bench.OPT_IN`)."""
    if not only:
        return [name for name in MODULES if name not in OPT_IN]
    wanted = {item.strip() for item in only.split(",") if item.strip()}
    chosen = [
        name
        for name, figures in MODULES.items()
        if name in wanted
        or short_name(name) in wanted
        or any(figure in wanted or figure.rstrip("ab") in wanted for figure in figures)
    ]
    if not chosen:
        raise SystemExit(f"--only {only!r} names no benchmark; see --list")
    return chosen


def disturbance(figures: list[Figure]) -> float:
    """The worst :attr:`~bench.harness.Figure.disturbance` of ``figures``: per figure, the
    upper median over its pairs of runs of the largest share of a core used (the server's
    or the load generator's) that other work took (0 when unknown)."""
    return max((figure.disturbance for figure in figures), default=0.0)


def run_module(ctx: Context, name: str, module: Any, summary: str, retries: int) -> list[Figure]:
    """Run one module; run it again (up to ``retries`` times) when other work took
    :data:`bench.sampling.DISTURBED_SHARE` or more of a core used (the server's or the load
    generator's) in half the pairs of runs or more, keeping the least disturbed attempt."""
    attempts: list[tuple[float, list[Figure]]] = []
    for attempt in range(retries + 1):
        try:
            results = module.run(ctx)
        except Exception:  # noqa: BLE001 - a broken benchmark is reported, the rest still run
            error = traceback.format_exc()
            print(error, file=sys.stderr, flush=True)
            return [failed_figure(MODULES[name][0], summary, error)]
        disturbed = disturbance(results)
        attempts.append((disturbed, results))
        if disturbed < DISTURBED_SHARE:
            break
        if attempt < retries:
            print(f"  other work took {disturbed:.0%} of a core used: running {name} again", flush=True)
    disturbed, results = min(attempts, key=lambda item: item[0])
    for figure in results:
        figure.details["attempts"] = len(attempts)
        figure.details["attempt_disturbance"] = [round(share, 3) for share, _ in attempts]
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks."""
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    if arguments.list:
        for name, ids in MODULES.items():
            module = importlib.import_module(f"bench.{name}")
            summary = (module.__doc__ or "").strip().splitlines()[0]
            optional = " (opt-in: --only " + short_name(name) + ")" if name in OPT_IN else ""
            print(f"{name:<20} figures {', '.join(ids):<8} {summary}{optional}")
        return 0
    settings = Settings.for_mode(arguments.quick, arguments.runs, arguments.key_type)
    modules = selected_modules(arguments.only)
    # A run of opt-in modules only writes its own file (bench/results/postgres.json), not
    # over the suite's latest.json.
    stem = "+".join(short_name(name) for name in modules) if set(modules) <= OPT_IN else "latest"
    default_name = f"{stem}-quick.json" if arguments.quick else f"{stem}.json"
    json_path = arguments.json or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", default_name)
    pin(LOAD_CPU)  # the orchestrator mostly waits; keep it off the server's core
    workdir = tempfile.mkdtemp(prefix="irp-bench-")
    started = time.time()
    before = machine_info()
    meta: dict[str, Any] = {
        "command": " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)]),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": settings,
        "pinning": {"server_cpu": SERVER_CPU, "load_generator_cpu": LOAD_CPU},
        "machine_before": before,
        "workdir": workdir if arguments.keep else None,
    }
    print(
        f"bench: {'quick' if settings.quick else 'full'} run, {settings.runs} runs per figure,"
        f" servers on CPU {SERVER_CPU}, load generators on CPU {LOAD_CPU};"
        f" load average {before['load_average'][0]:.2f}",
        flush=True,
    )
    ctx = Context(settings, workdir, log=lambda text: print(text, flush=True))
    figures: list[Figure] = []
    try:
        for name in modules:
            module = importlib.import_module(f"bench.{name}")
            summary = (module.__doc__ or name).strip().splitlines()[0]
            print(f"== {name}: {summary}", flush=True)
            module_started = time.perf_counter()
            retries = arguments.retries if arguments.retries is not None else (0 if settings.quick else 1)
            results = run_module(ctx, name, module, summary, retries)
            for figure in results:
                figure.details.setdefault("module", name)
                figure.details.setdefault("seconds", round(time.perf_counter() - module_started, 1))
                print(render_table([figure]).split("\n", 2)[2], flush=True)
            figures.extend(results)
    finally:
        ctx.close()
        meta["duration_s"] = round(time.time() - started, 1)
        meta["machine_after"] = {"load_average": os.getloadavg()}
        if not arguments.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(render_table(figures))
    write_json(json_path, figures, meta)
    print(f"\nresults: {json_path} ({meta['duration_s']} s)")
    if any(figure.error for figure in figures):
        return 1
    if arguments.strict and any(figure.met is False for figure in figures):
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
