"""Run the benchmarks, print a table and write data/08_reporting/benchmarks.{json,md}.

    python -m benchmarks.run                    # everything (what `make bench` runs)
    python -m benchmarks.run --quick            # smoke mode: tiny inputs, one run each (figures not meaningful)
    python -m benchmarks.run --only decode,train

Areas: decode, data_prep, train, generate, evaluate, kedro.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/run.py`: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import PROJECT_ROOT, Context, prepare_process  # noqa: E402
from benchmarks.timing import environment, load_average  # noqa: E402

AREAS = {
    "decode": "benchmarks.decode",
    "data_prep": "benchmarks.data_prep",
    "train": "benchmarks.train",
    "generate": "benchmarks.generate",
    "evaluate": "benchmarks.evaluate",
    "kedro": "benchmarks.kedro_overhead",
}
ALIASES = {"data": "data_prep", "prep": "data_prep", "training": "train", "generation": "generate",
           "kedro_overhead": "kedro", "decoding": "decode",
           "evaluation": "evaluate", "inworld": "evaluate"}
DEFAULT_OUTPUT = PROJECT_ROOT / "data" / "08_reporting"


def parse_areas(only: str | None) -> list[str]:
    if not only:
        return list(AREAS)
    areas = []
    for name in only.split(","):
        name = ALIASES.get(name.strip(), name.strip())
        if name not in AREAS:
            raise SystemExit(f"unknown area {name!r}; choose from {', '.join(AREAS)}")
        if name not in areas:
            areas.append(name)
    return areas


def _quiet_libraries() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("machining_t2v", "accelerate", "diffusers", "transformers", "kedro", "mlflow", "peft"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    try:
        import diffusers
        import transformers

        diffusers.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


def run_benchmarks(areas: list[str], *, quick: bool, output_dir: Path, work_dir: Path | None = None,
                   repeats: int | None = None, threads: int | None = None, log=print) -> dict[str, Any]:
    """Run ``areas`` and write benchmarks.json / benchmarks.md into ``output_dir``; returns the report."""
    prepare_process()
    if threads:
        import torch

        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # for the `kedro run` subprocesses
    _quiet_libraries()
    started = time.perf_counter()
    own_work_dir = work_dir is None
    work_dir = Path(tempfile.mkdtemp(prefix="machining_t2v_bench_")) if own_work_dir else Path(work_dir)
    ctx = Context(quick=quick, repeats=repeats or (1 if quick else 5), slow_repeats=repeats or (1 if quick else 3),
                  warmup=0 if quick else 1, work_dir=work_dir, log=log,
                  min_repeats=1 if quick else min(3, repeats or 3))
    report: dict[str, Any] = {
        "meta": {
            "mode": "quick" if quick else "full",
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "repeats": {"fast_benchmarks": ctx.repeats, "slow_benchmarks": ctx.slow_repeats, "warmup": ctx.warmup,
                        "min_repeats_under_time_budget": ctx.min_repeats},
            "statistic": "median of the timed runs (warm-up runs excluded); comparisons are ratios of figures "
                         "measured in the same run, alternatives interleaved round-robin",
            "environment": environment(),
        },
        "areas": {},
    }
    try:
        for area in areas:
            log(f"[{area}] running ({report['meta']['mode']} mode)")
            area_start = time.perf_counter()
            load_before = load_average()
            try:
                result = importlib.import_module(AREAS[area]).run(ctx)
            except Exception as error:  # report the failure, keep the other areas
                result = {"title": area, "error": f"{type(error).__name__}: {error}",
                          "traceback": traceback.format_exc(), "rows": [], "targets": [], "findings": []}
                log(f"[{area}] FAILED: {type(error).__name__}: {error}")
            result["seconds"] = round(time.perf_counter() - area_start, 2)
            result["load_average_before"] = load_before
            result["load_average_after"] = load_average()
            result["metrics"] = {r["key"]: r["value"] for r in result.get("rows", [])}
            report["areas"][area] = result
            log(f"[{area}] done in {result['seconds']:.1f} s")
    finally:
        if own_work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)
    report["meta"]["duration_s"] = round(time.perf_counter() - started, 2)
    report["meta"]["load_average_at_end"] = load_average()
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "benchmarks.json").write_text(json.dumps(report, indent=1, default=_json_default) + "\n")
    (output_dir / "benchmarks.md").write_text(to_markdown(report))
    return report


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    return str(value)


# --------------------------------------------------------------------------- formatting


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        magnitude = abs(value)
        if magnitude >= 1000:
            return f"{value:,.0f}"
        if magnitude >= 100:
            return f"{value:.0f}"
        if magnitude >= 10:
            return f"{value:.1f}"
        if magnitude >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return str(value)


def _runs(entry: dict[str, Any]) -> str:
    return "" if entry.get("runs") is None else str(entry["runs"])


def _met(entry: dict[str, Any]) -> str:
    return {True: "met", False: "MISSED", None: "n/a"}[entry["met"]]


def table_lines(report: dict[str, Any]) -> list[str]:
    """The plain-text table printed at the end of a run."""
    lines = []
    rows = [(area, r["name"], _fmt(r["value"]), r["unit"], _runs(r))
            for area, result in report["areas"].items() for r in result.get("rows", [])]
    header = ("area", "benchmark", "value", "unit", "runs")
    widths = [max(len(str(x[i])) for x in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i != 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines.append(fmt.format(*header))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(fmt.format(*r) for r in rows)
    targets = [t for result in report["areas"].values() for t in result.get("targets", [])]
    if targets:
        lines.append("")
        lines.append("targets:")
        for t in targets:
            lines.append(f"  [{_met(t)}] {t['name']}: {_fmt(t['value'])} (target {t['op']} {t['threshold']})")
    errors = [(area, r["error"]) for area, r in report["areas"].items() if r.get("error")]
    for area, error in errors:
        lines.append(f"ERROR in {area}: {error}")
    return lines


def to_markdown(report: dict[str, Any]) -> str:
    meta, env = report["meta"], report["meta"]["environment"]
    repeats = meta["repeats"]
    out = [
        "# Benchmarks",
        "",
        f"Measured {meta['started']} in {meta['mode']} mode in {meta['duration_s']:.0f} s on "
        f"{env.get('cpu')} ({env.get('cpu_count')} cores, torch {env.get('torch')} with "
        f"{env.get('torch_threads')} threads, GPU: {env.get('cuda') or 'none'}).",
        f"Each figure is the median of up to {repeats['fast_benchmarks']} timed runs "
        f"({repeats['slow_benchmarks']} for generation and `kedro run`) after "
        f"{repeats['warmup']} warm-up run(s); the `runs` column gives the count actually made (a time budget per "
        f"benchmark stops adding runs on a loaded machine, after at least {repeats['min_repeats_under_time_budget']})."
        " Each comparison is a ratio of figures measured in the same run, the alternatives interleaved. "
        "Load average (1, 5, 15 min) at start / end: "
        f"{env.get('load_average_at_start')} / {meta.get('load_average_at_end')} (other processes inflate timings).",
        "",
    ]
    if meta["mode"] == "quick":
        out += ["**Quick (smoke) mode: tiny inputs and single runs; these figures are not meaningful.**", ""]
    targets = [t for result in report["areas"].values() for t in result.get("targets", [])]
    if targets:
        out += ["## Targets", "", "| target | measured | threshold | status |", "|---|---:|---:|---|"]
        out += [f"| {t['name']} | {_fmt(t['value'])} | {t['op']} {t['threshold']} | {_met(t)} |" for t in targets]
        out.append("")
    for area, result in report["areas"].items():
        out += [f"## {result.get('title', area)}", ""]
        if result.get("error"):
            out += [f"**Failed:** `{result['error']}`", ""]
        if result.get("rows"):
            out += ["| benchmark | value | unit | runs | note |", "|---|---:|---|---:|---|"]
            out += [f"| {r['name']} | {_fmt(r['value'])} | {r['unit']} | {_runs(r)} | {r.get('note', '')} |"
                    for r in result["rows"]]
            out.append("")
        for finding in result.get("findings", []):
            out.append(f"- {finding}")
        if result.get("findings"):
            out.append("")
        out += [f"_{result.get('seconds', 0):.0f} s; load average before / after: "
                f"{result.get('load_average_before')} / {result.get('load_average_after')}_", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke mode: tiny inputs, one run per figure")
    parser.add_argument("--only", help=f"comma-separated areas ({', '.join(AREAS)})")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT,
                        help="where benchmarks.json and benchmarks.md go (default: data/08_reporting)")
    parser.add_argument("--repeats", type=int, help="timed runs per figure (default 5, 3 for slow ones; 1 quick)")
    parser.add_argument("--work-dir", type=Path, help="scratch folder to use and keep (default: a temp folder)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice, one per core)")
    args = parser.parse_args(argv)
    areas = parse_areas(args.only)
    report = run_benchmarks(areas, quick=args.quick, output_dir=args.output_dir, work_dir=args.work_dir,
                            repeats=args.repeats, threads=args.threads)
    print()
    print("\n".join(table_lines(report)))
    print(f"\nwrote {args.output_dir / 'benchmarks.json'} and {args.output_dir / 'benchmarks.md'} "
          f"({report['meta']['duration_s']:.0f} s)")
    return 1 if any(r.get("error") for r in report["areas"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
