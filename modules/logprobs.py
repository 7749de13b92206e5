"""Log-probabilities of chosen tokens without ever materialising float32 logits of shape [N, T, V].

The backbone runs over each distinct prompt once (the rows of a group share their prompt: its keys/values are
computed once and indexed out to the rows, gradients flowing back through the indexing) and then over the
completions. The LM head and log-softmax then run over the completion tokens in chunks of `chunk_tokens`, each
as one autograd function (`HeadLogprobs`) that makes a single [chunk_tokens, V] float32 buffer of probabilities
and takes the chosen log-prob, the entropy and, in backward, the logits' gradient from it. With several chunks
the buffer is recomputed in backward, so the peak extra memory is one chunk's [chunk_tokens, V] logits in
forward and in backward; a single chunk keeps its buffer for backward instead (the same peak, one LM-head pass
less).

Under FSDP2 (`modules.sharding`: every decoder layer and the model's root are `fully_shard` units, the root owning
the embeddings and the LM head) a parameter is gathered only inside its unit's forward, and these functions read the
LM head's weight and call the trunk without going through the model's forward. So on a sharded model each public
function runs as one forward of the root (`register_fsdp_forward_method`): the root's parameters are gathered for
the call (and stay so until backward, as FSDP2 keeps a root's after forward; a no-grad call reshards them at once),
the layers gather theirs in their own forwards, and gradients are reduce-scattered by FSDP2 as for any forward.
"""

from __future__ import annotations

import types

import torch
from torch import Tensor
from torch.distributed.fsdp import FSDPModule, register_fsdp_forward_method
from torch.utils.checkpoint import checkpoint

#: tokens per chunk of the LM head + log-softmax (the default of `model.memory.logprob_chunk_tokens`): the pass holds
#: about two float32 [chunk, V] buffers
CHUNK_TOKENS = 1024


def _chunk_logprobs(hidden: Tensor, targets: Tensor, weight: Tensor, bias: Tensor | None,
                    softcap: float | None) -> tuple[Tensor, Tensor]:
    """hidden [M, H], targets [M] -> (log-prob of target [M], entropy [M]) in float32, with plain autograd ops
    (the path of models with a logit soft-cap)."""
    logits = torch.nn.functional.linear(hidden, weight, bias).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    normaliser = logits.logsumexp(-1)
    chosen = logits.gather(-1, targets[:, None]).squeeze(-1) - normaliser
    with torch.no_grad():
        probs = (logits - normaliser[:, None]).exp()
        entropy = normaliser - (probs * logits).sum(-1)
    return chosen, entropy


@torch.no_grad()
def _head_probs(hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, normalise: bool = True
                ) -> tuple[Tensor, Tensor, Tensor, torch.dtype]:
    """Softmax probabilities [M, V] (float32; unnormalised when not `normalise`) of the LM head, the chosen tokens'
    log-probs [M] and the entropy [M], with one exp pass over the logits; and the dtype the projection ran in
    (autocast's, or the weight's). No autograd graph: HeadLogprobs supplies the gradient."""
    logits = torch.nn.functional.linear(hidden, weight, bias)
    compute_dtype = logits.dtype
    shifted = logits.float()
    shifted = shifted.sub_(shifted.amax(-1, keepdim=True))  # z = logits - max, in place on a fresh tensor
    probs = shifted.exp()
    total = probs.sum(-1, keepdim=True)
    log_total = total.log().squeeze(-1)
    chosen = shifted.gather(-1, targets[:, None]).squeeze(-1) - log_total
    # entropy = log s - sum(e z) / s, with e = exp(z), s = sum(e); the row dot products as a batched GEMV
    weighted = torch.bmm(probs.unsqueeze(1), shifted.unsqueeze(2)).view(-1)
    entropy = log_total - weighted / total.squeeze(-1)
    return (probs.div_(total) if normalise else probs), chosen, entropy, compute_dtype


class HeadLogprobs(torch.autograd.Function):
    """log p(target) [M] and entropy [M] (not differentiable) of softmax(hidden @ weight.T + bias), float32.

    The gradient of the log-prob with respect to the logits is onehot(target) - p, so backward only needs the
    probabilities p: kept from forward when `keep` (one chunk), recomputed from hidden and weight otherwise.
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, keep: bool):
        probs, chosen, entropy, compute_dtype = _head_probs(hidden, weight, bias, targets)
        ctx.compute_dtype = compute_dtype
        ctx.save_for_backward(hidden, weight, bias, targets, probs if keep else None)
        ctx.mark_non_differentiable(entropy)
        return chosen, entropy

    @staticmethod
    def backward(ctx, grad_chosen: Tensor, grad_entropy: Tensor):
        hidden, weight, bias, targets, probs = ctx.saved_tensors
        if probs is None:
            probs = _head_probs(hidden, weight, bias, targets)[0]
        grad_chosen = grad_chosen.float()
        grad_logits = probs * grad_chosen.neg()[:, None]  # a new tensor: the saved one stays valid
        grad_logits[torch.arange(targets.shape[0], device=targets.device), targets] += grad_chosen
        dtype = ctx.compute_dtype
        grad_logits_c = grad_logits.to(dtype)
        grad_hidden = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_hidden = (grad_logits_c @ weight.to(dtype)).to(hidden.dtype)
        if ctx.needs_input_grad[1]:
            grad_weight = (grad_logits_c.t() @ hidden.to(dtype)).to(weight.dtype)
        if bias is not None and ctx.needs_input_grad[2]:
            grad_bias = grad_logits.sum(0).to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None


def backbone_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The decoder trunk (returns hidden states) and the LM head of a transformers causal LM."""
    head = model.get_output_embeddings()
    trunk = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
    if head is None or trunk is None:
        raise TypeError(f"{type(model).__name__} has no separable decoder and LM head; it is not a causal LM")
    return trunk, head


