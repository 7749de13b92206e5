"""A callback for tests/app/test_real_model.py, chosen by class_path from a run's YAML: it records what the real
rollouts produced (prompt and completion token ids, masks, EOS flags, texts) per stage into a JSON file, by
wrapping the module's own rollout (the real engine still generates; this only keeps a copy of its output)."""

from __future__ import annotations

import json

import lightning as L


class RolloutRecorder(L.Callback):
    """Appends {stage, prompt_ids, completion_ids, completion_mask, finished, texts} of every rollout to `path`
    (JSON list) when the run ends."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.rollouts: list[dict] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        rollout = pl_module.rollout

        def recorded(batch, group_size, params, generator=None):
            samples, texts = rollout(batch, group_size, params, generator)
            self.rollouts.append({
                "stage": trainer.state.stage.value if trainer.state.stage else stage,
                "messages": [record.messages for record in batch],
                "prompt_ids": samples.prompt_ids.tolist(), "prompt_mask": samples.prompt_mask.tolist(),
                "completion_ids": samples.completion_ids.tolist(),
                "completion_mask": samples.completion_mask.tolist(),
                "finished": samples.finished.tolist(), "texts": texts})
            return samples, texts

        pl_module.rollout = recorded

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        with open(self.path, "w") as handle:
            json.dump(self.rollouts, handle)
