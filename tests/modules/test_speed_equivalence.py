"""Speed paths give the results of the straightforward paths they replace.

- Rollout: prefilling each prompt once and repeating its KV cache G times (into preallocated buffers, with
  finished rows leaving the batch) gives the same samples, with the same generator state, as decoding every one
  of the B*G rows from scratch at each step without any cache (the reference loop below).
- Sampling by inversion (one uniform per row) draws from softmax(logits / T) restricted to the top-k / top-p set.
- Log-probs: the shared-prompt pass and the LM-head autograd function give the values and gradients of one full
  forward over prompt + completion with full-vocabulary float32 logits.
- Update: the on-policy step (ppo_epochs = 1, minibatches = 1) that takes no extra forward for the old log-probs
  leaves the same weights as recomputing them with a forward pass first; and the sampling log-probs it could
  reuse are those of that forward.
"""

from __future__ import annotations

import copy

import pytest
import torch
from fit_helpers import tiny_data
from test_logprobs import naive_logprobs

from modules import EvalSettings, GroupSettings, InferlModule, SamplingParams, TinyPolicy, UpdateSettings
from modules.logprobs import prompt_groups, token_logprobs
from modules.losses import aggregate, clipped_policy_loss
from modules.module import samples_rows
from modules.objective import Objective
from modules.padding import left_pad, right_pad
from modules.rollout.sampler import draw, filter_logits, sample

PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]


def tiny(seed: int = 1):
    """A 2-layer model whose weights are large enough (std 0.3, not 0.02) that its next-token distribution
    depends strongly on every earlier token and position: a wrong cache entry or position changes the samples."""
    policy = TinyPolicy(hidden_size=32, num_layers=2, intermediate_size=64, seed=seed)
    model = policy.load_model().eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model, policy.load_tokenizer()


@torch.no_grad()
def reference_sample(model, prompts, group_size, params, eos_ids, pad_id, generator):
    """The straightforward rollout: every one of the B*G rows is its own prompt, and each step runs the whole
    sequence (prompt + tokens so far) of every live row through the model, without a KV cache."""
    rows = [list(p) for p in prompts for _ in range(group_size)]
    generated: list[list[int]] = [[] for _ in rows]
    logprobs: list[list[float]] = [[] for _ in rows]
    finished = [False] * len(rows)
    live = list(range(len(rows)))
    for _ in range(params.max_new_tokens):
        if not live:
            break
        ids, mask = left_pad([rows[r] + generated[r] for r in live], pad_id)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]
        tokens, token_logprobs = draw(logits, params, generator)
        still = []
        for r, token, logprob in zip(live, tokens.tolist(), token_logprobs.tolist()):
            generated[r].append(token)
            logprobs[r].append(logprob)
            if token in eos_ids:
                finished[r] = True
            else:
                still.append(r)
        live = still
    return generated, logprobs, finished


@pytest.mark.parametrize("params", [SamplingParams(max_new_tokens=10),
                                    SamplingParams(max_new_tokens=8, temperature=0.7, top_k=6, top_p=0.9)],
                         ids=["plain", "filtered"])
def test_shared_prefill_gives_the_samples_of_decoding_every_row_from_scratch(params):
    model, tokenizer = tiny()
    eos = [5]  # ends about half the rows early, at different steps: rows leave the batch one by one
    group = 4
    got = sample(model, PROMPTS, group, params, eos, tokenizer.pad_token_id, generator=torch.Generator().manual_seed(3))
    generated, logprobs, finished = reference_sample(model, PROMPTS, group, params, eos, tokenizer.pad_token_id,
                                                     torch.Generator().manual_seed(3))
    assert got.finished.tolist() == finished
    assert any(finished) and not all(finished)
    lengths = got.completion_lengths.tolist()
    assert lengths == [len(g) for g in generated]
    for row, (tokens, values) in enumerate(zip(generated, logprobs)):
        assert got.completion_ids[row, :lengths[row]].tolist() == tokens
        assert torch.allclose(got.sampling_logprobs[row, :lengths[row]], torch.tensor(values), atol=1e-5)
    # the same through the production path with every row prefilled on its own (group size 1, prompts repeated)
    rows = [p for p in PROMPTS for _ in range(group)]
    each = sample(model, rows, 1, params, eos, tokenizer.pad_token_id, generator=torch.Generator().manual_seed(3))
    assert torch.equal(each.completion_ids, got.completion_ids)
    assert torch.allclose(each.sampling_logprobs, got.sampling_logprobs, atol=1e-5)


def test_draw_by_inversion_samples_the_filtered_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    n = 40000
    for params in (SamplingParams(), SamplingParams(temperature=0.5), SamplingParams(top_k=3),
                   SamplingParams(top_p=0.8, temperature=1.5)):
        expected = filter_logits(logits / params.temperature, params.top_k, params.top_p).softmax(-1)[0]
        tokens, logprobs = draw(logits.expand(n, -1), params, torch.Generator().manual_seed(0))
        frequencies = torch.bincount(tokens, minlength=logits.shape[1]).double() / n
        sigma = (expected.double() * (1 - expected.double()) / n).sqrt()
        assert ((frequencies - expected.double()).abs() <= 5 * sigma + 1e-12).all(), (params, frequencies, expected)
        assert (frequencies[expected == 0] == 0).all()
        assert torch.allclose(logprobs, expected.log()[tokens], atol=1e-6)




