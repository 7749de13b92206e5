"""The torch rollout engine (TorchRollout): batched sampling with a KV cache; each prompt is prefilled once and its
cache shared by its G samples; finished sequences leave the batch so later decode steps only run the live ones."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from datamodules.types import Samples
from modules.padding import left_pad
from modules.rollout.engine import RolloutEngine, SamplingParams

try:
    from transformers.cache_utils import DynamicLayer
except ImportError:  # transformers before layered caches (< 4.54): `preallocate` leaves caches as they are
    DynamicLayer = None

if TYPE_CHECKING:
    from modules.module import InferlModule


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
    """Draw one token per row from logits [N, V]; return tokens [N] and their log-probs [N] (float32).

    Sampling is by inversion: one uniform number per row against the cumulative sum of the unnormalised
    probabilities, so a step makes N random numbers (torch.multinomial makes N * V exponentials, which on CPU
    costs more than the model's forward at a 32k vocabulary) and one full-vocabulary exp pass.
    """
    logits = logits.float()
    if params.temperature == 0:
        tokens = logits.argmax(-1)
        return tokens, logits.gather(-1, tokens[:, None]).squeeze(-1) - logits.logsumexp(-1)
    if params.temperature != 1.0:
        logits = logits / params.temperature
    logits = filter_logits(logits, params.top_k, params.top_p)
    peak = logits.amax(-1, keepdim=True)
    cumulative = (logits - peak).exp_().cumsum_(-1)  # unnormalised CDF [N, V]; its last column is the total mass
    total = cumulative[:, -1:]
    uniform = torch.rand(total.shape, generator=generator, device=logits.device, dtype=total.dtype)
    # first index whose cumulative mass exceeds u * total: zero-probability tokens are never chosen
    tokens = torch.searchsorted(cumulative, uniform * total, right=True).squeeze(-1)
    tokens = tokens.clamp_(max=logits.shape[-1] - 1)
    chosen = logits.gather(-1, tokens[:, None]) - peak - total.log()
    return tokens, chosen.squeeze(-1)


def preallocate(cache, extra_tokens: int) -> None:
    """Give each plain dynamic layer of a transformers cache room for `extra_tokens` more positions, in place.

    transformers' DynamicLayer appends by concatenation, which copies the whole cache at every decode step; a
    preallocated layer writes the new keys/values into its buffer and exposes the filled part as a view. Other
    layer kinds (sliding window, quantized, linear attention) and caches without `layers` are left as they are.
    """
    layers = getattr(cache, "layers", None)
    if DynamicLayer is None or not layers:
        return
    for index, layer in enumerate(layers):
        if type(layer) is DynamicLayer and layer.is_initialized and layer.keys is not None and layer.keys.dim() == 4:
            layers[index] = PreallocatedLayer(layer, extra_tokens)


class PreallocatedLayer(DynamicLayer or object):
    """A DynamicLayer whose keys/values live in buffers [n, heads, length + extra, dim]."""

    def __init__(self, layer, extra_tokens: int) -> None:
        super().__init__()
        self.dtype, self.device, self.is_initialized = layer.keys.dtype, layer.keys.device, True
        self.length = layer.keys.shape[-2]
        self._keys = _grown(layer.keys, extra_tokens)
        self._values = _grown(layer.values, extra_tokens)
        self._expose()

    def _expose(self) -> None:
        self.keys, self.values = self._keys[:, :, :self.length], self._values[:, :, :self.length]

    def update(self, key_states, value_states, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        if end > self._keys.shape[-2]:  # more tokens than planned: grow (never happens in `sample`)
            self._keys = _grown(self._keys[:, :, :self.length], end - self.length)
            self._values = _grown(self._values[:, :, :self.length], end - self.length)
        self._keys[:, :, self.length:end] = key_states
        self._values[:, :, self.length:end] = value_states
        self.length = end
        self._expose()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def reset(self) -> None:
        self.length = 0
        self._expose()

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        self.length = max(self.length + tokens_to_remove, 0)
        self._expose()

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._keys = self._keys.repeat_interleave(repeats, dim=0)
        self._values = self._values.repeat_interleave(repeats, dim=0)
        self._expose()

    def batch_select_indices(self, indices: Tensor) -> None:
        self._keys, self._values = self._keys[indices], self._values[indices]
        self._expose()

    def reorder_cache(self, beam_idx: Tensor) -> None:
        self.batch_select_indices(beam_idx.to(self._keys.device))


def _grown(states: Tensor, extra_tokens: int) -> Tensor:
    """states [n, h, t, d] copied into a new buffer [n, h, t + extra_tokens, d]."""
    n, heads, length, dim = states.shape
    buffer = states.new_empty((n, heads, length + extra_tokens, dim))
    buffer[:, :, :length] = states
    return buffer


@torch.no_grad()
def sample(model: torch.nn.Module, prompts: Sequence[Sequence[int]], group_size: int, params: SamplingParams,
           eos_ids: Sequence[int], pad_id: int, generator: torch.Generator | None = None,
           keep_going: Callable[[bool], bool] | None = None) -> Samples:
    """Sample `group_size` completions for each prompt (token-id lists) with a KV cache.

    The B prompts are prefilled once; the cache is then repeated G times (into buffers with room for the
    completions, so decode steps write in place). Rows that emit an EOS token leave the decode batch.
    `keep_going(local_done)` lets distributed callers keep every rank stepping until all are done (FSDP needs all
    ranks in each forward); by default decoding stops when the local batch is done.
    """
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = left_pad(prompts, pad_id, device)
    n, width = prompt_ids.shape[0] * group_size, prompt_ids.shape[1]
    positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions, use_cache=True,
                logits_to_keep=1)
    cache = out.past_key_values
    preallocate(cache, params.max_new_tokens)
    cache.batch_repeat_interleave(group_size)
    logits = out.logits[:, -1].repeat_interleave(group_size, 0)
    # the attention mask of prompt + completion, filled with ones ahead; step t reads its first width + t + 1 columns
    attention = torch.cat([prompt_mask, prompt_mask.new_ones(prompt_mask.shape[0], params.max_new_tokens)], dim=-1)
    attention = attention.repeat_interleave(group_size, 0)
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
            if ended.any():
                finished[live[ended]] = True
                stay = (~ended).nonzero().squeeze(-1)
                cache.batch_select_indices(stay)
                live, tokens = live[stay], tokens[stay]
                attention, next_position = attention[stay], next_position[stay]
        if step == params.max_new_tokens - 1 or not keep_going(live.numel() == 0):
            break
        if live.numel():
            out = model(input_ids=tokens[:, None], attention_mask=attention[:, :width + step + 1],
                        position_ids=next_position, past_key_values=cache, use_cache=True)
            logits = out.logits[:, -1]
            next_position = next_position + 1
        else:  # this rank is done but others are not: step the model on a dummy row to stay in lockstep
            model(input_ids=prompt_ids[:1, -1:], attention_mask=prompt_mask[:1, -1:], use_cache=False)

    steps = torch.arange(params.max_new_tokens, device=device)
    completion_mask = (steps[None, :] < lengths[:, None]).long()
    used = int(lengths.max().item()) if n else 0
    return Samples(
        prompt_ids=prompt_ids.repeat_interleave(group_size, 0),
        prompt_mask=prompt_mask.repeat_interleave(group_size, 0),
        completion_ids=completion_ids[:, :max(used, 1)], completion_mask=completion_mask[:, :max(used, 1)],
        sampling_logprobs=logprobs[:, :max(used, 1)], finished=finished, group_size=group_size)


class TorchRollout(RolloutEngine):
    """The torch sampler (`sample` above) on the live policy: no second copy of the weights, so nothing to sync, and
    no dependency beyond torch and transformers. The engine for tiny models, tests and machines without vLLM.
    Under FSDP2 every rank joins each decode step until all ranks are done (sharded forwards are collectives)."""

    def __init__(self) -> None:
        self.module: InferlModule | None = None

    def setup(self, module: InferlModule) -> None:
        self.module = module

    def generate(self, prompt_ids: list[list[int]], group_size: int, params: SamplingParams,
                 generator: torch.Generator) -> Samples:
        module = self.module
        if module is None:
            raise RuntimeError("TorchRollout.generate before setup(module): the module calls setup at stage start")
        policy = module.policy
        was_training = policy.training
        policy.eval()
        try:
            return sample(policy, prompt_ids, group_size, params, eos_ids=module.eos_token_ids(),
                          pad_id=module.tokenizer.pad_token_id, generator=generator,
                          keep_going=lambda local_done: module.any_rank_samples(not local_done))
        finally:
            policy.train(was_training)

    def teardown(self) -> None:
        self.module = None
