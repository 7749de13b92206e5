"""Train the demo with several objectives and seeds; print final pass@1 / pass@k / maj@k, mean and spread.

    python bench/objective_tradeoff.py [--configs configs/demo.yaml configs/demo_pass_at_k.yaml ...] [--seeds 0 1 2]

Each run is `inferl fit --config C` with the seed of sampling, model initialisation and data order set to S,
logging under runs/tradeoff/. The figures are the last validation of each run (the model after training).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from learning_curve import read_scalars

TAGS = ["val/pass@1", "val/pass@k", "val/maj@k"]


def run(config: str, seed: int, out: str) -> dict[str, float]:
    name = f"{os.path.splitext(os.path.basename(config))[0]}_seed{seed}"
    command = [sys.executable, "-m", "app", "fit", "--config", config, "--seed_everything", str(seed),
               "--model.group.seed", str(seed), "--model.policy.init_args.seed", str(seed), "--data.seed", str(seed),
               "--trainer.logger.init_args.save_dir", out, "--trainer.logger.init_args.name", name,
               "--trainer.logger.init_args.version", "0", "--checkpoint.dirpath", os.path.join(out, name, "ckpt"),
               "--trainer.enable_progress_bar", "false"]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    curves = read_scalars(os.path.join(out, name, "version_0"), TAGS)
    final = {tag: points[-1][1] for tag, points in curves.items() if points}
    first = {tag: points[0][1] for tag, points in curves.items() if points}
    print(f"  {name}: {time.perf_counter() - start:.0f} s, step 0 -> end: "
          + ", ".join(f"{t} {first[t]:.3f} -> {final[t]:.3f}" for t in final), flush=True)
    return final


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["configs/demo.yaml", "configs/demo_pass_at_k.yaml",
                                                         "configs/demo_majority_vote.yaml"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default="runs/tradeoff")
    args = parser.parse_args()
    table = {config: [run(config, seed, args.out) for seed in args.seeds] for config in args.configs}
    print("\n| objective config | " + " | ".join(TAGS) + " |")
    print("|---|" + "---:|" * len(TAGS))
    for config, finals in table.items():
        cells = []
        for tag in TAGS:
            values = [f[tag] for f in finals if tag in f]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} ± {spread:.3f}")
        print(f"| {config} | " + " | ".join(cells) + " |")
    print(f"\nmean ± standard deviation over seeds {args.seeds}; pass@k and maj@k at the config's model.pass_k")


if __name__ == "__main__":
    main()