@pytest.mark.parametrize("chunk_tokens", [4096, 3], ids=["one-chunk", "several-chunks"])
@pytest.mark.parametrize("grouped", [True, False], ids=["groups-in-a-row", "groups-shuffled"])
def test_shared_prompt_logprobs_equal_the_full_forward(chunk_tokens, grouped):
    model, tokenizer = tiny(seed=4)
    model.train()
    distinct = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    # 3 rows per prompt, each group's rows next to each other (a rollout) or interleaved (a shuffled minibatch)
    prompts = [p for p in distinct for _ in range(3)] if grouped else [p for _ in range(3) for p in distinct]
    prompt_ids, prompt_mask = left_pad(prompts, tokenizer.pad_token_id)
    completions = [[14, 15, 2], [16], [17, 18, 19, 20], [14], [15, 16], [2], [17, 18], [19, 20, 14, 15], [16]]
    completion_ids, completion_mask = right_pad(completions, tokenizer.pad_token_id)
    inputs = (prompt_ids, prompt_mask, completion_ids, completion_mask)
    first, run = prompt_groups(prompt_ids, prompt_mask)  # the shared-prompt path runs: 3 prompt passes, not 9
    assert len(first) == 3 and torch.equal(prompt_ids[first][run], prompt_ids)

    expected = naive_logprobs(model, *inputs)
    (expected * torch.linspace(-1, 1, expected.numel()).view_as(expected)).sum().backward()
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    got, entropy = token_logprobs(model, *inputs, chunk_tokens=chunk_tokens)
    assert torch.allclose(got, expected, atol=1e-5)
    (got * torch.linspace(-1, 1, got.numel()).view_as(got)).sum().backward()
    for name, parameter in model.named_parameters():
        assert torch.allclose(parameter.grad, expected_grads[name], atol=1e-5), name
    with torch.no_grad():
        again, again_entropy = token_logprobs(model, *inputs, chunk_tokens=chunk_tokens)
    assert torch.allclose(again, got, atol=1e-6) and torch.allclose(again_entropy, entropy, atol=1e-6)
    assert (entropy[completion_mask == 0] == 0).all() and (entropy[completion_mask == 1] > 0).all()


class FixedWeights(Objective):
    """Seeded random weights [B, G], so that the update has a gradient whatever the rewards are."""

    def weights(self, groups, step):
        return torch.randn(groups.shape, generator=torch.Generator().manual_seed(step))


def test_on_policy_update_equals_recomputing_the_old_logprobs():
    import lightning as L

    module = InferlModule(policy=TinyPolicy(hidden_size=32, num_layers=2, intermediate_size=64, seed=0),
                          optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2),
                          group=GroupSettings(size=4, sampling=SamplingParams(max_new_tokens=6)),
                          update=UpdateSettings(ppo_epochs=1, minibatches=1, max_grad_norm=1.0),
                          evaluation=EvalSettings(samples=4, pass_k=2))
    reference = copy.deepcopy(module.policy)
    captured = {}
    optimize = module.optimize

    def capture(samples, advantages, *targets):
        captured.update(samples=samples, advantages=advantages.clone())
        return optimize(samples, advantages, *targets)

    module.optimize = capture
    trainer = L.Trainer(max_steps=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=[FixedWeights()])
    trainer.fit(module, datamodule=tiny_data())

    # the straightforward step: a forward pass for the old log-probs, then the clipped loss against them
    samples, advantages = captured["samples"], captured["advantages"]
    assert advantages.abs().sum() > 0
    rows = torch.arange(samples.completion_ids.shape[0])
    prompt_ids, prompt_mask, completion_ids, mask = samples_rows(samples, rows)
    optimizer = torch.optim.AdamW(reference.parameters(), lr=1e-2)
    reference.train()
    with torch.no_grad():
        old, _ = token_logprobs(reference, prompt_ids, prompt_mask, completion_ids, mask)
    # the sampling log-probs that the on-policy step could reuse are the forward's
    width = mask.shape[1]
    assert torch.allclose(samples.sampling_logprobs[:, :width] * mask, old, atol=1e-5)
    logprobs, _ = token_logprobs(reference, prompt_ids, prompt_mask, completion_ids, mask)
    per_token, _ = clipped_policy_loss(logprobs, old, advantages, 0.2, 0.2)
    loss = aggregate(per_token, mask, "token-mean", float(mask.sum()), len(rows))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
    optimizer.step()

    for (name, got), expected in zip(module.policy.state_dict().items(), reference.state_dict().values()):
        assert torch.allclose(got, expected, atol=1e-6, rtol=0), name
    changed = sum(not torch.equal(a, b) for a, b in zip(module.policy.state_dict().values(),
                                                          TinyPolicy(hidden_size=32, num_layers=2, intermediate_size=64,
                                                                     seed=0).load_model().state_dict().values()))
    assert changed > 0
