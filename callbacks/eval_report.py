"""An evaluation report folder from `inferl validate` / `inferl test`: every sample as JSONL (streamed, so large
runs survive an interruption and resume), the metrics as JSON, a PNG of pass@k / maj@k / bon@k against k, and a
rich table on the console.

    dirpath/
      samples.jsonl      one line per sample: prompt_id, sample, n, prompt, completion, reward, answer, score,
                         tokens, finished, error (samples.rank{R}.jsonl per process when several run)
      metrics.json       stage, step (the checkpoint's training step), n, ks, checkpoint, sampling, prompts,
                         resumed_prompts, metrics {test/pass@1, ...}, curves {pass: {k: value}, maj: ..., bon: ...},
                         solve_rate_histogram {edges, counts, never, always}
      curves.png         pass@k, maj@k, bon@k against k (log2 axis), and the per-prompt solve-rate histogram
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn

from datamodules.records import DataError
from datamodules.types import Verdict

log = logging.getLogger(__name__)

SAMPLES = "samples.jsonl"
METRICS = "metrics.json"
PLOT = "curves.png"
FAMILIES = ("pass", "maj", "bon", "pass^", "bom")


def samples_name(rank: int, world_size: int) -> str:
    return SAMPLES if world_size == 1 else f"samples.rank{rank}.jsonl"


def read_samples(path: str) -> list[dict[str, Any]]:
    """The rows of a samples JSONL; an unreadable line (the tail of an interrupted write) is dropped."""
    rows = []
    if not os.path.isfile(path):
        return rows
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "prompt_id" in row and "sample" in row:
                rows.append(row)
    return rows


def complete_prompts(rows: Iterable[dict[str, Any]], n: int) -> dict[str, list[dict[str, Any]]]:
    """Prompt id -> its n rows in sample order, for prompts whose samples 0..n-1 are all present (file order)."""
    by_prompt: dict[str, dict[int, dict[str, Any]]] = {}
    for row in rows:
        if row.get("n") != n:
            raise DataError(f"EvalReport: the samples file holds samples drawn with n = {row.get('n')} per prompt, "
                             f"this run draws model.evaluation.samples = {n}; use another dirpath or remove the old "
                             "report")
        by_prompt.setdefault(str(row["prompt_id"]), {})[int(row["sample"])] = row
    return {pid: [samples[j] for j in range(n)] for pid, samples in by_prompt.items() if set(samples) == set(range(n))}


def atomic_write(path: str, text: str) -> None:
    """Write, then rename: a reader never sees half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def curves(metrics: dict[str, float]) -> dict[str, dict[int, float]]:
    """{family: {k: value}} from names such as "test/pass@4" (the literal "pass@k" entries are left out)."""
    out: dict[str, dict[int, float]] = {}
    for name, value in metrics.items():
        match = re.fullmatch(r"(?:\w+/)?(pass@|maj@|bon@|bom@|pass\^)(\d+)", name)
        if match:
            out.setdefault(match[1].rstrip("@"), {})[int(match[2])] = value
    return {family: dict(sorted(points.items())) for family, points in out.items()}


def column(family: str) -> str:
    """The family's name with k: "pass@k", "pass^k"."""
    return f"{family}k" if family.endswith("^") else f"{family}@k"


def plot_curves(axes, series: dict[str, dict[int, float]], label: str = "", **style) -> None:
    """Draw {family: {k: value}} on matplotlib axes with a log2 k axis; `label` prefixes the legend entries."""
    markers = {"pass": "o", "maj": "s", "bon": "^", "pass^": "v", "bom": "D"}
    ks = sorted({k for points in series.values() for k in points})
    for family in FAMILIES:
        points = series.get(family)
        if points:
            name = f"{label} {column(family)}".strip()
            axes.plot(list(points), list(points.values()), marker=markers[family], label=name, **style)
    axes.set_xscale("log", base=2)
    if ks:
        axes.set_xticks(ks, [str(k) for k in ks])
    axes.set_xlabel("k (samples per prompt)")
    axes.set_ylim(0, 1.02)
    axes.grid(alpha=0.3)


