"""Tables and figures of docs/results.md from the runs of configs/smollm2/ (TensorBoard event files).

    python bench/smollm2_results.py --runs /work/exp/runs --base base_validate \
        --compare mr_s0 mr_s1 pk_s0 pk_s1 --budget budget_s0 penalty_s0 --out docs

Reads, per run, the held-out validation curves logged at the end of training (val/pass@k, val/maj@k, val/bon@k
for k = 1..16) and the training scalars (train/response_len, train/reward_mean, objective/lambda), and writes
docs/smollm2_passk.png (pass@k against k before and after each objective, mean over seeds with each seed as a thin
line), docs/smollm2_budget.png (mean length, lambda and reward per step) and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

CURVE = re.compile(r"^(?:val|test)/(pass|maj|bon)@(\d+)$")


def scalars(run_dir: str) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of every event file under `run_dir` (later files extend earlier ones)."""
    out: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for path in sorted(glob.glob(os.path.join(run_dir, "**", "events.out.*"), recursive=True)):
        events = EventAccumulator(path, size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            out[tag].extend((e.step, e.value) for e in events.Scalars(tag))
    return out


def final_curves(tags: dict[str, list[tuple[int, float]]]) -> dict[str, dict[int, float]]:
    """family ("pass", "maj", "bon") -> {k: value} at the last validation."""
    curves: dict[str, dict[int, float]] = defaultdict(dict)
    for tag, points in tags.items():
        match = CURVE.match(tag)
        if match and points:
            curves[match.group(1)][int(match.group(2))] = max(points)[1]
    return curves


def label(run: str) -> str:
    return re.sub(r"_s\d+$", "", run)


def plot_curves(base: dict, runs: dict[str, dict], family: str, path: str) -> None:
    plt.figure(figsize=(6, 4))
    ks = sorted(base[family])
    plt.plot(ks, [base[family][k] for k in ks], "k--", label="untrained")
    by_label: dict[str, list[dict[int, float]]] = defaultdict(list)
    for run, curves in runs.items():
        by_label[label(run)].append(curves[family])
    for i, (name, seeds) in enumerate(sorted(by_label.items())):
        color = f"C{i}"
        for curve in seeds:
            plt.plot(ks, [curve[k] for k in ks], color=color, alpha=0.3, linewidth=0.8)
        mean = [sum(c[k] for c in seeds) / len(seeds) for k in ks]
        plt.plot(ks, mean, color=color, marker="o", markersize=3, label=f"{name} ({len(seeds)} seeds)")
    plt.xscale("log", base=2)
    plt.xlabel("k")
    plt.ylabel(f"held-out {family}@k")
    plt.grid(alpha=0.3)
    plt.legend()
    plt.tight_layout()
    plt.savefig(path, dpi=120)
    plt.close()


def plot_budget(runs: dict[str, dict[str, list[tuple[int, float]]]], path: str, budget: float | None) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for name, tags in runs.items():
        for ax, tag in zip(axes, ("train/response_len", "objective/lambda", "train/reward_mean")):
            points = sorted(tags.get(tag, []))
            if points:
                ax.plot([s for s, _ in points], [v for _, v in points], marker=".", label=name)
            ax.set_title(tag)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
    if budget is not None:
        axes[0].axhline(budget, color="k", linestyle="--", linewidth=0.8, label="budget")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def mean_of(tags: dict, tag: str, last: int | None = None) -> float:
    values = [v for _, v in sorted(tags.get(tag, []))]
    values = values[-last:] if last else values
    return sum(values) / len(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", required=True, help="the folder holding one TensorBoard folder per run")
    parser.add_argument("--base", required=True, help="the untrained model's `inferl validate` run")
    parser.add_argument("--compare", nargs="*", default=[], help="runs for the pass@k figure (name_sN = seed N)")
    parser.add_argument("--budget", nargs="*", default=[], help="runs for the budget figure")
    parser.add_argument("--budget-tokens", type=float, default=None)
    parser.add_argument("--out", default="docs")
    parser.add_argument("--prefix", default="smollm2")
    args = parser.parse_args()

    base = final_curves(scalars(os.path.join(args.runs, args.base)))
    tags = {run: scalars(os.path.join(args.runs, run)) for run in [*args.compare, *args.budget]}
    curves = {run: final_curves(tags[run]) for run in tags}
    print("| run | pass@1 | pass@4 | pass@8 | pass@16 | maj@8 | bo@8 | val length | train reward (last 5 steps) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = [("untrained", base, {})] + [(run, curves[run], tags[run]) for run in tags]
    for name, c, t in rows:
        if not c.get("pass"):
            print(f"| {name} | (no validation yet) |")
            continue
        length = max(t.get("val/response_len", [(0, float("nan"))]))[1] if t else float("nan")
        print(f"| {name} | {c['pass'][1]:.3f} | {c['pass'][4]:.3f} | {c['pass'][8]:.3f} | {c['pass'][16]:.3f} | "
              f"{c['maj'].get(8, float('nan')):.3f} | {c['bon'].get(8, float('nan')):.3f} | {length:.1f} | "
              f"{mean_of(t, 'train/reward_mean', 5):.3f} |")
    done = {run: c for run, c in curves.items() if c.get("pass") and run in args.compare}
    if done:
        for family in ("pass", "maj", "bon"):
            plot_curves(base, done, family, os.path.join(args.out, f"{args.prefix}_{family}_at_k.png"))
    if args.budget:
        plot_budget({run: tags[run] for run in args.budget}, os.path.join(args.out, f"{args.prefix}_budget.png"),
                    args.budget_tokens)


if __name__ == "__main__":
    main()
