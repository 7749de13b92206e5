"""The types that cross package boundaries, in one place that depends on nothing of the project (torch only):
a prompt record and a verifier's verdict (datamodules -> modules), the sampled completions of a rollout
(modules/rollout -> the module), and the verified [B, G] groups an objective turns into weights
(modules -> callbacks). See docs/architecture.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


@dataclass
class PromptRecord:
    """One prompt and what its verifier needs.

    Exactly one of `prompt` (raw text, fed to the model as is) and `messages` (chat turns, rendered with the
    tokenizer's chat template and a generation prompt) is set. `reference` is what the verifier compares
    against (a gold answer, unit tests, expected outputs); `meta` holds task-specific extras; `source` is where the
    record was read ("file:line", "" when generated), for messages about it.
    """

    id: str
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    reference: Any = None
    task: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError(f"record {self.id!r}: give exactly one of `prompt` and `messages`")


@dataclass
class Verdict:
    """A verifier's judgement of one completion.

    reward: the training reward (1.0/0.0 for pass/fail tasks, real-valued otherwise).
    answer: the parsed, normalised final answer; equal strings are equivalent answers (used for voting);
        None when nothing could be parsed (it never votes).
    score: a cheaper verifier's score, used by best-of-N selection (e.g. visible example tests for code).
    error: why verification failed (parse error, timeout, crash); the reward is then 0 unless set otherwise.
    """

    reward: float
    answer: str | None = None
    score: float | None = None
    error: str | None = None


@dataclass
class Samples:
    """N = B * G completions, sample j of prompt b at row b * G + j.

    prompt_ids, prompt_mask: [N, P] left-padded prompts (each prompt repeated G times).
    completion_ids, completion_mask: [N, L] right-padded; the mask covers generated tokens, EOS included.
    sampling_logprobs: [N, L] log-probability of each token under the distribution it was drawn from.
    finished: [N] True where the completion ended with EOS (False: truncated at max_new_tokens).
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    completion_ids: Tensor
    completion_mask: Tensor
    sampling_logprobs: Tensor
    finished: Tensor
    group_size: int

    @property
    def completion_lengths(self) -> Tensor:
        return self.completion_mask.sum(-1)


@dataclass
class Groups:
    """B prompts x G samples each, verified. All tensors are [B, G] on the same device.

    rewards: verifier rewards (binary or real).
    answer_ids: per-prompt answer class of each sample (equal ids = equivalent answers); -1 = unparsable.
    scores: a verifier's score per sample for best-of-N selection, or None when the task has none.
    costs: generated tokens per sample (the compute a sample spent).
    values: the critic's value at the last token (a learned verifier: it predicts the objective's weight, whose
        order within a group follows predicted success), or None without a critic.
    """

    rewards: Tensor
    answer_ids: Tensor
    costs: Tensor
    scores: Tensor | None = None
    values: Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.rewards.shape)  # type: ignore[return-value]
