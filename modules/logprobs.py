"""Log-probabilities of chosen tokens without ever materialising float32 logits of shape [N, T, V].

The backbone runs over each distinct prompt once (rows of a group share their prompt: its keys/values are
computed once and repeated, gradients flowing back through the repeat) and then over the completions; the LM
head and log-softmax then run over the completion tokens in chunks of `chunk_tokens`. With several chunks each
runs under activation checkpointing, so the peak extra memory is one chunk's [chunk_tokens, V] logits in forward
and in backward; a single chunk is kept for backward instead of being recomputed (the same peak, one LM-head
pass less).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint


def _chunk_logprobs(hidden: Tensor, targets: Tensor, weight: Tensor, bias: Tensor | None,
                    softcap: float | None) -> tuple[Tensor, Tensor]:
    """hidden [M, H], targets [M] -> (log-prob of target [M], entropy [M]) in float32."""
    logits = torch.nn.functional.linear(hidden, weight, bias).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    normaliser = logits.logsumexp(-1)
    chosen = logits.gather(-1, targets[:, None]).squeeze(-1) - normaliser
    with torch.no_grad():
        probs = (logits - normaliser[:, None]).exp()
        entropy = normaliser - (probs * logits).sum(-1)
    return chosen, entropy


def backbone_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The decoder trunk (returns hidden states) and the LM head of a transformers causal LM."""
    head = model.get_output_embeddings()
    trunk = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
    if head is None or trunk is None:
        raise TypeError(f"{type(model).__name__} has no separable decoder and LM head; it is not a causal LM")
    return trunk, head


def prompt_groups(prompt_ids: Tensor, prompt_mask: Tensor) -> tuple[Tensor, Tensor] | None:
    """Runs of consecutive rows with the same prompt: (first row of each run [U], run index of each row [N]),
    or None when no two consecutive rows share a prompt."""
    if prompt_ids.shape[0] < 2:
        return None
    same = ((prompt_ids[1:] == prompt_ids[:-1]) & (prompt_mask[1:] == prompt_mask[:-1])).all(-1)
    if not bool(same.any()):
        return None
    starts = torch.cat([same.new_ones(1), ~same])
    return starts.nonzero().squeeze(-1), starts.long().cumsum(0) - 1


def _shares_prefix(model: torch.nn.Module) -> bool:
    """Whether the shared-prompt path can run: it needs a transformers model and its KV cache, which activation
    checkpointing (transformers' own, which drops the cache in training, or torch's wrapper, which would replay the
    cache update) does not allow."""
    if getattr(model, "config", None) is None:
        return False
    return not any(getattr(m, "gradient_checkpointing", False) is True or "CheckpointWrapper" in type(m).__name__
                   for m in model.modules())


def completion_hidden_states(model: torch.nn.Module, prompt_ids: Tensor, prompt_mask: Tensor,
                             completion_ids: Tensor, completion_mask: Tensor) -> Tensor:
    """Final hidden states that predict each completion token: [N, L, H] (position P-1+j predicts token j).

    Consecutive rows with the same prompt (a group's G samples) share one prompt pass: the prompt is run once
    with a KV cache, the cache is repeated to the rows, and the completions run on top of it (the last completion
    token predicts nothing and is not run). The same numbers as one pass over prompt + completion, up to float
    rounding; differentiable either way.
    """
    trunk, _ = backbone_and_head(model)
    attention = torch.cat([prompt_mask, completion_mask], dim=1)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    width, length = prompt_ids.shape[1], completion_ids.shape[1]
    groups = prompt_groups(prompt_ids, prompt_mask) if _shares_prefix(model) else None
    if groups is not None:
        first, run = groups
        out = trunk(input_ids=prompt_ids[first], attention_mask=prompt_mask[first], position_ids=positions[first, :width],
                    use_cache=True)
        cache = out.past_key_values
        if cache is not None and hasattr(cache, "batch_select_indices"):
            last_prompt = out.last_hidden_state[:, -1:][run]  # left padding: the last column is a real token
            if length == 1:
                return last_prompt
            cache.batch_select_indices(run)  # [U, ...] -> [N, ...] by indexing: gradients reach the prompt pass
            rest = trunk(input_ids=completion_ids[:, :-1], attention_mask=attention[:, :-1],
                         position_ids=positions[:, width:-1], past_key_values=cache, use_cache=True).last_hidden_state
            return torch.cat([last_prompt, rest], dim=1)
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    hidden = trunk(input_ids=input_ids, attention_mask=attention, position_ids=positions, use_cache=False).last_hidden_state
    return hidden[:, width - 1: width - 1 + length]


def token_logprobs(model: torch.nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                   completion_mask: Tensor, chunk_tokens: int = 4096) -> tuple[Tensor, Tensor]:
    """Log-probs [N, L] of the completion tokens under `model` and the per-token entropy [N, L] (no grad).

    prompt_ids/prompt_mask: [N, P] left-padded; completion_ids/completion_mask: [N, L] right-padded.
    Positions outside completion_mask are 0. Differentiable when called with grad enabled.
    """
    _, head = backbone_and_head(model)
    hidden = completion_hidden_states(model, prompt_ids, prompt_mask, completion_ids, completion_mask)
    where = completion_mask.bool()
    selected, targets = hidden[where], completion_ids[where]
    softcap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    chosen_parts, entropy_parts = [], []
    several = targets.shape[0] > chunk_tokens  # one chunk: keep its logits for backward rather than recompute them
    for start in range(0, targets.shape[0], chunk_tokens):
        args = (selected[start:start + chunk_tokens], targets[start:start + chunk_tokens], head.weight,
                head.bias, softcap)
        if torch.is_grad_enabled() and several:
            chosen, entropy = checkpoint(_chunk_logprobs, *args, use_reentrant=False)
        else:
            chosen, entropy = _chunk_logprobs(*args)
        chosen_parts.append(chosen)
        entropy_parts.append(entropy)
    logprobs = hidden.new_zeros(where.shape, dtype=torch.float32)
    entropy = hidden.new_zeros(where.shape, dtype=torch.float32)
    if chosen_parts:
        logprobs = logprobs.masked_scatter(where, torch.cat(chosen_parts))
        entropy = entropy.masked_scatter(where, torch.cat(entropy_parts))
    return logprobs, entropy