def prompt_groups(prompt_ids: Tensor, prompt_mask: Tensor) -> tuple[Tensor, Tensor] | None:
    """Rows with the same prompt (ids and mask): (one row of each distinct prompt [U], the distinct prompt of each
    row [N], indexing the first tensor), or None when all N prompts differ."""
    if prompt_ids.shape[0] < 2:
        return None
    distinct, run = torch.unique(torch.cat([prompt_ids, prompt_mask], dim=1), dim=0, return_inverse=True)
    if distinct.shape[0] == prompt_ids.shape[0]:
        return None
    rows = torch.arange(prompt_ids.shape[0], device=prompt_ids.device)
    first = torch.full((distinct.shape[0],), prompt_ids.shape[0], dtype=torch.long, device=prompt_ids.device)
    return first.scatter_reduce_(0, run, rows, reduce="amin"), run


def _shares_prefix(model: torch.nn.Module) -> bool:
    """Whether the shared-prompt path can run: it needs a transformers model and its KV cache, which activation
    checkpointing (transformers' own, which drops the cache in training, or torch's wrapper, which would replay the
    cache update) does not allow. Nor does FSDP2: the path runs the trunk once or twice depending on the rows (shared
    prompts, 1-token completions), and ranks whose forwards (each one all-gathers) differ in number deadlock."""
    if getattr(model, "config", None) is None or is_fsdp(model):
        return False
    return not any(getattr(m, "gradient_checkpointing", False) is True or "CheckpointWrapper" in type(m).__name__
                   for m in model.modules())


def select_cache_rows(cache, rows: Tensor) -> None:
    """`cache.batch_select_indices(rows)` with `index_select`: its backward (index_add) is deterministic on CPU,
    while advanced indexing's (index_put with accumulate) sums in a thread-dependent order, so runs would differ."""
    layers = getattr(cache, "layers", None)
    if layers is None or not all(hasattr(layer, "keys") and hasattr(layer, "values") for layer in layers):
        cache.batch_select_indices(rows)
        return
    for layer in layers:
        if layer.keys is not None and layer.keys.numel():
            layer.keys = layer.keys.index_select(0, rows)
            layer.values = layer.values.index_select(0, rows)


def is_fsdp(model: torch.nn.Module) -> bool:
    """True if `model` is an FSDP2 unit (`fully_shard` was applied to it, see modules.sharding)."""
    return isinstance(model, FSDPModule)


def _call(self, fn, *args):
    return fn(*args)


def in_root_forward(model: torch.nn.Module, fn, *args):
    """`fn(*args)` run as a forward of the FSDP2 root `model`: its parameters (embeddings, final norm, LM head) are
    gathered around the call; after a no-grad call they are resharded at once (no backward will do it)."""
    run = model.__dict__.get("_inferl_forward")
    if run is None:
        model.__dict__["_inferl_forward"] = types.MethodType(_call, model)
        register_fsdp_forward_method(model, "_inferl_forward")
        run = model.__dict__["_inferl_forward"]
    out = run(fn, *args)
    if not torch.is_grad_enabled():
        model.reshard()
    return out


def completion_hidden_states(model: torch.nn.Module, prompt_ids: Tensor, prompt_mask: Tensor,
                             completion_ids: Tensor, completion_mask: Tensor) -> Tensor:
    """Final hidden states that predict each completion token: [N, L, H] (position P-1+j predicts token j).

    Rows with the same prompt (a group's G samples) share one prompt pass: each distinct prompt is run once with
    a KV cache, the cache is indexed out to the rows, and the completions run on top of it (the last completion
    token predicts nothing and is not run). The same numbers as one pass over prompt + completion, up to float
    rounding; differentiable either way.
    """
    if is_fsdp(model):
        return in_root_forward(model, _owned_hidden_states, model, prompt_ids, prompt_mask, completion_ids,
                               completion_mask)
    return _completion_hidden_states(model, prompt_ids, prompt_mask, completion_ids, completion_mask)


def _owned_hidden_states(*args) -> Tensor:
    # an FSDP2 forward's output gets its pre-backward hook; a view would lose it to any in-place op (FSDP2 warns)
    hidden = _completion_hidden_states(*args)
    return hidden if hidden._base is None else hidden.clone()


