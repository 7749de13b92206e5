"""The LightningModule: policy (+ frozen reference, + value-head slot), rollout, update, logging."""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import Tensor

from callbacks import estimators
from datamodules.datamodule import PaddingBatch
from datamodules.types import Groups, PromptRecord, Samples, Verdict
from modules.errors import ConfigError as ConfigError  # re-exported: modules.module.ConfigError
from modules.groups import to_groups
from modules.hparams import (
    CriticSettings,
    EvalSettings,
    GroupSettings,
    KLSettings,
    MemorySettings,
    UpdateSettings,
    check_together,
    plain,
)
from modules.logprobs import completion_hidden_states, head_logprobs, is_fsdp, token_logprobs
from modules.losses import (
    aggregate,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    kl_penalty,
    terminal_rewards,
    truncated_importance_weights,
    whiten,
)
from modules.metrics import EvalMetrics
from modules.objective import Objective, single_objective
from modules.policy import PolicySource, apply_lora, enable_gradient_checkpointing
from modules.reference import make_reference, reference_model, resolve_reference
from modules.rollout import RolloutEngine, SamplingParams, TorchRollout
from modules.sharding import check_optimizer, shard_models
from modules.value_head import build_critic, last_token_values


@dataclass
class LastRollout:
    """Prompts, completions and verdicts of one rollout (sample j of prompt b at b * G + j): the latest training
    step's (`InferlModule.last_rollout`, with the objective's weights [B, G]) or a validation / test batch's (what
    `validation_step` returns, with generated token counts and EOS flags per sample)."""

    records: list[PromptRecord]
    texts: list[str]
    verdicts: list[Verdict]
    group_size: int
    weights: Tensor | None = None
    lengths: list[int] | None = None
    finished: list[bool] | None = None


@dataclass
class UpdateTargets:
    """What one step's update fits, per sample: advantages [N] or [N, L]; value targets, pre-update log-probs and
    values, reference log-probs [N, L] (each None when not in use)."""

    advantages: Tensor
    returns: Tensor | None
    old_logprobs: Tensor | None
    old_values: Tensor | None
    ref_logprobs: Tensor | None

    @staticmethod
    def rows(values: Tensor, rows: Tensor, width: int) -> Tensor:
        """`values` of a micro-batch: its rows, trimmed to its width when per token."""
        return values[rows] if values.dim() == 1 else values[rows, :width]


def timed(name: str) -> Callable:
    """Record the wall time of each call of the decorated method in `self.timings[name]`."""
    def wrap(method: Callable) -> Callable:
        @functools.wraps(method)
        def run(self, *args, **kwargs):
            start = time.perf_counter()
            result = method(self, *args, **kwargs)
            self.timings[name] = time.perf_counter() - start
            return result
        return run
    return wrap


def default_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-6)


