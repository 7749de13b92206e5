"""PPO with a value head: the critic-free step is its zero-critic special case, micro-batching does not change the
update, a separate critic trains only itself, and the critic's last-token value scores best-of-N."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from fit_helpers import tiny_data, tiny_module

from callbacks import BestOfN
from modules import ConfigError, CriticSettings, KLSettings, LoraParams, MemorySettings, TinyPolicy, UpdateSettings
from modules.objective import Objective


class FixedWeights(Objective):
    """Seeded random weights [B, G], so that every step has a gradient whatever the rewards are."""

    def weights(self, groups, step):
        self.seen_values = groups.values
        return torch.randn(groups.shape, generator=torch.Generator().manual_seed(step))


def fit(module, steps: int, objective: Objective | None = None) -> Objective:
    objective = objective or FixedWeights()
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=[objective])
    trainer.fit(module, datamodule=tiny_data())
    return objective


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module, atol: float = 1e-6) -> None:
    for (name, got), expected in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(got, expected, atol=atol, rtol=0), name


def test_zero_initialised_critic_gives_the_critic_free_first_step():
    # gamma = lambda = 1 and V = 0: GAE's advantage is the sequence weight at every token; the value loss cannot
    # reach the trunk through a zero head, and Adam steps each parameter on its own gradient
    plain = tiny_module(update=UpdateSettings(max_grad_norm=None))
    ppo = tiny_module(update=UpdateSettings(max_grad_norm=None),
                      critic=CriticSettings(kind="shared", gamma=1.0, gae_lambda=1.0))
    fit(plain, 1)
    fit(ppo, 1)
    assert_same_weights(ppo.policy, plain.policy)
    assert ppo.value_head.proj.weight.abs().sum() > 0  # the critic itself learned


def test_micro_batched_ppo_update_equals_the_minibatch_update():
    # plain SGD: Adam's first steps would amplify float rounding of near-zero gradients
    whole, micro = (tiny_module(optimizer=lambda params: torch.optim.SGD(params, lr=0.5),
                                update=UpdateSettings(ppo_epochs=2, minibatches=2, micro_batch_size=size,
                                                      whiten_advantages=True),
                                kl=KLSettings(coef=0.1), critic=CriticSettings(kind="shared"))
                    for size in (None, 3))
    fit(whole, 2)
    fit(micro, 2)
    assert_same_weights(micro.policy, whole.policy, atol=1e-5)
    assert_same_weights(micro.value_head, whole.value_head, atol=1e-5)


def test_separate_critic_trains_only_itself():
    plain = tiny_module(update=UpdateSettings(max_grad_norm=None))
    ppo = tiny_module(update=UpdateSettings(max_grad_norm=None),
                      critic=CriticSettings(kind="separate", gamma=1.0, gae_lambda=1.0))
    critic_before = {n: v.clone() for n, v in ppo.critic.state_dict().items()}
    fit(plain, 1)
    fit(ppo, 1)
    assert_same_weights(ppo.policy, plain.policy)  # the value loss has its own trunk
    changed = [n for n, v in ppo.critic.state_dict().items() if not torch.equal(v, critic_before[n])]
    assert any(n.startswith("model.layers") for n in changed)  # the critic's trunk learned
    assert "lm_head.weight" not in changed  # the critic's LM head is never used


def test_value_head_scores_best_of_n():
    module = tiny_module(critic=CriticSettings(kind="shared"))
    objective = fit(module, 2, BestOfN(k=2, score="value"))
    assert math.isfinite(objective.metrics()["objective/value"])
    assert module.last_rollout.weights.shape == (4, 4)

    recorder = FixedWeights()
    fit(tiny_module(critic=CriticSettings(kind="shared")), 1, recorder)
    assert recorder.seen_values is not None and recorder.seen_values.shape == (4, 4)
    with pytest.raises(ValueError, match="no value head"):
        fit(tiny_module(), 1, BestOfN(k=2, score="value"))


@pytest.mark.parametrize("settings, key", [
    ({"kind": "shared", "value_clip": 0.0}, "model.critic.value_clip"),
    ({"kind": "shared", "gamma": 1.5}, "model.critic.gamma"),
    ({"kind": "shared", "value_coef": 0.0}, "model.critic.value_coef"),
    ({"kind": "shared", "model": TinyPolicy()}, "model.critic.model"),
    ({"kind": "separate", "model": TinyPolicy(alphabet=None)}, "model.critic.model"),
])
def test_bad_critic_settings_name_the_key(settings, key):
    with pytest.raises(ConfigError, match=key):
        tiny_module(critic=CriticSettings(**settings))


def test_separate_critic_cannot_be_quantized():
    with pytest.raises(ConfigError, match=r"model\.critic\.model"):
        tiny_module(policy=TinyPolicy(hidden_size=32, num_layers=2, intermediate_size=64, quantization="4bit"),
                    critic=CriticSettings(kind="separate"), memory=MemorySettings(lora=LoraParams(rank=4)))


def test_logged_losses_do_not_depend_on_micro_batching():
    logged = []
    for size in (None, 3):
        module = tiny_module(optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
                             update=UpdateSettings(minibatches=2, micro_batch_size=size),
                             critic=CriticSettings(kind="shared"))
        trainer = L.Trainer(max_steps=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                            limit_val_batches=0, callbacks=[FixedWeights()])
        trainer.fit(module, datamodule=tiny_data())
        logged.append({name: float(trainer.callback_metrics[name]) for name in ("train/loss", "train/value_loss")})
    assert abs(logged[0]["train/loss"]) > 1e-3
    assert logged[1] == pytest.approx(logged[0], abs=1e-6)
