"""Settings checks of InferlModule: each rejects what cannot work with a ConfigError that names the key."""

from __future__ import annotations

from collections.abc import Sequence

from modules.errors import ConfigError
from modules.policy import LoraParams
from modules.reference import ReferenceChoice, resolve_reference


def resolve_eval_ks(eval_ks: Sequence[int] | None, pass_k: int, val_samples: int) -> list[int]:
    """The validation ks: `eval_ks` checked against val_samples (with 1 and pass_k added), or [1, pass_k] and the
    powers of 2 up to val_samples."""
    if eval_ks is None:
        return sorted({1, pass_k} | {2**i for i in range(val_samples.bit_length()) if 2**i <= val_samples})
    bad = [k for k in eval_ks if not 1 <= k <= val_samples]
    if bad or not eval_ks:
        raise ConfigError(f"model.eval_ks must be a non-empty list of ks between 1 and model.val_samples = "
                          f"{val_samples} (unbiased pass@k needs n >= k samples), got {list(eval_ks)}; raise model.val_samples or "
                          "drop the large ks")
    return sorted({1, pass_k, *eval_ks})


def check_settings(group_size: int, val_samples: int, pass_k: int, ppo_epochs: int, minibatches: int,
                   micro_batch_size: int | None, kl_coef: float, reference: ReferenceChoice = "auto",
                   lora: LoraParams | None = None, quantization: str | None = None) -> None:
    """Reject settings that cannot work, naming the key."""
    problems = []
    try:
        resolve_reference(reference, kl_coef, lora is not None)
    except ValueError as error:
        problems.append(str(error))
    if quantization is not None and lora is None:
        problems.append(f"model.policy quantization {quantization!r} freezes the policy's weights: set model.lora "
                        "(e.g. {rank: 16}) to train LoRA adapters on them (QLoRA), or load the policy unquantized")
    if group_size < 2:
        problems.append(f"model.group_size must be >= 2 (leave-one-out baselines need two samples), got {group_size}")
    if not 1 <= pass_k <= min(group_size, val_samples):
        problems.append(f"model.pass_k must be between 1 and min(model.group_size, model.val_samples) = "
                        f"{min(group_size, val_samples)} (unbiased pass@k needs n >= k samples), got {pass_k}")
    if ppo_epochs < 1 or minibatches < 1:
        problems.append("model.ppo_epochs and model.minibatches must be >= 1")
    if micro_batch_size is not None and micro_batch_size < 1:
        problems.append(f"model.micro_batch_size must be >= 1 or null, got {micro_batch_size}")
    if kl_coef < 0:
        problems.append(f"model.kl_coef must be >= 0, got {kl_coef}")
    if problems:
        raise ConfigError("; ".join(problems))


def check_critic_settings(critic: str, value_coef: float, value_clip: float | None, gamma: float,
                          gae_lambda: float, critic_quantization: str | None, has_critic_source: bool) -> None:
    """Reject critic (PPO) settings that cannot work or would be silently ignored, naming the key."""
    problems = []
    if has_critic_source and critic != "separate":
        problems.append(f"model.critic_source is only used with model.critic: separate (got critic: {critic}); "
                        "remove it or set critic: separate")
    if critic != "none" and value_coef <= 0:
        problems.append(f"model.value_coef must be > 0 with a critic (it would never train, and the advantages "
                        f"would stay those of V = 0), got {value_coef}")
    if critic == "separate" and critic_quantization is not None:
        problems.append(f"model.critic: separate trains the critic's own weights, which a {critic_quantization} model "
                        "cannot; set model.critic_source to an unquantized model or use critic: shared")
    if value_clip is not None and value_clip <= 0:
        problems.append(f"model.value_clip must be > 0 or null (unclipped), got {value_clip}")
    if not 0 <= gamma <= 1 or not 0 <= gae_lambda <= 1:
        problems.append(f"model.gamma and model.gae_lambda must be in [0, 1], got {gamma} and {gae_lambda}")
    if problems:
        raise ConfigError("; ".join(problems))
