"""``adaptbed summary``: what a training run did, from its ``progress.csv`` and ``timing.csv``.

Usage::

    adaptbed summary RUN_DIR [--last N | --iterations A:B] [--json]

It reports the iterations done, the returns before and after adaptation averaged over a window
(the last ``N`` iterations, default 10, or iterations ``A`` to ``B - 1``; single iterations are
noisy) with the window's mean line-search trials per outer step tried and its median
iteration seconds split by phase, the returns at the best iteration, the env
steps, the time spent (the sum of the per-iteration wall-clock times, so process start-up and
checkpoint writing are not counted) split into sampling / adaptation / outer update, the
throughput, the peak resident memory, and how many outer steps were taken (a line search that
finds no acceptable step takes none) and how many were undone for non-finite values.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any, Sequence

from experiments.cliutil import Parser, fail
from experiments.rundir import (RunDirError, adaptation_columns, read_csv_columns,
                                read_json, read_progress)

PROG = "adaptbed summary"


_PHASES = (("sampling", "seconds_sampling"), ("adaptation", "seconds_adapting"),
           ("outer_update", "seconds_updating"), ("total", "seconds_iteration"))


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.nan


def _median(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def window_rows(iterations: Sequence[float], last: int,
                span: tuple[int, int] | None = None) -> list[int]:
    """Row indices of the window: the iterations ``span[0] <= i < span[1]``, else the last
    ``last`` rows.

    Raises:
        RunDirError: no logged iteration lies in ``span``.
    """
    if span is None:
        return list(range(max(0, len(iterations) - last), len(iterations)))
    rows = [r for r, i in enumerate(iterations) if span[0] <= i < span[1]]
    if not rows:
        raise RunDirError(f"no iteration in {span[0]}:{span[1]}; the log holds iterations "
                          f"{int(iterations[0])}-{int(iterations[-1])}")
    return rows


def summarize_run(progress: dict[str, list[float]], timing: dict[str, list[float]] | None,
                  last: int, span: tuple[int, int] | None = None) -> dict[str, Any]:
    """The summary of one run's logs (see the module docstring); pure.

    Raises:
        RunDirError: ``span`` holds no logged iteration.
    """
    before, after = adaptation_columns(progress)
    n = len(progress["iteration"])
    rows = window_rows(progress["iteration"], last, span)
    pick = lambda column: [column[r] for r in rows]  # noqa: E731
    finite = [i for i in range(n) if math.isfinite(progress[after][i])]
    best = max(finite, key=lambda i: progress[after][i]) if finite else n - 1
    out: dict[str, Any] = {
        "iterations": n,
        "last_iteration": int(progress["iteration"][-1]),
        "window": f"iterations {int(progress['iteration'][rows[0]])}-"
                  f"{int(progress['iteration'][rows[-1]])}",
        "return_before_adaptation": _mean(pick(progress[before])),
        "return_after_adaptation": _mean(pick(progress[after])),
        "best_iteration": int(progress["iteration"][best]),
        "best_return_after_adaptation": progress[after][best],
        "env_steps": int(progress["env_steps_total"][-1]) if "env_steps_total" in progress else None,
        "accepted_steps": int(sum(v for v in progress.get("accepted", []) if math.isfinite(v))),
        "faulted_steps": int(progress["rejected_steps"][-1]) if "rejected_steps" in progress else 0,
    }
    if "ls_steps" in progress:  # per outer step tried (0: none was, e.g. a zero gradient)
        out["window_line_search_trials"] = _mean([v for v in pick(progress["ls_steps"]) if v > 0])
    if timing:
        missing = [c for c in ("iteration", *dict(_PHASES).values(), "env_steps_per_second")
                   if c not in timing]
        if missing:
            raise RunDirError(f"timing.csv lacks the column(s) {', '.join(missing)}")
        in_window = set(pick(progress["iteration"]))
        timed = [r for r, i in enumerate(timing["iteration"]) if i in in_window]
        out["window_median_seconds_per_iteration"] = {
            name: _median([timing[column][r] for r in timed]) for name, column in _PHASES}
        seconds = sum(v for v in timing["seconds_iteration"] if math.isfinite(v))
        out["seconds"] = seconds
        out["seconds_per_iteration"] = {name: _mean(timing[column]) for name, column in _PHASES}
        out["sampling_env_steps_per_second"] = _mean(timing["env_steps_per_second"])
        if out["env_steps"] is not None and seconds > 0:
            out["env_steps_per_second"] = out["env_steps"] / seconds
        if "rss_mb" in timing:
            out["peak_rss_mb"] = max((v for v in timing["rss_mb"] if math.isfinite(v)),
                                     default=math.nan)
    return out


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float (no data) turned into None, for strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    return value


def render(run_dir: Path, s: dict[str, Any]) -> str:
    lines = [f"{run_dir}: {s['iterations']} iterations (last {s['last_iteration']})",
             f"  return before adaptation   {s['return_before_adaptation']:10.1f}   "
             f"(mean of {s['window']})",
             f"  return after adaptation    {s['return_after_adaptation']:10.1f}",
             *([f"  line-search trials         {s['window_line_search_trials']:10.1f}   "
                f"(per outer step tried, same window)"] if "window_line_search_trials" in s else []),
             f"  best after adaptation      {s['best_return_after_adaptation']:10.1f}   "
             f"(iteration {s['best_iteration']})",
             f"  outer steps                {s['accepted_steps']} of {s['iterations']} taken; "
             f"{s['faulted_steps']} undone for non-finite values"]
    if s.get("env_steps") is not None:
        lines.append(f"  env steps                  {s['env_steps']:,}")
    if "seconds" in s:
        split = ", ".join(f"{k} {v:.2f}" for k, v in s["seconds_per_iteration"].items())
        lines.append(f"  time                       {s['seconds'] / 60:.1f} min "
                     f"(sum of iterations); per iteration: {split} s")
        window = ", ".join(f"{k} {v:.2f}" for k, v in
                           s["window_median_seconds_per_iteration"].items())
        lines.append(f"  median iteration, window   {window} s")
        if "env_steps_per_second" in s:
            lines.append(f"  env steps/s                {s['env_steps_per_second']:,.0f} overall, "
                         f"{s['sampling_env_steps_per_second']:,.0f} while sampling")
        if "peak_rss_mb" in s:
            lines.append(f"  peak resident memory       {s['peak_rss_mb']:,.0f} MB")
    return "\n".join(lines)


def parser() -> Parser:
    intro, _, detail = __doc__.partition("Usage::")
    description = (intro.strip() + "\n\n" + detail.split("\n\n", 2)[2].strip()).replace("``", "")
    p = Parser(prog=PROG, description=description,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    window = p.add_mutually_exclusive_group()
    window.add_argument("--last", type=int, metavar="N",
                        help="the window for the returns, line-search trials and median "
                             "times: the last N iterations (default 10)")
    window.add_argument("--iterations", metavar="A:B",
                        help="the window: iterations A to B-1 instead, e.g. 490:500")
    p.add_argument("--json", action="store_true", help="one JSON object")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.last = 10 if args.last is None else args.last
    if args.last < 1:
        return fail(PROG, f"--last must be at least 1, got {args.last}")
    span = None
    if args.iterations is not None:
        try:
            span = tuple(int(v) for v in args.iterations.split(":"))
        except ValueError:
            span = ()
        if len(span) != 2 or not 0 <= span[0] < span[1]:
            return fail(PROG, f"--iterations must be A:B with 0 <= A < B, got {args.iterations!r}")
    try:
        progress = read_progress(args.run_dir)
        timing_path = args.run_dir / "timing.csv"
        timing = read_csv_columns(timing_path) if timing_path.exists() else None
        summary = summarize_run(progress, timing, args.last, span)
        config = args.run_dir / "config.json"
        if config.exists():
            doc = read_json(config)
            summary["preset"] = doc.get("config", {}).get("preset")
            summary["git_commit"] = doc.get("environment", {}).get("git_commit")
    except RunDirError as err:
        return fail(PROG, str(err))
    print(json.dumps(finite_or_none(summary), allow_nan=False) if args.json
          else render(args.run_dir, summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
