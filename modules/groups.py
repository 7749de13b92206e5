"""From verifier verdicts to the [B, G] tensors an objective consumes."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from datamodules.types import Groups, Verdict


def answer_classes(answers: Sequence[str | None], group_size: int) -> torch.Tensor:
    """Per-prompt class ids [B, G] of parsed answers: equal strings share an id, None is -1.

    answers: B * G answers, sample j of prompt b at position b * G + j.
    """
    ids = torch.full((len(answers) // group_size, group_size), -1, dtype=torch.long)
    for b in range(ids.shape[0]):
        seen: dict[str, int] = {}
        for j in range(group_size):
            answer = answers[b * group_size + j]
            if answer is not None:
                ids[b, j] = seen.setdefault(answer, len(seen))
    return ids


def to_groups(verdicts: Sequence[Verdict], costs: torch.Tensor, group_size: int,
              values: torch.Tensor | None = None) -> Groups:
    """Stack B * G verdicts into Groups; `costs` [N] are generated tokens per sample, `values` [N] or None.
    Verdicts come through the data module's verify, which holds verifiers to their contract (datamodules/
    verify_guard.py); one that did not is a ValueError naming it, never a bare TypeError from torch."""
    shape = (len(verdicts) // group_size, group_size)
    for i, v in enumerate(verdicts):
        if not (isinstance(v.reward, (int, float)) and math.isfinite(v.reward)):
            raise ValueError(f"verdict {i} (prompt {i // group_size}, sample {i % group_size}) has reward "
                             f"{v.reward!r}; verify through PromptDataModule.verify, which scores such a sample 0")
    rewards = torch.tensor([v.reward for v in verdicts], dtype=torch.float32).view(shape)
    scores = None
    if any(v.score is not None for v in verdicts):  # a sample whose verifier failed scores 0, like its reward
        scores = torch.tensor([0.0 if v.score is None else v.score for v in verdicts], dtype=torch.float32).view(shape)
    device = costs.device
    answer_ids = answer_classes([v.answer for v in verdicts], group_size).to(device)
    return Groups(rewards=rewards.to(device), answer_ids=answer_ids,
                  costs=costs.view(shape).float(), scores=None if scores is None else scores.to(device),
                  values=None if values is None else values.view(shape))
