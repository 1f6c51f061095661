"""``adaptbed summary``: what a training run did, from its ``progress.csv`` and ``timing.csv``.

Usage::

    adaptbed summary RUN_DIR [--last N] [--json]

It reports the iterations done, the returns before and after adaptation averaged over the last
``N`` iterations (default 10; single iterations are noisy) and at the best iteration, the env
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


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.nan


def summarize_run(progress: dict[str, list[float]], timing: dict[str, list[float]] | None,
                  last: int) -> dict[str, Any]:
    """The summary of one run's logs (see the module docstring); pure."""
    before, after = adaptation_columns(progress)
    n = len(progress["iteration"])
    tail = slice(max(0, n - last), n)
    finite = [i for i in range(n) if math.isfinite(progress[after][i])]
    best = max(finite, key=lambda i: progress[after][i]) if finite else n - 1
    out: dict[str, Any] = {
        "iterations": n,
        "last_iteration": int(progress["iteration"][-1]),
        "window": f"iterations {int(progress['iteration'][tail][0])}-{int(progress['iteration'][-1])}",
        "return_before_adaptation": _mean(progress[before][tail]),
        "return_after_adaptation": _mean(progress[after][tail]),
        "best_iteration": int(progress["iteration"][best]),
        "best_return_after_adaptation": progress[after][best],
        "env_steps": int(progress["env_steps_total"][-1]) if "env_steps_total" in progress else None,
        "accepted_steps": int(sum(v for v in progress.get("accepted", []) if math.isfinite(v))),
        "faulted_steps": int(progress["rejected_steps"][-1]) if "rejected_steps" in progress else 0,
    }
    if timing:
        seconds = sum(v for v in timing["seconds_iteration"] if math.isfinite(v))
        out["seconds"] = seconds
        out["seconds_per_iteration"] = {
            "sampling": _mean(timing["seconds_sampling"]),
            "adaptation": _mean(timing["seconds_adapting"]),
            "outer_update": _mean(timing["seconds_updating"]),
            "total": _mean(timing["seconds_iteration"]),
        }
        out["sampling_env_steps_per_second"] = _mean(timing["env_steps_per_second"])
        if out["env_steps"] is not None and seconds > 0:
            out["env_steps_per_second"] = out["env_steps"] / seconds
        if "rss_mb" in timing:
            out["peak_rss_mb"] = max(v for v in timing["rss_mb"] if math.isfinite(v))
    return out


def render(run_dir: Path, s: dict[str, Any]) -> str:
    lines = [f"{run_dir}: {s['iterations']} iterations (last {s['last_iteration']})",
             f"  return before adaptation   {s['return_before_adaptation']:10.1f}   "
             f"(mean of {s['window']})",
             f"  return after adaptation    {s['return_after_adaptation']:10.1f}",
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
        if "env_steps_per_second" in s:
            lines.append(f"  env steps/s                {s['env_steps_per_second']:,.0f} overall, "
                         f"{s['sampling_env_steps_per_second']:,.0f} while sampling")
        if "peak_rss_mb" in s:
            lines.append(f"  peak resident memory       {s['peak_rss_mb']:,.0f} MB")
    return "\n".join(lines)


def parser() -> Parser:
    p = Parser(prog=PROG, description=__doc__.split("\n\n")[0].strip("`").replace("``", "`"),
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--last", type=int, default=10, metavar="N",
                   help="average the returns over the last N iterations (default 10)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.last < 1:
        return fail(PROG, f"--last must be at least 1, got {args.last}")
    try:
        progress = read_progress(args.run_dir)
        timing_path = args.run_dir / "timing.csv"
        timing = read_csv_columns(timing_path) if timing_path.exists() else None
        summary = summarize_run(progress, timing, args.last)
        config = args.run_dir / "config.json"
        if config.exists():
            doc = read_json(config)
            summary["preset"] = doc.get("config", {}).get("preset")
            summary["git_commit"] = doc.get("environment", {}).get("git_commit")
    except RunDirError as err:
        return fail(PROG, str(err))
    print(json.dumps(summary) if args.json else render(args.run_dir, summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
