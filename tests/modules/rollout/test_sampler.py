"""The rollout sampler: greedy decoding equals transformers' generate, sampling log-probs equal a fresh forward,
finished rows stop, and the same generator state gives the same samples."""

from __future__ import annotations

import torch

from modules import SamplingParams, TinyPolicy
from modules.logprobs import token_logprobs
from modules.rollout.sampler import sample

PROMPTS = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]


def tiny():
    policy = TinyPolicy(hidden_size=32, num_layers=2, intermediate_size=64, seed=1)
    return policy.load_model().eval(), policy.load_tokenizer()


def test_greedy_equals_generate():
    model, tokenizer = tiny()
    samples = sample(model, PROMPTS, 2, SamplingParams(max_new_tokens=8, temperature=0),
                     eos_ids=[tokenizer.eos_token_id], pad_id=tokenizer.pad_token_id)
    for b, prompt in enumerate(PROMPTS):
        generated = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False,
                                   eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        expected = generated[0, len(prompt):]
        for j in range(2):
            row = b * 2 + j
            got = samples.completion_ids[row, : samples.completion_lengths[row]]
            assert got.tolist() == expected[: len(got)].tolist()
            assert len(got) == len(expected) or expected[len(got)] == tokenizer.pad_token_id


def test_sampling_logprobs_equal_a_fresh_forward():
    model, tokenizer = tiny()
    samples = sample(model, PROMPTS, 4, SamplingParams(max_new_tokens=10), eos_ids=[tokenizer.eos_token_id],
                     pad_id=tokenizer.pad_token_id, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fresh, _ = token_logprobs(model, samples.prompt_ids, samples.prompt_mask, samples.completion_ids,
                                  samples.completion_mask)
    assert torch.allclose(fresh, samples.sampling_logprobs * samples.completion_mask, atol=1e-5)


def test_eos_ends_a_row_and_seed_reproduces():
    model, tokenizer = tiny()
    params = SamplingParams(max_new_tokens=12)
    eos = list(range(3, 20))  # many tokens end a row, so some rows finish early
    first = sample(model, PROMPTS, 4, params, eos, tokenizer.pad_token_id, generator=torch.Generator().manual_seed(7))
    again = sample(model, PROMPTS, 4, params, eos, tokenizer.pad_token_id, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first.completion_ids, again.completion_ids)
    lengths = first.completion_lengths
    assert first.finished.any() and (lengths < 12).any()
    for row in range(len(lengths)):
        length = int(lengths[row])
        if first.finished[row]:
            assert int(first.completion_ids[row, length - 1]) in eos
        assert (first.completion_mask[row, length:] == 0).all()
        assert not any(int(t) in eos for t in first.completion_ids[row, : length - 1])
