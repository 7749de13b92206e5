"""Chunked token log-probs equal the naive full-logits computation, values and gradients."""

from __future__ import annotations

import torch

from modules import TinyPolicy
from modules.logprobs import token_logprobs
from modules.padding import left_pad, right_pad


def naive_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask):
    ids = torch.cat([prompt_ids, completion_ids], 1)
    attention = torch.cat([prompt_mask, completion_mask], 1)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=attention, position_ids=positions).logits.float()
    width = prompt_ids.shape[1]
    logits = logits[:, width - 1: width - 1 + completion_ids.shape[1]]
    chosen = logits.log_softmax(-1).gather(-1, completion_ids[..., None]).squeeze(-1)
    return chosen * completion_mask


def batch():
    policy = TinyPolicy(hidden_size=32, num_layers=2, intermediate_size=64, seed=3)
    model, tokenizer = policy.load_model(), policy.load_tokenizer()
    prompt_ids, prompt_mask = left_pad([[5, 6, 7], [8, 9]], tokenizer.pad_token_id)
    completion_ids, completion_mask = right_pad([[10, 11, 2], [12]], tokenizer.pad_token_id)
    return model, (prompt_ids, prompt_mask, completion_ids, completion_mask)


def test_chunked_equals_naive_values_and_gradients():
    model, inputs = batch()
    expected = naive_logprobs(model, *inputs)
    expected.sum().backward()
    expected_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    got, entropy = token_logprobs(model, *inputs, chunk_tokens=1)  # one token per chunk
    assert torch.allclose(got, expected, atol=1e-6)
    got.sum().backward()
    for p, g in zip(model.parameters(), expected_grads):
        assert torch.allclose(p.grad, g, atol=1e-5)
    assert (entropy[inputs[3] == 0] == 0).all() and (entropy[inputs[3] == 1] > 0).all()


def test_padding_positions_are_zero_and_no_grad_path_matches():
    model, inputs = batch()
    with torch.no_grad():
        got, _ = token_logprobs(model, *inputs, chunk_tokens=2)
    assert (got[inputs[3] == 0] == 0).all()
    assert torch.allclose(got, naive_logprobs(model, *inputs).detach(), atol=1e-6)


def test_shared_prompt_gradients_are_bitwise_reproducible():
    # the shared-prompt pass gathers each prompt's KV cache out to its rows; that gather's backward must sum in a
    # fixed order (index_select), or two runs of the same seed drift apart (advanced indexing's does not, on CPU)
    policy = TinyPolicy(hidden_size=64, num_layers=2, intermediate_size=128, seed=4)
    model = policy.load_model()
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 20, (int(n),), generator=generator).tolist() for n in torch.randint(2, 9, (16,))]
    order = torch.randperm(16 * 8, generator=generator)
    prompt_ids, prompt_mask = left_pad([prompts[i // 8] for i in order.tolist()], 0)
    completion_ids, completion_mask = right_pad([[5 + i % 7] * (1 + i % 5) for i in range(16 * 8)], 0)
    grads = []
    for _ in range(8):
        model.zero_grad()
        logprobs, _ = token_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask)
        logprobs.sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert all(torch.equal(grads[0], g) for g in grads[1:])
