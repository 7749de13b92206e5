"""InferlModule's settings, one small self-checking dataclass per concern (YAML: `model.group`, `model.update`,
`model.kl`, `model.critic`, `model.evaluation`, `model.memory`). Each checks its own values in `__post_init__` and
says which key is wrong; checks that need two groups are `check_together` below. `inferl fit --help` lists them
grouped, with these docstrings."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from callbacks.estimators.common import check_choice
from modules.errors import ConfigError
from modules.logprobs import CHUNK_TOKENS
from modules.losses import KLEstimator, LossAggregation
from modules.policy import LoraParams, PolicySource
from modules.reference import ReferenceChoice, resolve_reference
from modules.rollout import SamplingParams
from modules.value_head import CriticKind


def choice(value: Any, literal: Any, key: str) -> None:
    """check_choice as a ConfigError (the CLI prints it as one line)."""
    try:
        check_choice(value, literal, key)
    except ValueError as error:
        raise ConfigError(str(error)) from None


@dataclass(frozen=True)
class GroupSettings:
    """Training rollouts: G samples per prompt.

    Args:
        size: G, completions sampled per prompt in training (leave-one-out baselines need >= 2).
        sampling: sampling settings of training rollouts.
        seed: sampling seed of training and evaluation rollouts and of the minibatch order (each rank offsets it by
            its rank).
    """

    size: int = 8
    sampling: SamplingParams = field(default_factory=SamplingParams)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.size < 2:
            raise ConfigError(f"model.group.size must be >= 2 (leave-one-out baselines need two samples), got "
                              f"{self.size}")


@dataclass(frozen=True)
class UpdateSettings:
    """The clipped policy-gradient update of each step's samples (the optimizer itself is `model.optimizer`).

    Args:
        ppo_epochs: passes over each step's samples.
        minibatches: optimizer steps per pass (the step's sequences are split into this many minibatches).
        micro_batch_size: sequences per forward/backward (gradients accumulate up to a minibatch); None = whole
            minibatch.
        clip_low: lower PPO clip range: the ratio is clipped at 1 - clip_low.
        clip_high: upper PPO clip range: the ratio is clipped at 1 + clip_high (DAPO raises it).
        loss_aggregation: "token-mean" (all tokens of a minibatch weigh the same) or "sequence-mean".
        max_grad_norm: clip the gradient norm to this (None = no clipping).
        whiten_advantages: normalise the advantages to mean 0, std 1 over the step's tokens (with or without a
            critic; it changes the objective's scale per step, so it is off by default).
    """

    ppo_epochs: int = 1
    minibatches: int = 1
    micro_batch_size: int | None = None
    clip_low: float = 0.2
    clip_high: float = 0.2
    loss_aggregation: LossAggregation = "token-mean"
    max_grad_norm: float | None = 1.0
    whiten_advantages: bool = False

    def __post_init__(self) -> None:
        for key in ("ppo_epochs", "minibatches"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.update.{key} must be >= 1, got {getattr(self, key)}")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ConfigError(f"model.update.micro_batch_size must be >= 1 or null, got {self.micro_batch_size}")
        for key in ("clip_low", "clip_high"):
            if getattr(self, key) < 0:
                raise ConfigError(f"model.update.{key} must be >= 0, got {getattr(self, key)}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ConfigError(f"model.update.max_grad_norm must be > 0 or null, got {self.max_grad_norm}")
        choice(self.loss_aggregation, LossAggregation, "model.update.loss_aggregation")

    @property
    def needs_old_logprobs(self) -> bool:
        """More than one optimizer step per batch: later steps need the log-probs from before the first."""
        return not (self.ppo_epochs == 1 and self.minibatches == 1)


@dataclass(frozen=True)
class KLSettings:
    """The KL-to-reference term of the loss.

    Args:
        coef: beta, weight of the KL-to-reference loss term; 0 loads no reference model.
        estimator: "k1", "k2" or "k3" (default; unbiased and non-negative).
        reference: the reference model (when coef > 0): "auto" (adapters with LoRA, else copy), "copy" (a frozen
            copy in the policy's dtype), "8bit" / "4bit" (a frozen copy quantized with bitsandbytes, about 1/2 / 1/4
            of a 16-bit copy's memory), "adapters" (LoRA only: the policy with its adapters disabled, no second
            model). See docs/models.md.
    """

    coef: float = 0.0
    estimator: KLEstimator = "k3"
    reference: ReferenceChoice = "auto"

    def __post_init__(self) -> None:
        if self.coef < 0:
            raise ConfigError(f"model.kl.coef must be >= 0, got {self.coef}")
        choice(self.estimator, KLEstimator, "model.kl.estimator")
        choice(self.reference, ReferenceChoice, "model.kl.reference")


@dataclass(frozen=True)
class CriticSettings:
    """A learned value function (PPO): the objective's weights become terminal rewards, advantages come from GAE.

    Args:
        kind: "none" (the objective's weights are the advantages), "shared" (a value head on the policy's final
            hidden states, trained through the shared trunk) or "separate" (a value head on its own model).
        model: the separate critic's model (kind separate); None = a fresh copy of `model.policy`.
        value_coef: weight of the value loss.
        value_clip: clip range of the value prediction around the pre-update value (None = unclipped).
        gamma: GAE discount over tokens.
        gae_lambda: GAE lambda (1 = Monte Carlo returns minus values; 0 = one-step TD).
    """

    kind: CriticKind = "none"
    model: PolicySource | None = None
    value_coef: float = 0.1
    value_clip: float | None = 0.2
    gamma: float = 1.0
    gae_lambda: float = 0.95

    def __post_init__(self) -> None:
        choice(self.kind, CriticKind, "model.critic.kind")
        if self.model is not None and self.kind != "separate":
            raise ConfigError(f"model.critic.model is only used with model.critic.kind: separate (got kind: "
                              f"{self.kind}); remove it or set kind: separate")
        if self.kind != "none" and self.value_coef <= 0:
            raise ConfigError(f"model.critic.value_coef must be > 0 with a critic (it would never train, and the "
                              f"advantages would stay those of V = 0), got {self.value_coef}")
        if self.value_clip is not None and self.value_clip <= 0:
            raise ConfigError(f"model.critic.value_clip must be > 0 or null (unclipped), got {self.value_clip}")
        for key in ("gamma", "gae_lambda"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"model.critic.{key} must be in [0, 1], got {getattr(self, key)}")


@dataclass(frozen=True)
class EvalSettings:
    """Validation, test and predict: n samples per prompt, unbiased pass@k / maj@k / bon@k from them.

    Args:
        samples: n, completions per prompt in validation, test and predict (unbiased pass@k needs n >= k).
        sampling: sampling settings of evaluation (None = the training rollouts' `model.group.sampling`).
        pass_k: the k of the pass@k / maj@k metrics (train: from the G samples; val: from the n samples).
        ks: the ks of the validation / test pass@k, maj@k and bon@k curves (logged as val/pass@{k} ...), each <=
            samples; None = [1, pass_k] and the powers of 2 up to samples.
    """

    samples: int = 8
    sampling: SamplingParams | None = None
    pass_k: int = 4
    ks: list[int] | None = None

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ConfigError(f"model.evaluation.samples must be >= 1, got {self.samples}")
        if not 1 <= self.pass_k <= self.samples:
            raise ConfigError(f"model.evaluation.pass_k must be between 1 and model.evaluation.samples = "
                              f"{self.samples} (unbiased pass@k needs n >= k samples), got {self.pass_k}")
        if self.ks is not None and (not self.ks or any(not 1 <= k <= self.samples for k in self.ks)):
            raise ConfigError(f"model.evaluation.ks must be a non-empty list of ks between 1 and "
                              f"model.evaluation.samples = {self.samples} (unbiased pass@k needs n >= k samples), got "
                              f"{list(self.ks)}; raise model.evaluation.samples or drop the large ks")

    @property
    def curve_ks(self) -> list[int]:
        """The ks of the evaluation curves: `ks` with 1 and pass_k added, or [1, pass_k] and the powers of 2 up to
        samples."""
        if self.ks is None:
            return sorted({1, self.pass_k} | {2**i for i in range(self.samples.bit_length())})
        return sorted({1, self.pass_k, *self.ks})


@dataclass(frozen=True)
class MemorySettings:
    """Trading compute for memory in the update.

    Args:
        lora: LoRA adapters (peft), e.g. {rank: 16, alpha: 32}: only the adapters train; on a quantized policy (the
            policy's quantization: 4bit) this is QLoRA. None = every policy weight trains.
        gradient_checkpointing: recompute the policy's decoder activations in backward (transformers'
            non-reentrant checkpointing): less activation memory for about a third more update compute.
        logprob_chunk_tokens: tokens per chunk of the LM head + log-softmax: the pass holds about two float32
            [chunk, V] buffers (1024 x 152k vocabulary: 0.6 GB each; docs/memory.md); smaller saves memory, and a
            batch of several chunks recomputes each chunk's logits once in backward.
    """

    lora: LoraParams | None = None
    gradient_checkpointing: bool = False
    logprob_chunk_tokens: int = CHUNK_TOKENS

    def __post_init__(self) -> None:
        if isinstance(self.lora, dict):  # a checkpoint's plain hyperparameters
            object.__setattr__(self, "lora", LoraParams(**self.lora))
        if self.logprob_chunk_tokens < 1:
            raise ConfigError(f"model.memory.logprob_chunk_tokens must be >= 1, got {self.logprob_chunk_tokens}")


def check_together(policy: PolicySource, group: GroupSettings, kl: KLSettings, critic: CriticSettings,
                   evaluation: EvalSettings, memory: MemorySettings) -> None:
    """Reject settings of two groups that cannot work together, naming the keys."""
    if evaluation.pass_k > group.size:
        raise ConfigError(f"model.evaluation.pass_k must be <= model.group.size = {group.size} (train/pass@k comes "
                          f"from the G samples; unbiased pass@k needs n >= k), got {evaluation.pass_k}")
    try:
        resolve_reference(kl.reference, kl.coef, memory.lora is not None)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    quantization = getattr(policy, "quantization", None)
    if quantization is not None and memory.lora is None:
        raise ConfigError(f"model.policy quantization {quantization!r} freezes the policy's weights: set "
                          "model.memory.lora (e.g. {rank: 16}) to train LoRA adapters on them (QLoRA), or load the "
                          "policy unquantized")
    critic_quantization = getattr(critic.model or policy, "quantization", None)
    if critic.kind == "separate" and critic_quantization is not None:
        raise ConfigError(f"model.critic.kind: separate trains the critic's own weights, which a "
                          f"{critic_quantization} model cannot; set model.critic.model to an unquantized model or "
                          "use kind: shared")


def plain(settings: Any) -> dict[str, Any]:
    """A settings dataclass as plain types for the checkpoint's hyperparameters (which load with weights_only=True):
    nested dataclasses as dicts; model sources left out (like `model.policy`, they are rebuilt from the config)."""
    values = {}
    for item in fields(settings):
        value = getattr(settings, item.name)
        if not isinstance(value, PolicySource):
            values[item.name] = plain(value) if is_dataclass(value) else value
    return values
