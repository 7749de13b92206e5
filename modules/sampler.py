"""Batched sampling with a KV cache: each prompt is prefilled once and its cache shared by its G samples;
finished sequences leave the batch so later decode steps only run the live ones."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from modules.padding import left_pad


@dataclass
class SamplingParams:
    """How completions are drawn.

    Args:
        max_new_tokens: completion length limit; longer completions are truncated (finish reason "length").
        temperature: softmax temperature; 0 means greedy.
        top_p: nucleus sampling mass (1.0 = off).
        top_k: keep the k most likely tokens (0 = off).
    """

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")

    @property
    def is_plain(self) -> bool:
        """True when samples come from the model's own distribution (their log-probs are the policy's)."""
        return self.temperature == 1.0 and self.top_p == 1.0 and self.top_k == 0


@dataclass
class Samples:
    """N = B * G completions, sample j of prompt b at row b * G + j.

    prompt_ids, prompt_mask: [N, P] left-padded prompts (each prompt repeated G times).
    completion_ids, completion_mask: [N, L] right-padded; the mask covers generated tokens, EOS included.
    sampling_logprobs: [N, L] log-probability of each token under the distribution it was drawn from.
    finished: [N] True where the completion ended with EOS (False: truncated at max_new_tokens).
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    completion_ids: Tensor
    completion_mask: Tensor
    sampling_logprobs: Tensor
    finished: Tensor
    group_size: int

    @property
    def completion_lengths(self) -> Tensor:
        return self.completion_mask.sum(-1)


def filter_logits(logits: Tensor, top_k: int, top_p: float) -> Tensor:
    """Set logits outside the top-k / top-p nucleus to -inf. logits: [N, V]."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the mass before it already reaches top_p (the first token always stays)
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def draw(logits: Tensor, params: SamplingParams, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Draw one token per row from logits [N, V]; return tokens [N] and their log-probs [N] (float32)."""
    logits = logits.float()
    if params.temperature == 0:
        logprobs = logits.log_softmax(-1)
        tokens = logprobs.argmax(-1)
        return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)
    logprobs = filter_logits(logits / params.temperature, params.top_k, params.top_p).log_softmax(-1)
    tokens = torch.multinomial(logprobs.exp(), 1, generator=generator).squeeze(-1)
    return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)


@torch.no_grad()
def sample(model: torch.nn.Module, prompts: Sequence[Sequence[int]], group_size: int, params: SamplingParams,
           eos_ids: Sequence[int], pad_id: int, generator: torch.Generator | None = None,
           keep_going: Callable[[bool], bool] | None = None) -> Samples:
    """Sample `group_size` completions for each prompt (token-id lists) with a KV cache.

    The B prompts are prefilled once; the cache is then repeated G times. Rows that emit an EOS token leave
    the decode batch. `keep_going(local_done)` lets distributed callers keep every rank stepping until all are
    done (FSDP needs all ranks in each forward); by default decoding stops when the local batch is done.
    """
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = left_pad(prompts, pad_id, device)
    n, width = prompt_ids.shape[0] * group_size, prompt_ids.shape[1]
    positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions, use_cache=True,
                logits_to_keep=1)
    cache = out.past_key_values
    cache.batch_repeat_interleave(group_size)
    logits = out.logits[:, -1].repeat_interleave(group_size, 0)
    attention = prompt_mask.repeat_interleave(group_size, 0)
    next_position = positions[:, -1:].repeat_interleave(group_size, 0) + 1

    completion_ids = torch.full((n, params.max_new_tokens), pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros((n, params.max_new_tokens), dtype=torch.float32, device=device)
    lengths = torch.zeros(n, dtype=torch.long, device=device)
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    live = torch.arange(n, device=device)  # rows of the full batch still decoding, in cache order
    eos = torch.as_tensor(list(eos_ids), device=device)
    keep_going = keep_going or (lambda local_done: not local_done)

    for step in range(params.max_new_tokens):
        if live.numel():
            tokens, token_logprobs = draw(logits, params, generator)
            completion_ids[live, step] = tokens
            logprobs[live, step] = token_logprobs
            lengths[live] += 1
            ended = torch.isin(tokens, eos)
            finished[live[ended]] = True
            if ended.any():
                stay = (~ended).nonzero().squeeze(-1)
                cache.batch_select_indices(stay)
                live, tokens = live[stay], tokens[stay]
                attention, next_position = attention[stay], next_position[stay]
        if step == params.max_new_tokens - 1 or not keep_going(live.numel() == 0):
            break
        if live.numel():
            attention = torch.cat([attention, attention.new_ones(live.numel(), 1)], dim=-1)
            out = model(input_ids=tokens[:, None], attention_mask=attention, position_ids=next_position,
                        past_key_values=cache, use_cache=True)
            logits = out.logits[:, -1]
            next_position = next_position + 1
        else:  # this rank is done but others are not: step the model on a dummy row to stay in lockstep
            model(input_ids=prompt_ids[:1, -1:], attention_mask=prompt_mask[:1, -1:], use_cache=False)

    steps = torch.arange(params.max_new_tokens, device=device)
    completion_mask = (steps[None, :] < lengths[:, None]).long()
    used = int(lengths.max().item()) if n else 0
    return Samples(
        prompt_ids=prompt_ids.repeat_interleave(group_size, 0), prompt_mask=prompt_mask.repeat_interleave(group_size, 0),
        completion_ids=completion_ids[:, :max(used, 1)], completion_mask=completion_mask[:, :max(used, 1)],
        sampling_logprobs=logprobs[:, :max(used, 1)], finished=finished, group_size=group_size)