def _completion_hidden_states(model: torch.nn.Module, prompt_ids: Tensor, prompt_mask: Tensor,
                              completion_ids: Tensor, completion_mask: Tensor) -> Tensor:
    trunk, _ = backbone_and_head(model)
    attention = torch.cat([prompt_mask, completion_mask], dim=1)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    width, length = prompt_ids.shape[1], completion_ids.shape[1]
    groups = prompt_groups(prompt_ids, prompt_mask) if _shares_prefix(model) else None
    if groups is not None:
        first, run = groups
        out = trunk(input_ids=prompt_ids[first], attention_mask=prompt_mask[first],
                    position_ids=positions[first, :width], use_cache=True)
        cache = out.past_key_values
        if cache is not None and hasattr(cache, "batch_select_indices"):
            # left padding: the last column is a real token
            last_prompt = out.last_hidden_state[:, -1:].index_select(0, run)
            if length == 1:
                return last_prompt
            select_cache_rows(cache, run)  # [U, ...] -> [N, ...] by indexing: gradients reach the prompt pass
            rest = trunk(input_ids=completion_ids[:, :-1], attention_mask=attention[:, :-1],
                         position_ids=positions[:, width:-1], past_key_values=cache, use_cache=True).last_hidden_state
            return torch.cat([last_prompt, rest], dim=1)
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    hidden = trunk(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                   use_cache=False).last_hidden_state
    return hidden[:, width - 1: width - 1 + length]


def token_logprobs(model: torch.nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                   completion_mask: Tensor, chunk_tokens: int = CHUNK_TOKENS) -> tuple[Tensor, Tensor]:
    """Log-probs [N, L] of the completion tokens under `model` and the per-token entropy [N, L] (no grad).

    prompt_ids/prompt_mask: [N, P] left-padded; completion_ids/completion_mask: [N, L] right-padded.
    Positions outside completion_mask are 0. Differentiable when called with grad enabled.
    """
    if is_fsdp(model):  # one root forward for both parts
        return in_root_forward(model, _token_logprobs, model, prompt_ids, prompt_mask, completion_ids,
                               completion_mask, chunk_tokens)
    return _token_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask, chunk_tokens)


def _token_logprobs(model: torch.nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                    completion_mask: Tensor, chunk_tokens: int) -> tuple[Tensor, Tensor]:
    hidden = _completion_hidden_states(model, prompt_ids, prompt_mask, completion_ids, completion_mask)
    return _head_logprobs(model, hidden, completion_ids, completion_mask, chunk_tokens)


def head_logprobs(model: torch.nn.Module, hidden: Tensor, completion_ids: Tensor, completion_mask: Tensor,
                  chunk_tokens: int = CHUNK_TOKENS) -> tuple[Tensor, Tensor]:
    """Log-probs [N, L] and entropy [N, L] of the completion tokens from the hidden states [N, L, H] that predict
    them (`completion_hidden_states`), through the model's LM head in chunks of `chunk_tokens` tokens."""
    if is_fsdp(model):
        return in_root_forward(model, _head_logprobs, model, hidden, completion_ids, completion_mask, chunk_tokens)
    return _head_logprobs(model, hidden, completion_ids, completion_mask, chunk_tokens)


def _head_logprobs(model: torch.nn.Module, hidden: Tensor, completion_ids: Tensor, completion_mask: Tensor,
                   chunk_tokens: int) -> tuple[Tensor, Tensor]:
    _, head = backbone_and_head(model)
    where = completion_mask.bool()
    selected, targets = hidden[where], completion_ids[where]
    softcap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    chosen_parts, entropy_parts = [], []
    several = targets.shape[0] > chunk_tokens  # one chunk: keep its probabilities for backward, do not recompute
    grad = torch.is_grad_enabled() and (selected.requires_grad or head.weight.requires_grad)
    for start in range(0, targets.shape[0], chunk_tokens):
        part, part_targets = selected[start:start + chunk_tokens], targets[start:start + chunk_tokens]
        if softcap:
            args = (part, part_targets, head.weight, head.bias, softcap)
            if grad and several:
                chosen, entropy = checkpoint(_chunk_logprobs, *args, use_reentrant=False)
            else:
                chosen, entropy = _chunk_logprobs(*args)
        elif grad:
            chosen, entropy = HeadLogprobs.apply(part, head.weight, head.bias, part_targets, not several)
        else:
            _, chosen, entropy, _ = _head_probs(part, head.weight, head.bias, part_targets, normalise=False)
        chosen_parts.append(chosen)
        entropy_parts.append(entropy)
    logprobs = hidden.new_zeros(where.shape, dtype=torch.float32)
    entropy = hidden.new_zeros(where.shape, dtype=torch.float32)
    if chosen_parts:
        logprobs = logprobs.masked_scatter(where, torch.cat(chosen_parts))
        entropy = entropy.masked_scatter(where, torch.cat(entropy_parts))
    return logprobs, entropy
