"""Print a run's validation curve from its TensorBoard event file as a markdown table, and plot it.

    python bench/learning_curve.py runs/demo/version_0 [--tags val/pass@1 val/pass@k] [--png docs/demo_curve.png]
"""

from __future__ import annotations

import argparse
import glob
import os

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def read_scalars(run_dir: str, tags: list[str]) -> dict[str, list[tuple[int, float]]]:
    files = sorted(glob.glob(os.path.join(run_dir, "**", "events.out.tfevents*"), recursive=True))
    if not files:
        raise SystemExit(f"{run_dir}: no TensorBoard event file found (is it a run's version_N folder?)")
    curves: dict[str, list[tuple[int, float]]] = {tag: [] for tag in tags}
    for path in files:
        events = EventAccumulator(path, size_guidance={"scalars": 0})
        events.Reload()
        for tag in tags:
            if tag in events.Tags()["scalars"]:
                curves[tag] += [(e.step, e.value) for e in events.Scalars(tag)]
    return {tag: sorted(dict(points).items()) for tag, points in curves.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--tags", nargs="+", default=["val/pass@1", "val/pass@k", "val/maj@k"])
    parser.add_argument("--png", help="also write a plot here")
    args = parser.parse_args()
    curves = read_scalars(args.run_dir, args.tags)
    steps = sorted({step for points in curves.values() for step, _ in points})
    print("| step | " + " | ".join(args.tags) + " |")
    print("|---:|" + "---:|" * len(args.tags))
    for step in steps:
        row = [dict(curves[tag]).get(step) for tag in args.tags]
        print(f"| {step} | " + " | ".join("" if v is None else f"{v:.3f}" for v in row) + " |")
    if args.png:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        figure, axes = plt.subplots(figsize=(6, 3.5))
        for tag, points in curves.items():
            if points:
                axes.plot(*zip(*points), marker="o", label=tag)
        axes.set_xlabel("training step")
        axes.set_ylabel("validation estimate")
        axes.set_ylim(0, 1)
        axes.grid(alpha=0.3)
        axes.legend()
        axes.set_title(os.path.normpath(args.run_dir))
        figure.tight_layout()
        figure.savefig(args.png, dpi=120)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
