"""The rollout engine interface: what InferlModule asks of whatever draws its completions. Training, validation,
test and predict all roll out through one engine, chosen in YAML (`model.rollout`); the module owns the policy,
the tokenizer and the RNG, the engine only samples. Shapes: B prompts, G samples per prompt, N = B * G, P prompt
tokens, L completion tokens."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from datamodules.types import Samples

if TYPE_CHECKING:  # the module imports the engines; engines only read it
    from modules.module import InferlModule


@dataclass
class SamplingParams:
    """How completions are drawn.

    Args:
        max_new_tokens: completion length limit; longer completions are truncated (finish reason "length").
        temperature: softmax temperature; 0 means greedy.
        top_p: nucleus sampling mass (1.0 = off).
        top_k: keep the k most likely tokens (0 = off).
    """

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")

    @property
    def is_plain(self) -> bool:
        """True when samples come from the model's own distribution (their log-probs are the policy's)."""
        return self.temperature == 1.0 and self.top_p == 1.0 and self.top_k == 0


class RolloutEngine(ABC):
    """Draws G completions per prompt from the current policy.

    InferlModule calls, on every rank:

    - `setup(module)` once per fit / validate / test / predict, after the policy is on its device, sharded (FSDP2)
      and restored from the checkpoint (at on_fit_start; outside fit at on_{validation,test,predict}_start): build
      what the engine needs from `module.policy`, `module.tokenizer`, `module.eos_token_ids()`,
      `module.tokenizer.pad_token_id`.
    - `generate(...)` for each training step and each validation / test / predict batch.
    - `sync_weights(module)` before a rollout whenever the policy's weights changed since the engine last saw them
      (after a training step's optimizer steps, after a warm start, after setup never): every rank calls it at the
      same point, so it may use collectives (e.g. gather FSDP2 shards).
    - `teardown()` at the end of the stage: free what setup built.
    """

    #: C of truncated importance sampling of this engine's samples (modules.losses.truncated_importance_weights);
    #: None = the samples are the trainer's own distribution (the torch sampler), no correction
    importance_cap: float | None = None

    def setup(self, module: InferlModule) -> None:  # noqa: B027 - an optional hook: the default does nothing
        """Build the engine for `module`'s policy (called once per stage, see the class docstring)."""

    @abstractmethod
    def generate(self, prompt_ids: list[list[int]], group_size: int, params: SamplingParams,
                 generator: torch.Generator) -> Samples:
        """G = `group_size` completions for each of the B prompts (token ids, no padding), drawn with `params`.

        Returns Samples (datamodules.types) on the policy's device, sample j of prompt b at row b * G + j:
        prompt_ids / prompt_mask [N, P] left-padded, completion_ids / completion_mask [N, L] right-padded (the mask
        covers generated tokens, EOS included), sampling_logprobs [N, L] (float32, the log-prob of each token under
        the distribution it was drawn from), finished [N] (True: ended with an EOS token; False: cut at
        params.max_new_tokens). `generator` is the module's RNG for this rollout (training: the run's, checkpointed;
        evaluation: one per batch): an engine that cannot sample with it draws its seeds from it, so that a run
        reproduces and resumes exactly.
        """

    def sync_weights(self, module: InferlModule) -> None:  # noqa: B027 - an optional hook: the default does nothing
        """Make the engine sample from `module.policy`'s current weights (see the class docstring for when)."""

    def teardown(self) -> None:  # noqa: B027 - an optional hook: the default does nothing
        """Free what setup built (called at the end of each stage)."""
