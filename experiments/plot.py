"""``adaptbed plot``: adaptation curves as figures, in the style of the MAML paper's Figure 5.

Three figures, the first two drawn from the JSON that ``adaptbed evaluate`` writes
(``RUN_DIR/eval/<split>.json``; ``--split test-best`` for the best checkpoint's):

* :func:`evaluation_figure`: every agent of one evaluation; adaptation curves (``kind ==
  "curve"``) as lines with 95% CI bands, flat references (``"flat"``: the oracle) as dashed
  horizontal lines, single budgets (``"point"``: PPO from scratch) as markers with error bars;
* :func:`overlay_figure`: the MAML curves of several runs (e.g. seeds or configs) together,
  evaluated on the same tasks (refused otherwise);
* :func:`training_figure` (``--training``): meta-training curves from the runs'
  ``progress.csv``, the mean return before and after adaptation per meta-iteration.

Usage::

    adaptbed plot runs/nav-s0 runs/nav-s1 runs/nav-lr05 --split test --out nav.png
    adaptbed plot --training runs/hcv-s0 runs/hcv-s1 --smooth 10 --out hcv-training.png

Figures are built on :class:`matplotlib.figure.Figure` directly (no pyplot, no GUI backend) and
written atomically.
"""

from __future__ import annotations

import io
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from matplotlib.figure import Figure

from experiments.cliutil import Parser
from experiments.rundir import (RunDirError, adaptation_columns, atomic_write_bytes,
                                read_progress)

LABELS = {"maml": "MAML", "pretrained": "pretrained", "random": "random init",
          "oracle": "oracle", "stand_still": "stand still"}
COLORS = {"maml": "tab:blue", "pretrained": "tab:orange", "random": "tab:red",
          "oracle": "black", "ppo": "tab:green", "ppo_x10": "tab:olive", "ppo_x100": "tab:cyan",
          "stand_still": "tab:gray"}


def agent_label(name: str, result: Mapping[str, Any]) -> str:
    """The legend entry of an agent, e.g. ``"PPO from scratch (600 env steps)"``."""
    if name.startswith("ppo"):
        steps = result.get("env_steps")
        return f"PPO from scratch ({steps:,} env steps)" if steps else "PPO from scratch"
    return LABELS.get(name, name)


def _draw_agent(ax: Any, name: str, result: Mapping[str, Any], color: str | None, label: str,
                offset: float = 0.0) -> None:
    """One agent on ``ax``, according to its ``kind`` (``offset`` shifts point markers
    sideways so that several budgets at the same step stay readable)."""
    kind = result.get("kind", "curve")
    mean, ci = result["mean"], result["ci95"]
    if kind == "flat":
        ax.axhline(mean[0], color=color, linestyle="--", linewidth=1.2, label=label)
        ax.axhspan(mean[0] - ci[0], mean[0] + ci[0], color=color or "gray", alpha=0.08)
    elif kind == "point":
        ax.errorbar([x + offset for x in result["steps"]], mean, yerr=ci, fmt="D", color=color, capsize=4,
                    markersize=6, label=label)
    else:
        xs = result["steps"]
        low = [m - c for m, c in zip(mean, ci)]
        high = [m + c for m, c in zip(mean, ci)]
        (line,) = ax.plot(xs, mean, marker="o", color=color, label=label)
        ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)


def _style_axes(ax: Any, steps: Sequence[int], title: str) -> None:
    ax.set_xticks(list(steps))
    ax.set_xlabel("number of gradient steps")
    ax.set_ylabel("average return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")


def _title(doc: Mapping[str, Any]) -> str:
    """``Family: split split (n tasks)``, and the checkpoint where it is not the latest."""
    family = doc.get("family", "")
    title = f"{family}: {doc['split']} split ({len(doc['tasks'])} tasks)".strip(": ")
    checkpoint = doc.get("checkpoint", "latest")
    return title if checkpoint == "latest" else f"{title}, checkpoint {checkpoint}"


def evaluation_figure(doc: Mapping[str, Any]) -> Figure:
    """Every agent of one evaluation document (the schema of ``adaptbed evaluate``).

    Args:
        doc: ``{"split", "tasks", "agents": {name: {"steps", "mean", "ci95", "kind", ...}}}``.
    """
    fig = Figure(figsize=(6.4, 4.6), layout="constrained")
    ax = fig.add_subplot()
    steps = doc["agents"]["maml"]["steps"]
    points = [n for n, r in doc["agents"].items() if r.get("kind") == "point"]
    for name, result in doc["agents"].items():
        offset = 0.06 * (points.index(name) + 1) if name in points else 0.0
        _draw_agent(ax, name, result, COLORS.get(name), agent_label(name, result), offset)
    _style_axes(ax, steps, _title(doc))
    return fig


