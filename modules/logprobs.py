"""Log-probabilities of chosen tokens without ever materialising float32 logits of shape [N, T, V].

The backbone runs once over prompt + completion; the LM head and log-softmax then run over the completion
tokens in chunks of `chunk_tokens`, each under activation checkpointing, so the peak extra memory is one
chunk's [chunk_tokens, V] logits in forward and in backward.
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


def completion_hidden_states(model: torch.nn.Module, prompt_ids: Tensor, prompt_mask: Tensor,
                             completion_ids: Tensor, completion_mask: Tensor) -> Tensor:
    """Final hidden states that predict each completion token: [N, L, H] (position P-1+j predicts token j)."""
    trunk, _ = backbone_and_head(model)
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention = torch.cat([prompt_mask, completion_mask], dim=1)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    hidden = trunk(input_ids=input_ids, attention_mask=attention, position_ids=positions, use_cache=False).last_hidden_state
    width = prompt_ids.shape[1]
    return hidden[:, width - 1: width - 1 + completion_ids.shape[1]]


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
    for start in range(0, targets.shape[0], chunk_tokens):
        args = (selected[start:start + chunk_tokens], targets[start:start + chunk_tokens], head.weight,
                head.bias, softcap)
        if torch.is_grad_enabled():
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