def write_plot(path: str, report: dict[str, Any]) -> None:
    """curves.png: the estimates against k, and the per-prompt solve-rate histogram."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 2]})
    plot_curves(left, report["curves"])
    left.set_ylabel("unbiased estimate")
    left.legend()
    left.set_title(f"{report['stage']}: {report['prompts']} prompts, n = {report['n']} samples each")
    histogram = report["solve_rate_histogram"]
    edges, counts = histogram["edges"], histogram["counts"]
    right.bar(edges[:-1], counts, width=[b - a for a, b in itertools.pairwise(edges)], align="edge", edgecolor="black")
    right.set_xlabel("solve rate (fraction of a prompt's samples right)")
    right.set_ylabel("prompts")
    right.set_title(f"never solved {histogram['never']:g}, always solved {histogram['always']:g}")
    figure.tight_layout()
    figure.savefig(f"{path}.tmp.png", dpi=120)
    plt.close(figure)
    os.replace(f"{path}.tmp.png", path)


def print_table(report: dict[str, Any]) -> None:
    """The curves as a rich table (k down, pass@k / maj@k / bon@k / pass^k / bom@k across), then lengths and
    truncation."""
    from rich.console import Console
    from rich.table import Table

    series = report["curves"]
    families = [f for f in FAMILIES if f in series]
    table = Table(title=f"{report['stage']} ({report['prompts']} prompts x {report['n']} samples)")
    table.add_column("k", justify="right")
    for family in families:
        table.add_column(column(family), justify="right")
    for k in report["ks"]:
        table.add_row(str(k), *(f"{series[f][k]:.4f}" if k in series[f] else "" for f in families))
    stage, metrics = report["stage"], report["metrics"]
    console = Console()
    console.print(table)
    console.print(f"response_len {metrics[f'{stage}/response_len']:.2f} tokens, "
                  f"truncated_frac {metrics[f'{stage}/truncated_frac']:.4f}; report in {report['dirpath']}")


class EvalReport(L.Callback):
    """Write a report folder during `inferl validate` / `inferl test` (nothing during fit).

    Every sample is appended to `dirpath`/samples.jsonl as its batch finishes. A rerun into the same folder
    continues: prompts whose n samples are all in the file are not sampled again (their samples count in the
    metrics, read back from the file), the others are. At the end: metrics.json, curves.png and a console table.
    Example: `inferl test --config configs/demo.yaml --ckpt_path last --trainer.callbacks+=callbacks.EvalReport
    --trainer.callbacks.dirpath=reports/demo` (see docs/evaluation.md).

    Args:
        dirpath: the report folder (created if missing).
        plot: write curves.png (needs matplotlib).
        table: print the rich table of the metrics at the end.
    """

    def __init__(self, dirpath: str, plot: bool = True, table: bool = True) -> None:
        self.dirpath = dirpath
        self.plot = plot
        self.table = table
        self._file = None
        self._checkpoint_step: int | None = None
        self.resumed_prompts = 0  # prompts read back from an earlier, interrupted run (the latest epoch)

    # ----------------------------------------------------------------------------------------- start
    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._checkpoint_step = checkpoint.get("global_step")  # testing restores weights, not the step count

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(trainer, pl_module)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(trainer, pl_module)

    def _start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn not in (TrainerFn.VALIDATING, TrainerFn.TESTING):
            return
        os.makedirs(self.dirpath, exist_ok=True)
        path = os.path.join(self.dirpath, samples_name(trainer.global_rank, trainer.world_size))
        n = pl_module.evaluation.samples
        done = complete_prompts(read_samples(path), n)
        known = dataloader_ids(trainer)
        unknown = sorted(set(done) - known) if known is not None else []
        if unknown:
            raise DataError(f"EvalReport: {path} has samples of {len(unknown)} prompts that are not in this run's "
                             f"data (e.g. {unknown[0]!r}); use another dirpath or remove the old report")
        atomic_write(path, "".join(json.dumps(row) + "\n" for rows in done.values() for row in rows))
        rows = [row for prompt_rows in done.values() for row in prompt_rows]
        pl_module.restore_eval(list(done), [Verdict(r["reward"], r["answer"], r["score"], r["error"]) for r in rows],
                               [r["tokens"] for r in rows], [r["finished"] for r in rows])
        self.resumed_prompts = len(done)
        if done:
            log.info("EvalReport: %d prompts already complete in %s; sampling the others", len(done), path)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - stays open across batches; closed at the end

    # ----------------------------------------------------------------------------------------- samples
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._write(outputs)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._write(outputs)

    def _write(self, rollout) -> None:
        if self._file is None or rollout is None:
            return
        n, lines = rollout.group_size, []
        for b, record in enumerate(rollout.records):
            prompt = record.prompt if record.prompt is not None else record.messages
            for j in range(n):
                i, verdict = b * n + j, rollout.verdicts[b * n + j]
                lines.append(json.dumps({
                    "prompt_id": record.id, "sample": j, "n": n, "prompt": prompt, "completion": rollout.texts[i],
                    "reward": verdict.reward, "answer": verdict.answer, "score": verdict.score,
                    "tokens": rollout.lengths[i], "finished": rollout.finished[i], "error": verdict.error}) + "\n")
        self._file.write("".join(lines))
        self._file.flush()

    # ----------------------------------------------------------------------------------------- end
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish(trainer, pl_module)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish(trainer, pl_module)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._close()  # what was written stays: the next run continues from it

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _finish(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._file is None:
            return
        self._close()
        results = getattr(pl_module, "eval_results", None)
        if trainer.global_rank != 0 or results is None:
            return
        report = self.report(trainer, pl_module, results)
        atomic_write(os.path.join(self.dirpath, METRICS), json.dumps(report, indent=2) + "\n")
        if self.plot:
            write_plot(os.path.join(self.dirpath, PLOT), report)
        if self.table:
            print_table(report)

    def report(self, trainer: L.Trainer, pl_module: L.LightningModule, results: dict[str, Any]) -> dict[str, Any]:
        """The metrics.json content."""
        histogram = results["solve_rate_histogram"]
        return {
            "stage": results["stage"], "n": results["n"], "ks": results["ks"],
            "step": self._checkpoint_step if self._checkpoint_step is not None else results["step"],
            "prompts": int(sum(histogram["counts"])), "resumed_prompts": self.resumed_prompts,
            "checkpoint": trainer.ckpt_path, "sampling": asdict(pl_module.evaluation.sampling),
            "dirpath": os.path.abspath(self.dirpath), "metrics": results["metrics"],
            "curves": curves(results["metrics"]), "solve_rate_histogram": histogram,
        }


def dataloader_ids(trainer: L.Trainer) -> set[str] | None:
    """Prompt ids of this process's evaluation data (None when the loader's batches are not prompt records)."""
    loaders = trainer.test_dataloaders if trainer.testing else trainer.val_dataloaders
    if loaders is None:
        return None
    ids: set[str] = set()
    for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
        for batch in loader:
            if not isinstance(batch, list) or not all(hasattr(record, "id") for record in batch):
                return None
            ids.update(record.id for record in batch)
    return ids