class InferlModule(L.LightningModule):
    """RL fine-tuning of a causal LM toward an inference-time objective.

    One training step: sample `group.size` completions per prompt (the rollout engine), verify them, turn the rewards
    into per-sample weights with the objective callback (exactly one in `trainer.callbacks`), and update the policy
    with a clipped policy-gradient loss over `update.ppo_epochs` x `update.minibatches`. With a critic (PPO), the
    weights are terminal rewards and the advantages come from GAE over tokens with a learned value function.

    Args:
        policy: where the policy model and tokenizer come from (`modules.PretrainedPolicy`, `modules.TinyPolicy`).
        optimizer: the optimizer, e.g. `{class_path: torch.optim.AdamW, init_args: {lr: 1e-6}}`.
        rollout: the rollout engine that samples completions in training, validation, test and predict (None =
            `modules.rollout.TorchRollout`, the torch sampler on the live policy).
        group: training rollouts: G samples per prompt, their sampling settings, the seed.
        update: the clipped policy-gradient update: epochs, minibatches, micro-batches, clip ranges, gradient norm.
        kl: the KL-to-reference term: its weight, estimator and reference model.
        critic: a learned value function (PPO) and GAE.
        evaluation: validation, test and predict: samples per prompt, sampling, the ks of pass@k / maj@k / bon@k.
        memory: LoRA, gradient checkpointing, log-prob chunking.
    """

    def __init__(self, policy: PolicySource, optimizer: OptimizerCallable = default_optimizer,
                 rollout: RolloutEngine | None = None, group: GroupSettings = GroupSettings(),
                 update: UpdateSettings = UpdateSettings(), kl: KLSettings = KLSettings(),
                 critic: CriticSettings = CriticSettings(), evaluation: EvalSettings = EvalSettings(),
                 memory: MemorySettings = MemorySettings()) -> None:
        super().__init__()
        check_together(policy, group, kl, critic, evaluation, memory)
        self.group, self.update, self.kl, self.critic_settings, self.memory = group, update, kl, critic, memory
        self.evaluation = evaluation if evaluation.sampling is not None else replace(evaluation,
                                                                                     sampling=group.sampling)
        # checkpoints load with weights_only=True: hyperparameters as plain types; the components (policy, optimizer,
        # engine) come from the config on resume
        self.save_hyperparameters(ignore=["policy", "optimizer", "rollout"])
        self.hparams.update(group=plain(group), update=plain(update), kl=plain(kl), critic=plain(critic),
                            evaluation=plain(self.evaluation), memory=plain(memory))
        self.automatic_optimization = False
        self.policy_source = policy
        self.tokenizer = policy.load_tokenizer()
        self.policy = policy.load_model().train()  # from_pretrained returns eval mode; rollouts switch modes themselves
        if memory.gradient_checkpointing:
            enable_gradient_checkpointing(self.policy)  # non-reentrant, recomputes each decoder layer in backward
        if memory.lora is not None:
            self.policy = apply_lora(self.policy, memory.lora)
        self.reference_kind = resolve_reference(kl.reference, kl.coef, memory.lora is not None)
        self.reference = make_reference(self.policy, self.reference_kind)  # a frozen model, AdapterReference or None
        self.critic, self.value_head = build_critic(critic.kind, critic.model, policy, self.policy, self.tokenizer)
        self.make_optimizer = optimizer
        self.objective: Objective | None = None
        self.generator: torch.Generator | None = None
        self.timings: dict[str, float] = {}
        # validation and test metrics (states are not checkpointed); one solve-rate bin per solved count up to n = 32
        n = evaluation.samples
        self.val_metrics = EvalMetrics(evaluation.curve_ks, evaluation.pass_k, histogram_bins=n + 1 if n <= 32 else 32)
        self._eval_skip: set[str] = set()  # prompt ids already evaluated this epoch (see restore_eval)
        self.eval_results: dict | None = None  # the latest validation / test: metrics and solve-rate histogram
        self.last_rollout: LastRollout | None = None  # read by callbacks such as callbacks.SampleTable
        self.background: ThreadPoolExecutor | None = None  # verification thread, made in setup()
        self.engine = rollout or TorchRollout()
        self.engine_ready = False  # set up for this stage (start_engine)
        self.policy_changed = False  # the policy's weights changed since the engine last saw them

    # ----------------------------------------------------------------------------------------- setup
    def setup(self, stage: str) -> None:
        device = self.trainer.strategy.root_device
        self.generator = torch.Generator(device=device).manual_seed(self.group.seed + self.global_rank)
        # one long-lived thread runs verification during training, overlapping it with the reference pass
        self.background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inferl-verify")

    def teardown(self, stage: str) -> None:
        if getattr(self, "background", None) is not None:
            self.background.shutdown(wait=True)
            self.background = None
        if self.engine_ready:
            self.engine.teardown()
            self.engine_ready = False

    def start_engine(self) -> None:
        """Set the rollout engine up for this stage, once: the policy is on its device, sharded and restored from
        the checkpoint by now (fit, validate, test and predict start hooks call this)."""
        if not self.engine_ready:
            self.engine.setup(self)
            self.engine_ready, self.policy_changed = True, False

    def on_fit_start(self) -> None:
        self.objective = single_objective(self.trainer.callbacks, self.group.size)
        self.start_engine()

    def on_train_start(self) -> None:
        self.policy_changed = True  # a callback's on_train_start (a supervised warm start) may have trained it

    def on_predict_start(self) -> None:
        self.start_engine()

    def configure_model(self) -> None:
        """Under ModelParallelStrategy, shard the policy, reference, critic and value head with FSDP2
        (modules.sharding); nothing under DDP or on one device. Idempotent."""
        shard_models(self)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        optimizer = self.make_optimizer([p for p in self.parameters() if p.requires_grad])  # policy, value head, critic
        if isinstance(self.trainer.strategy, ModelParallelStrategy):
            check_optimizer(optimizer)  # 8-bit (bitsandbytes) optimizers cannot step DTensors
        return optimizer

    def encode_prompt(self, record: PromptRecord) -> list[int]:
        """Token ids of a record's prompt (chat messages rendered with the tokenizer's chat template)."""
        if record.messages is not None:
            text = self.tokenizer.apply_chat_template(record.messages, tokenize=False, add_generation_prompt=True)
            return self.tokenizer(text, add_special_tokens=False).input_ids
        return self.tokenizer(record.prompt).input_ids

    def sequence_limits(self) -> tuple[int | None, int]:
        """(the policy's positions or None, the longest completion): the data module leaves out prompts that do not
        fit."""
        return (getattr(self.policy.config, "max_position_embeddings", None),
                max(self.group.sampling.max_new_tokens, self.evaluation.sampling.max_new_tokens))

    def reset_reference(self) -> None:
        """Make the reference model the current policy (e.g. after a supervised warm start): a copy reloads the
        policy's weights, a quantized copy is quantized again from them, and with LoRA the adapters are folded into
        the base weights and restarted at zero (modules.reference.make_reference). Call it before RL updates start."""
        if self.reference is not None:
            self.reference = make_reference(self.policy, self.reference_kind, previous=self.reference)

    # ----------------------------------------------------------------------------------------- training
    def training_step(self, batch: list[PromptRecord], batch_idx: int) -> None:
        samples, texts = self.rollout(batch, self.group.size, self.group.sampling)
        verifying = self.background.submit(self.verify, batch, texts, samples.group_size, stage="train")
        ref_logprobs = self.reference_logprobs(samples)  # on the accelerator while the verifiers run on CPU
        old_logprobs, old_values = self.old_outputs(samples)
        final_values = self.final_values(old_values, samples)
        verdicts = verifying.result()
        groups = to_groups(verdicts, samples.completion_lengths, samples.group_size, final_values)
        weights = self.weigh(groups)
        advantages, returns = self.advantages(weights.flatten(), old_values, samples.completion_mask)
        stats = self.optimize(samples, advantages, returns, old_logprobs, old_values, ref_logprobs)
        self.log_step(batch, samples, texts, verdicts, groups, weights, stats)

    @timed("time/rollout_s")
    @torch.no_grad()
    def rollout(self, batch: Sequence[PromptRecord], group_size: int, params: SamplingParams,
                generator: torch.Generator | None = None) -> tuple[Samples, list[str]]:
        """G samples per prompt from the rollout engine (on the policy's current weights), and their decoded texts."""
        if self.policy_changed:  # every rank gets here at the same point: the engine may gather sharded weights
            self.engine.sync_weights(self)
            self.policy_changed = False
        samples = self.engine.generate([self.encode_prompt(r) for r in batch], group_size, params,
                                       generator or self.generator)
        texts = self.tokenizer.batch_decode(samples.completion_ids.masked_fill(samples.completion_mask == 0,
                                                                               self.tokenizer.pad_token_id),
                                            skip_special_tokens=True)
        return samples, texts

    @timed("time/verify_s")
    def verify(self, batch: Sequence[PromptRecord], texts: list[str], group_size: int, stage: str) -> list[Verdict]:
        records = [record for record in batch for _ in range(group_size)]
        return self.trainer.datamodule.verify(records, texts, stage=stage)

    def weigh(self, groups: Groups) -> Tensor:
        return self.objective.weights(groups, self.global_step).to(self.device, torch.float32)

    @torch.no_grad()
    def reference_logprobs(self, samples: Samples) -> Tensor | None:
        if self.reference is None:
            return None
        with reference_model(self.reference) as model:  # the frozen copy, or the policy with adapters disabled
            return self.batched_logprobs(model, samples)

    def batched_logprobs(self, model: torch.nn.Module, samples: Samples) -> Tensor:
        """Token log-probs [N, L] of the samples under `model`, computed micro-batch by micro-batch, no grad."""
        logprobs = torch.zeros_like(samples.sampling_logprobs)
        for rows in self.micro_batches(torch.arange(samples.completion_ids.shape[0]), samples):
            part = token_logprobs(model, *samples_rows(samples, rows), chunk_tokens=self.memory.logprob_chunk_tokens)[0]
            logprobs[rows, : part.shape[1]] = part  # each micro-batch is trimmed to its own longest completion
        return logprobs

    def micro_batches(self, rows: Tensor, samples: Samples) -> tuple[Tensor, ...]:
        """`rows` split into micro-batches of `micro_batch_size`, sorted by completion length so that each one
        trims the most padding (gradients accumulate over the minibatch, so the grouping does not change them)."""
        size = self.update.micro_batch_size
        if size is None or size >= len(rows):
            return (rows,)
        return rows[torch.argsort(samples.completion_lengths[rows].cpu(), stable=True)].split(size)

    @torch.no_grad()
    def old_outputs(self, samples: Samples) -> tuple[Tensor | None, Tensor | None]:
        """The policy's token log-probs [N, L] before the update (None when a single on-policy update makes them
        the current ones) and the critic's values [N, L] (None without a critic), from one pass per micro-batch."""
        need_logprobs = self.update.needs_old_logprobs
        if self.value_head is None:
            return (self.batched_logprobs(self.policy, samples) if need_logprobs else None), None
        logprobs = torch.zeros_like(samples.sampling_logprobs) if need_logprobs else None
        values = torch.zeros_like(samples.sampling_logprobs)
        for rows in self.micro_batches(torch.arange(samples.completion_ids.shape[0]), samples):
            inputs = samples_rows(samples, rows)
            width = inputs[3].shape[1]
            hidden = completion_hidden_states(self.policy, *inputs) if need_logprobs or self.critic is None else None
            if need_logprobs:
                logprobs[rows, :width] = head_logprobs(self.policy, hidden, inputs[2], inputs[3],
                                                       self.memory.logprob_chunk_tokens)[0]
            values[rows, :width] = self.critic_values(inputs, hidden)
        return logprobs, values

    def critic_values(self, inputs: tuple[Tensor, Tensor, Tensor, Tensor], policy_hidden: Tensor | None) -> Tensor:
        """V(s_t) [n, L] of micro-batch `inputs` (samples_rows' four tensors): the value head on the policy's hidden
        states (shared trunk) or on the separate critic's."""
        hidden = policy_hidden if self.critic is None else completion_hidden_states(self.critic, *inputs)
        return self.value_head(hidden) * inputs[3]

    def final_values(self, values: Tensor | None, samples: Samples) -> Tensor | None:
        """The critic's value at each sample's last token [N] (the learned verifier score of BestOfN(score="value"))."""
        return None if values is None else last_token_values(values, samples.completion_lengths)

    def advantages(self, weights: Tensor, values: Tensor | None, mask: Tensor) -> tuple[Tensor, Tensor | None]:
        """Advantages ([N] sequence weights, or [N, L] per token) and value targets [N, L] (None without a critic).

        Without a critic the objective's weights [N] are the advantages; with one they are terminal rewards for
        GAE over the completion tokens."""
        if values is None:
            returns, advantages = None, weights
        else:
            advantages, returns = gae(terminal_rewards(weights, mask), values, mask, self.critic_settings.gamma,
                                      self.critic_settings.gae_lambda)
        if self.update.whiten_advantages:
            advantages = whiten(advantages if advantages.dim() == 2 else advantages[:, None] * mask, mask)
        return advantages, returns

    @timed("time/update_s")
    def optimize(self, samples: Samples, advantages: Tensor, returns: Tensor | None, old_logprobs: Tensor | None,
               old_values: Tensor | None, ref_logprobs: Tensor | None) -> dict[str, float]:
        """Clipped policy-gradient (and value) updates: ppo_epochs x minibatches optimizer steps on this step's
        samples. advantages [N] or [N, L]; the others [N, L] or None (see old_outputs, advantages)."""
        hp = self.update
        targets = UpdateTargets(advantages, returns, old_logprobs, old_values, ref_logprobs)
        optimizer = self.optimizers()
        totals = dict.fromkeys(["loss", "entropy", "clip_frac", "kl", "value_loss", "value_clip_frac", "tokens"], 0.0)
        if self.group.sampling.is_plain:  # engine log-probs are the policy's: measure (and correct) the mismatch
            totals.update(dict.fromkeys(["logprob_mismatch", "is_weight_mean", "is_clip_frac", "is_ratio_max"], 0.0))
        n = samples.completion_ids.shape[0]
        order_generator = torch.Generator().manual_seed(self.group.seed + self.global_step)
        for epoch in range(hp.ppo_epochs):
            order = torch.randperm(n, generator=order_generator) if hp.minibatches > 1 else torch.arange(n)
            minibatches = order.tensor_split(hp.minibatches)
            for index, minibatch in enumerate(minibatches):
                optimizer.zero_grad()
                tokens = float(samples.completion_mask[minibatch].sum())
                for rows in self.micro_batches(minibatch, samples):
                    self.micro_step(samples, rows, targets, tokens, len(minibatch), totals)
                if hp.max_grad_norm is not None:
                    self.clip_gradients(optimizer, gradient_clip_val=hp.max_grad_norm, gradient_clip_algorithm="norm")
                last = epoch == hp.ppo_epochs - 1 and index == len(minibatches) - 1
                # Lightning counts a global step per LightningOptimizer.step; inner updates use the raw optimizer
                # so that one trainer step is one RL step (max_steps, val_check_interval and checkpoints count those)
                optimizer.step() if last else optimizer.optimizer.step()
        self.policy_changed = True  # the rollout engine syncs its weights before the next rollout
        tokens = max(totals.pop("tokens"), 1.0)
        loss = totals.pop("loss") / (hp.ppo_epochs * hp.minibatches)  # the mean minibatch loss
        ratio_max = totals.pop("is_ratio_max", None)
        extra = {} if ratio_max is None else {"is_ratio_max": ratio_max}
        return {"loss": loss, **extra, **{name: value / tokens for name, value in totals.items()}}

    def micro_step(self, samples: Samples, rows: Tensor, targets: UpdateTargets, minibatch_tokens: float,
                   minibatch_size: int, totals: dict[str, float]) -> None:
        """Forward, loss and backward on `rows` of the samples; adds token-summed statistics to `totals`."""
        hp, critic = self.update, self.critic_settings
        inputs = samples_rows(samples, rows)
        mask = inputs[3]
        width = mask.shape[1]
        hidden = completion_hidden_states(self.policy, *inputs)
        logprobs, entropy = head_logprobs(self.policy, hidden, inputs[2], mask, self.memory.logprob_chunk_tokens)
        old = logprobs.detach() if targets.old_logprobs is None else targets.old_logprobs[rows, :width]
        advantages = targets.rows(targets.advantages, rows, width)
        per_token, clipped = clipped_policy_loss(logprobs, old, advantages, hp.clip_low, hp.clip_high)
        if "logprob_mismatch" in totals:
            per_token = self.engine_correction(per_token, old, samples.sampling_logprobs[rows, :width], mask, totals)
        loss = aggregate(per_token, mask, hp.loss_aggregation, minibatch_tokens, minibatch_size)
        if targets.ref_logprobs is not None:
            kl = kl_penalty(logprobs, targets.ref_logprobs[rows, :width], self.kl.estimator)
            loss = loss + self.kl.coef * aggregate(kl, mask, hp.loss_aggregation, minibatch_tokens, minibatch_size)
            totals["kl"] += float((kl.detach() * mask).sum())
        if targets.returns is not None:
            values = self.critic_values(inputs, hidden)
            old_values = targets.rows(targets.old_values, rows, width)
            returns = targets.rows(targets.returns, rows, width)
            value_loss, value_clipped = clipped_value_loss(values, old_values, returns, critic.value_clip)
            loss = loss + critic.value_coef * aggregate(value_loss, mask, hp.loss_aggregation, minibatch_tokens,
                                                        minibatch_size)
            totals["value_loss"] += float((value_loss.detach() * mask).sum())
            totals["value_clip_frac"] += float((value_clipped * mask).sum())
        self.manual_backward(loss)
        count = float(mask.sum())
        totals["loss"] += float(loss.detach())  # this micro-batch's share of its minibatch's loss
        totals["entropy"] += float((entropy * mask).sum())
        totals["clip_frac"] += float((clipped * mask).sum())
        totals["tokens"] += count

    def engine_correction(self, per_token: Tensor, old: Tensor, engine: Tensor, mask: Tensor,
                          totals: dict[str, float]) -> Tensor:
        """Per-token losses [n, L] weighted by truncated importance ratios min(pi_trainer / pi_engine, C) when the
        rollout engine has a cap C (vLLM: its samples come from slightly other probabilities than the trainer's;
        Yao et al. 2025), else unchanged. `old`: the trainer's pre-update log-probs, `engine`: the sampling ones.
        Adds the mismatch sum |old - engine| and the weights' statistics to `totals`."""
        cap = self.engine.importance_cap
        ratio = truncated_importance_weights(old, engine, mask, float("inf"))
        totals["logprob_mismatch"] += float(((old - engine).abs() * mask).sum())
        totals["is_ratio_max"] = max(totals["is_ratio_max"], float(ratio.max()) if ratio.numel() else 0.0)
        if cap is None:
            totals["is_weight_mean"] += float(mask.sum())
            return per_token
        totals["is_weight_mean"] += float(ratio.clamp(max=cap).sum())
        totals["is_clip_frac"] += float(((ratio > cap) * mask).sum())
        return per_token * truncated_importance_weights(old, engine, mask, cap)

    def any_rank_samples(self, flag: bool) -> bool:
        """Whether this or another rank samples with the policy (`flag`: this rank does), to keep sharded generation
        in step: under FSDP2 every rank must join each forward of the sharded policy, so this is an all-reduce that
        every rank calls (once per decode step, and once per evaluation batch); unsharded nothing needs the ranks in
        step (and a collective would hang a rank that has more batches than another): `flag` itself."""
        if self._trainer is None or self.trainer.world_size == 1 or not is_fsdp(self.policy):
            return flag
        return bool(self.trainer.strategy.reduce(torch.tensor(float(flag), device=self.device), reduce_op="max") > 0)

    def eos_token_ids(self) -> list[int]:
        ids = self.policy.generation_config.eos_token_id if self.policy.generation_config else None
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        return sorted(set(ids) | {self.tokenizer.eos_token_id} - {None})

    # ----------------------------------------------------------------------------------------- logging
    def log_step(self, batch: Sequence[PromptRecord], samples: Samples, texts: list[str], verdicts: list[Verdict],
                 groups: Groups, weights: Tensor, stats: dict[str, float]) -> None:
        rewards, k = groups.rewards, self.evaluation.pass_k
        lengths = samples.completion_lengths.float()
        metrics = {
            "train/reward_mean": rewards.mean(),
            "train/pass@1": estimators.pass_at_k(rewards, 1).mean(),
            "train/pass@k": estimators.pass_at_k(rewards, k).mean(),
            "train/pass^k": estimators.pass_pow_k(rewards, k).mean(),
            "train/adv_zero_frac": (weights == 0).all(dim=1).float().mean(),
            "train/entropy": stats["entropy"],
            "train/clip_frac": stats["clip_frac"],
            "train/loss": stats["loss"],
            "train/response_len": lengths.mean(),
            "train/truncated_frac": (~samples.finished).float().mean(),
            **self.trainer.datamodule.verify_error_metrics("train"),  # train/verify_errors[/<kind>] (verify_guard.py)
            "perf/gen_tokens_per_s": lengths.sum() / max(self.timings["time/rollout_s"], 1e-9),
            **self.timings,
            **self.objective.metrics(),
        }
        if (groups.answer_ids >= 0).any():
            metrics["train/maj@k"] = estimators.majority_at_k(groups.answer_ids, rewards, k).mean()
        for name in ("logprob_mismatch", "is_weight_mean", "is_clip_frac", "is_ratio_max"):  # engine vs trainer
            if name in stats:
                metrics[f"train/{name}"] = stats[name]
        if self.reference is not None:
            metrics["train/kl"] = stats["kl"]
        if self.value_head is not None:
            metrics["train/value_loss"] = stats["value_loss"]
            metrics["train/value_clip_frac"] = stats["value_clip_frac"]
            metrics["train/value_last"] = groups.values.mean()  # the critic at the last token
        sync = self.trainer.world_size > 1
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=len(batch), sync_dist=sync)
        progress = {"reward": metrics["train/reward_mean"], f"pass@{k}": metrics["train/pass@k"],
                    "tok/s": metrics["perf/gen_tokens_per_s"]}
        self.log_dict(progress, prog_bar=True, logger=False, batch_size=len(batch))
        self.last_rollout = LastRollout(list(batch), texts, verdicts, samples.group_size, weights=weights.detach())

    # ----------------------------------------------------------------------------------------- validation
    def on_validation_start(self) -> None:
        self.start_engine()  # validate / test outside fit (in fit, on_fit_start did)
        # a fresh epoch; a callback may then add prompts evaluated earlier with restore_eval (on_*_epoch_start)
        self.val_metrics.reset()
        self._eval_skip = set()

    def restore_eval(self, ids: Sequence[str], verdicts: Sequence[Verdict], lengths: Sequence[int],
                     finished: Sequence[bool]) -> None:
        """Count prompts evaluated before (e.g. read back from an interrupted report) in this epoch's metrics and
        skip them in the rollout. ids: B prompt ids; verdicts, lengths (generated tokens), finished (EOS): B * n,
        sample j of prompt b at b * n + j, n = evaluation.samples. Call it from a callback's on_validation_epoch_start
        (or on_test_epoch_start)."""
        n = self.evaluation.samples
        if not len(verdicts) == len(lengths) == len(finished) == len(ids) * n:
            raise ValueError(f"restore_eval: {len(ids)} prompts need {len(ids) * n} samples "
                             f"(model.evaluation.samples = {n}), got {len(verdicts)} verdicts, {len(lengths)} lengths, "
                             f"{len(finished)} flags")
        if not ids:
            return
        groups = to_groups(verdicts, torch.tensor(lengths, device=self.device), n)
        self.val_metrics.update(groups, torch.tensor(finished, device=self.device))
        self._eval_skip |= set(ids)

    def validation_step(self, batch: list[PromptRecord], batch_idx: int) -> LastRollout | None:
        """`evaluation.samples` completions per prompt, verified and added to the metrics; returns them (for report
        callbacks), or None when every prompt of the batch was restored by restore_eval."""
        n = self.evaluation.samples
        padding = isinstance(batch, PaddingBatch)  # a batch that only keeps this rank in step with the others
        todo = [] if padding else [record for record in batch if record.id not in self._eval_skip]
        if not todo:
            # sharded generation needs every rank in each decode step: roll out (and drop) if another rank samples
            if self.trainer.world_size > 1 and self.any_rank_samples(False):
                self.rollout(batch, n, self.evaluation.sampling, generator=self.eval_generator(batch_idx))
            return None
        if self.trainer.world_size > 1:
            self.any_rank_samples(True)
        samples, texts = self.rollout(todo, n, self.evaluation.sampling, generator=self.eval_generator(batch_idx))
        verdicts = self.verify(todo, texts, n, stage="val")
        groups = to_groups(verdicts, samples.completion_lengths, n)
        self.val_metrics.update(groups, samples.finished)
        return LastRollout(todo, texts, verdicts, n, lengths=samples.completion_lengths.tolist(),
                           finished=samples.finished.tolist())

    def eval_generator(self, batch_idx: int) -> torch.Generator:
        """The sampling RNG of validation batch `batch_idx`: the same prompts get the same samples at every
        validation (curves compare like with like), and a resumed evaluation redoes a batch exactly."""
        seed = (10**6 + self.group.seed) * 2**32 + self.global_rank * 2**20 + batch_idx
        return torch.Generator(device=self.device).manual_seed(seed)

    def on_validation_epoch_end(self) -> None:
        with warnings.catch_warnings():  # a rank without batches still joins the reduction
            warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
            values = self.val_metrics.compute()
            histogram = self.val_metrics.histogram()
        self.val_metrics.reset()
        self._eval_skip = set()
        if "pass@1" not in values:
            return
        stage = "test" if self.trainer.testing else "val"
        metrics = {f"{stage}/{name}": value for name, value in values.items()}
        errors = self.trainer.datamodule.verify_error_metrics("val")  # val/verify_errors[/<kind>], reset each epoch
        metrics.update({f"{stage}/{name.split('/', 1)[1]}": value for name, value in errors.items()})
        self.eval_results = {"stage": stage, "step": self.global_step, "n": self.evaluation.samples,
                             "ks": list(self.val_metrics.ks), "metrics": metrics, "solve_rate_histogram": histogram}
        if self.trainer.sanity_checking:  # Lightning drops self.log here; this is the step-0 point of the curves
            if self.logger is not None and self.global_rank == 0:
                self.logger.log_metrics(metrics, step=self.global_step)
            return
        # already reduced over processes (equal everywhere): sync_dist only averages equal values
        self.log_dict(metrics, on_epoch=True, batch_size=1, sync_dist=self.trainer.world_size > 1)

    test_step = validation_step
    on_test_start = on_validation_start
    on_test_epoch_end = on_validation_epoch_end

    def predict_step(self, batch: list[PromptRecord], batch_idx: int) -> list[dict]:
        """`evaluation.samples` completions per prompt with their verdicts:
        [{id, completions, rewards, answers, scores, tokens, finished}]."""
        n = self.evaluation.samples
        if isinstance(batch, PaddingBatch) and not is_fsdp(self.policy):
            return []  # a batch only there to keep sharded generation in step; unsharded, nothing to keep in step
        samples, texts = self.rollout(batch, n, self.evaluation.sampling, generator=self.eval_generator(batch_idx))
        if isinstance(batch, PaddingBatch):  # rolled out only to keep this rank in step with the others
            return []
        verdicts = self.verify(batch, texts, n, stage="val")
        lengths, finished = samples.completion_lengths.tolist(), samples.finished.tolist()
        rows = []
        for b, record in enumerate(batch):
            part = slice(b * n, (b + 1) * n)
            rows.append({"id": record.id, "completions": texts[part], "rewards": [v.reward for v in verdicts[part]],
                         "answers": [v.answer for v in verdicts[part]], "scores": [v.score for v in verdicts[part]],
                         "tokens": lengths[part], "finished": finished[part]})
        return rows

    # ----------------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        state = self.generator.get_state().to(self.device)
        states = self.all_gather(state) if self.trainer.world_size > 1 else state[None]
        checkpoint["sampling_generator_states"] = states.cpu()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        states = checkpoint.get("sampling_generator_states")
        if states is not None and self.generator is not None and self.global_rank < len(states):
            # a copy: set_state reads a row view of the [world, S] tensor from its storage's start (rank > 0 breaks)
            self.generator.set_state(states[self.global_rank].cpu().clone())


def samples_rows(samples: Samples, rows: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Prompt ids/mask and completion ids/mask of `rows`, with all-padding columns trimmed."""
    prompt_mask, completion_mask = samples.prompt_mask[rows], samples.completion_mask[rows]
    first = int((prompt_mask.sum(0) > 0).nonzero()[0]) if prompt_mask.any() else 0
    width = max(int(completion_mask.sum(-1).max()), 1)
    return (samples.prompt_ids[rows, first:], prompt_mask[:, first:], samples.completion_ids[rows, :width],
            completion_mask[:, :width])
