"""Plot pass@k / maj@k / bon@k against k for several runs side by side (one panel per estimate), and print a table.

    python bench/compare_runs.py LABEL=PATH [LABEL=PATH ...] --png docs/compare.png [--step last|first|N]
        [--title T] [--colors C0 C0 C1 C1] [--linestyles dashed solid]

PATH is a report folder of callbacks.EvalReport (its metrics.json) or a TensorBoard run folder (runs/NAME/version_N:
the val/pass@{k}, val/maj@{k}, val/bon@{k} scalars, or test/..., at --step: the last logged step by default,
"first" for the step-0 validation before RL). LABEL= is optional (the folder name otherwise).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

from callbacks.eval_report import FAMILIES, curves, plot_curves

Series = dict[str, dict[int, float]]


def read_report(path: str) -> tuple[Series, str]:
    with open(os.path.join(path, "metrics.json"), encoding="utf-8") as f:
        report = json.load(f)
    series = {family: {int(k): v for k, v in points.items()} for family, points in report["curves"].items()}
    return series, f"{report['stage']}, n = {report['n']}, step {report['step']}"


def read_tensorboard(path: str, step: str) -> tuple[Series, str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(glob.glob(os.path.join(path, "**", "events.out.tfevents*"), recursive=True))
    if not files:
        raise SystemExit(f"{path}: neither a report folder (metrics.json) nor a TensorBoard run (events.out.tfevents*)")
    points: dict[str, dict[int, float]] = {}  # tag -> {step: value}
    for file in files:
        events = EventAccumulator(file, size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            if re.fullmatch(r"(val|test)/(pass|maj|bon)@\d+", tag):
                points.setdefault(tag, {}).update({e.step: e.value for e in events.Scalars(tag)})
    if not points:
        raise SystemExit(f"{path}: no val/pass@<k> scalars (runs logged before eval_ks existed have only "
                         "pass@1 / pass@k)")
    steps = sorted({s for by_step in points.values() for s in by_step})
    chosen = steps[-1] if step == "last" else steps[0] if step == "first" else int(step)
    if chosen not in steps:
        raise SystemExit(f"{path}: no estimates at step {chosen}; logged steps: {steps}")
    series = curves({tag: by_step[chosen] for tag, by_step in points.items() if chosen in by_step})
    if len(series.get("pass", {})) < 2:
        print(f"{path}: only pass@1 at step {chosen} (a run logged before eval_ks existed?): one point",
              file=sys.stderr)
    return series, f"TensorBoard, step {chosen}"


def read_run(path: str, step: str) -> tuple[Series, str]:
    if os.path.isfile(os.path.join(path, "metrics.json")):
        return read_report(path)
    return read_tensorboard(path, step)


def plot(runs: dict[str, Series], png: str, title: str | None, colors: list[str] | None = None,
         linestyles: list[str] | None = None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = [f for f in FAMILIES if any(f in series for series in runs.values())]
    figure, axes = plt.subplots(1, len(families), figsize=(4.2 * len(families), 3.8), squeeze=False, sharey=True)
    colors = colors or plt.rcParams["axes.prop_cycle"].by_key()["color"]
    linestyles = linestyles or ["-"]
    for ax, family in zip(axes[0], families):
        for i, (label, series) in enumerate(runs.items()):
            if family in series:
                plot_curves(ax, {family: series[family]}, color=colors[i % len(colors)],
                            linestyle=linestyles[i % len(linestyles)])
                ax.lines[-1].set_label(label)
        ax.set_title(f"{family}@k")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("unbiased estimate")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(png)), exist_ok=True)
    figure.savefig(png, dpi=120)
    plt.close(figure)


def print_table(runs: dict[str, Series], sources: dict[str, str]) -> None:
    ks = sorted({k for series in runs.values() for points in series.values() for k in points})
    for family in FAMILIES:
        if not any(family in series for series in runs.values()):
            continue
        print(f"\n| {family}@k | " + " | ".join(f"k={k}" for k in ks) + " |")
        print("|---|" + "---:|" * len(ks))
        for label, series in runs.items():
            points = series.get(family, {})
            print(f"| {label} | " + " | ".join(f"{points[k]:.3f}" if k in points else "" for k in ks) + " |")
    print("\n" + "; ".join(f"{label}: {source}" for label, source in sources.items()))


def default_label(path: str) -> str:
    """The folder's name; for a TensorBoard runs/NAME/version_N folder, NAME/version_N."""
    parts = os.path.normpath(path).split(os.sep)
    return "/".join(parts[-2:]) if re.fullmatch(r"version_\d+", parts[-1]) and len(parts) > 1 else parts[-1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="LABEL=PATH or PATH (a report folder or a TensorBoard run folder)")
    parser.add_argument("--png", required=True, help="where to write the plot")
    parser.add_argument("--step", default="last", help="TensorBoard runs: 'last' (default), 'first' or a step number")
    parser.add_argument("--title", help="a title over the panels")
    parser.add_argument("--colors", nargs="+", help="matplotlib colors, one per run (cycled), e.g. C0 C0 C1 C1")
    parser.add_argument("--linestyles", nargs="+", help="line styles, one per run (cycled), e.g. dashed solid")
    args = parser.parse_args(argv)
    runs: dict[str, Series] = {}
    sources: dict[str, str] = {}
    for spec in args.runs:
        label, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        label = label or default_label(path)
        runs[label], sources[label] = read_run(path, args.step)
    plot(runs, args.png, args.title, args.colors, args.linestyles)
    print_table(runs, sources)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