def overlay_figure(docs: Sequence[tuple[str, Mapping[str, Any]]]) -> Figure:
    """The MAML curves of several evaluations, one line (with CI band) per ``(label, doc)``."""
    fig = Figure(figsize=(6.4, 4.6), layout="constrained")
    ax = fig.add_subplot()
    steps: list[int] = []
    for label, doc in docs:
        result = doc["agents"]["maml"]
        steps = sorted(set(steps) | set(result["steps"]))
        _draw_agent(ax, "maml", result, None, label)
    first = docs[0][1]
    _style_axes(ax, steps, f"MAML, {_title(first)}")
    return fig


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` values (fewer at the start), skipping NaN (an
    iteration whose sampling failed logs NaN returns); NaN where a window holds none."""
    out = []
    for i in range(len(values)):
        chunk = [v for v in values[max(0, i - window + 1): i + 1] if not math.isnan(v)]
        out.append(sum(chunk) / len(chunk) if chunk else math.nan)
    return out


def training_figure(runs: Sequence[tuple[str, Mapping[str, Sequence[float]]]],
                    smooth: int = 1) -> Figure:
    """Meta-training curves: per run, the mean return after adaptation (solid) and before it
    (dashed) against the meta-iteration, each a trailing mean over ``smooth`` iterations."""
    fig = Figure(figsize=(6.4, 4.6), layout="constrained")
    ax = fig.add_subplot()
    for label, progress in runs:
        before, after = adaptation_columns(progress)
        x = progress["iteration"]
        adapted = after != before
        (line,) = ax.plot(x, moving_average(progress[after], smooth),
                          label=f"{label}: {'after adaptation' if adapted else 'no adaptation'}")
        if adapted:
            ax.plot(x, moving_average(progress[before], smooth), linestyle="--",
                    color=line.get_color(), label=f"{label}: before adaptation")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("average return" + (f" (mean of {smooth} iterations)" if smooth > 1 else ""))
    ax.set_title("meta-training, sampled train tasks")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    return fig


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG data."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def save_png(fig: Figure, path: Path) -> None:
    """Write ``fig`` to ``path`` as a PNG, atomically."""
    atomic_write_bytes(path, png_bytes(fig))


# --- command line ------------------------------------------------------------------------------
def read_evaluation(run_dir: Path, split: str) -> dict:
    """``RUN_DIR/eval/<split>.json``.

    Raises:
        RunDirError: missing (naming the command that writes it) or unreadable.
    """
    path = run_dir / "eval" / f"{split}.json"
    if not path.exists():
        named = re.fullmatch(r"(.+)-(best|iteration-\d+)", split)  # another checkpoint's stem
        how = (f"--split {named[1]} --checkpoint {named[2]}" if named else f"--split {split}")
        raise RunDirError(f"{path} does not exist; write it with `adaptbed evaluate {run_dir} "
                          f"{how}`")
    try:
        doc = json.loads(path.read_text())
        doc["agents"]["maml"]["mean"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RunDirError(f"{path} is not an evaluation written by `adaptbed evaluate` "
                          f"({type(err).__name__})") from None
    return doc


def run_labels(run_dirs: Sequence[Path]) -> list[str]:
    """Each run's directory name, or its path as given where two names collide."""
    names = [d.resolve().name for d in run_dirs]
    return [n if names.count(n) == 1 else str(d) for n, d in zip(names, run_dirs)]


def parser() -> Parser:
    p = Parser(
        prog="adaptbed plot",
        description="Overlay the MAML adaptation curves of several runs, read from their "
                    "eval/<split>.json (written by `adaptbed evaluate`).")
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    p.add_argument("--split", default="test", help="which evaluation to plot (default test)")
    p.add_argument("--training", action="store_true",
                   help="plot the meta-training curves of progress.csv instead")
    p.add_argument("--smooth", type=int, default=1, metavar="N",
                   help="--training: trailing mean over N iterations (default 1: none)")
    p.add_argument("--out", type=Path,
                   help="output PNG (default compare-<split>.png, or training.png)")
    return p


def _figure(args: Any) -> tuple[Figure, Path]:
    labels = run_labels(args.run_dirs)
    if args.smooth != 1 and not args.training:
        raise RunDirError("--smooth applies to --training curves only")
    if args.training:
        if args.smooth < 1:
            raise RunDirError(f"--smooth must be at least 1, got {args.smooth}")
        runs = [read_progress(d) for d in args.run_dirs]
        return training_figure(list(zip(labels, runs)), args.smooth), Path("training.png")
    docs = [read_evaluation(d, args.split) for d in args.run_dirs]
    families = {doc.get("family") for doc in docs}
    if len(families) > 1:
        raise RunDirError(f"the runs are of different task families ({', '.join(sorted(map(str, families)))}); "
                          "overlay runs of one family")
    if any(doc["tasks"] != docs[0]["tasks"] for doc in docs):
        raise RunDirError(f"the runs' eval/{args.split}.json were evaluated on different tasks "
                          "(another split file or --max-tasks); evaluate them on the same ones")
    return overlay_figure(list(zip(labels, docs))), Path(f"compare-{args.split}.png")


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    out = args.out
    try:
        if out is not None and out.suffix.lower() != ".png":
            raise RunDirError(f"--out must name a .png file, got {out}")
        figure, default_out = _figure(args)
        out = out or default_out
        save_png(figure, out)
    except OSError as err:
        print(f"adaptbed plot: error: cannot write {out}: {err.strerror}", file=sys.stderr)
        return 2
    except RunDirError as err:
        print(f"adaptbed plot: error: {err}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
