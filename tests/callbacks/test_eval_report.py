"""callbacks.EvalReport: `inferl test` in-process (Trainer.test on a tiny module) writes samples.jsonl, metrics.json
and curves.png; a rerun after an interruption samples only the missing prompts."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import lightning as L
import matplotlib.image
import pytest
import torch

from callbacks import EvalReport
from datamodules.tasks import Arithmetic
from datamodules.types import Verdict
from modules import EvalSettings
from modules.groups import to_groups
from modules.metrics import EvalMetrics

_spec = importlib.util.spec_from_file_location("fit_helpers",
                                              Path(__file__).resolve().parents[1] / "modules" / "fit_helpers.py")
fit_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fit_helpers)

PROMPTS, N = 8, 4


class SampledPrompts(L.Callback):
    """Records the ids of the prompts each test batch actually sampled."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if outputs is not None:
            self.ids += [record.id for record in outputs.records]


def run_test(dirpath: Path, val_samples: int = N) -> tuple[list[dict], SampledPrompts]:
    # same seed: the same weights every run
    module = fit_helpers.tiny_module(evaluation=EvalSettings(samples=val_samples, pass_k=2))
    data = fit_helpers.tiny_data(val=Arithmetic(num_records=PROMPTS, digits=1, seed=2), val_batch_size=2)
    sampled = SampledPrompts()
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[EvalReport(str(dirpath)), sampled])
    return trainer.test(module, datamodule=data, verbose=False), sampled


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def recompute(rows: list[dict]) -> dict[str, float]:
    """The metrics straight from the JSONL rows (grouped by prompt, in sample order)."""
    rows = sorted(rows, key=lambda r: (r["prompt_id"], r["sample"]))
    verdicts = [Verdict(r["reward"], r["answer"], r["score"], r["error"]) for r in rows]
    metrics = EvalMetrics(ks=[1, 2, 4], pass_k=2)
    metrics.update(to_groups(verdicts, torch.tensor([r["tokens"] for r in rows]), N),
                   torch.tensor([r["finished"] for r in rows]))
    return {f"test/{name}": value for name, value in metrics.compute().items()}


def test_report_folder_and_resume_after_interruption(tmp_path, capsys):
    logged, sampled = run_test(tmp_path)
    rows = read_lines(tmp_path / "samples.jsonl")
    task = Arithmetic(num_records=PROMPTS, digits=1, seed=2)
    assert len(rows) == PROMPTS * N and sampled.ids == [r.id for r in task.records]
    assert [(r["prompt_id"], r["sample"]) for r in rows] == [(p.id, j) for p in task.records for j in range(N)]
    for row, record in zip(rows, (r for r in task.records for _ in range(N))):
        verdict = task.verify(record, row["completion"])  # each line is the verdict of its completion
        assert (row["reward"], row["answer"], row["score"]) == (verdict.reward, verdict.answer, verdict.score)
        assert row["prompt"] == record.prompt and row["n"] == N and row["tokens"] >= 1

    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["ks"] == [1, 2, 4] and report["prompts"] == PROMPTS and report["resumed_prompts"] == 0
    assert set(report["curves"]) == {"pass", "maj", "bon", "pass^", "bom"} and list(report["curves"]["pass"]) == [
        "1", "2", "4"]
    assert list(report["curves"]["pass^"]) == ["1", "2", "4"] and list(report["curves"]["bom"]) == ["2"]
    for name, value in recompute(rows).items():
        assert report["metrics"][name] == pytest.approx(value, abs=1e-9), name
        assert logged[0][name] == pytest.approx(value, abs=1e-6), name  # what the logger got
    assert sum(report["solve_rate_histogram"]["counts"]) == PROMPTS
    image = matplotlib.image.imread(tmp_path / "curves.png")
    assert image.shape[0] >= 300 and image.shape[1] >= 600 and image.std() > 0.05  # a drawn figure, not blank
    printed = capsys.readouterr().out
    assert "pass@k" in printed and "bon@k" in printed and "pass^k" in printed and "truncated_frac" in printed

    # interrupted while writing prompt 2 (of batch 1): two prompts complete, a partial third, half a line
    text = (tmp_path / "samples.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "samples.jsonl").write_text("".join(text[: 2 * N + 2]) + text[2 * N + 2][:20])
    (tmp_path / "metrics.json").unlink()
    _, resumed = run_test(tmp_path)
    assert resumed.ids == [r.id for r in task.records[2:]]  # only the missing prompts were sampled
    assert read_lines(tmp_path / "samples.jsonl") == rows  # each batch's RNG is its own: batch 1 came out the same
    again = json.loads((tmp_path / "metrics.json").read_text())
    assert again["resumed_prompts"] == 2 and again["metrics"] == pytest.approx(report["metrics"], abs=1e-12)

    # a complete report: nothing to sample, the metrics read back from the file
    _, finished = run_test(tmp_path)
    assert finished.ids == []
    assert json.loads((tmp_path / "metrics.json").read_text())["metrics"] == pytest.approx(report["metrics"], abs=1e-12)


def test_a_report_made_with_another_n_is_refused(tmp_path):
    run_test(tmp_path, val_samples=2)
    with pytest.raises(ValueError, match=r"n = 2 per prompt, this run draws model\.evaluation\.samples = 4"):
        run_test(tmp_path, val_samples=4)
