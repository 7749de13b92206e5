"""FSDP2 checks in 2 CPU processes (gloo), without Lightning: `python tests/modules/fsdp_checks.py OUT.json`.

Each rank shards a tiny policy with modules.sharding.shard_causal_lm and
1. computes the log-probs of its half of a batch through each public function of modules.logprobs (split into
   hidden states + head or in one call; the sharded model always takes the plain path, see
   logprobs._shares_prefix), backward, and compares values and gathered gradients with one process's on the
   whole batch, with and without the shared-prompt path (the gradient of the mean of the two halves' losses, as
   FSDP2 averages over ranks);
2. samples with modules.rollout.sampler.sample where rank 0's completions all end at their first token and rank 1's run
   to max_new_tokens, with `keep_going` reducing "done" over ranks (InferlModule.any_rank_samples): it must not hang;
3. runs a no-grad call (the reference path) and checks the root is resharded after it;
4. calls InferlModule.configure_model twice on a module with a reference, a critic LM and a value head: all are
   sharded, the second call changes nothing.
Rank 0 writes the results as JSON (the test in test_distributed.py asserts on them).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "modules")]


def batch(rows: range):
    """Rows of a fixed batch: 4 prompts x 2 samples, completions of several lengths."""
    from modules.padding import left_pad, right_pad

    prompts = [[5, 6, 7], [8, 9], [5, 6, 7], [10, 11, 12, 13]]
    prompt_rows = [prompts[i // 2] for i in rows]
    completions = [[10 + i % 5, 11, 2][: 1 + i % 3] for i in rows]
    return (*left_pad(prompt_rows, 0), *right_pad(completions, 0))


def losses(model, inputs, how: str):
    from modules import logprobs as lp

    if how == "split":
        hidden = lp.completion_hidden_states(model, *inputs)
        values, _ = lp.head_logprobs(model, hidden, inputs[2], inputs[3], chunk_tokens=3)
    else:
        values, _ = lp.token_logprobs(model, *inputs, chunk_tokens=1000)
    return values


def worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    from modules import TinyPolicy
    from modules import logprobs as lp
    from modules.rollout.sampler import SamplingParams, sample
    from modules.sharding import shard_causal_lm

    results: dict = {}
    mesh = init_device_mesh("cpu", (world,))
    source = TinyPolicy(hidden_size=32, num_layers=2, intermediate_size=64, seed=3)
    whole = range(8)
    mine = range(rank * 4, rank * 4 + 4)
    for shared in (True, False):
        for how in ("split", "one call"):
            name = f"{how}, shared prompt {shared}"
            single, sharded = source.load_model(), source.load_model()
            if not shared:  # the plain path: one pass over prompt + completion
                lp_shares = lp._shares_prefix
                lp._shares_prefix = lambda model: False
            shard_causal_lm(sharded, mesh)
            inputs, all_inputs = batch(mine), batch(whole)
            values = losses(sharded, inputs, how)
            (values.sum() / 4).backward()  # the mean over ranks of the per-rank loss: FSDP2 averages gradients
            expected = losses(single, all_inputs, how)
            (expected.sum() / 8).backward()
            grads = {n: p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
                     for n, p in sharded.named_parameters()}
            worst = max(float((grads[n] - p.grad).abs().max()) for n, p in single.named_parameters())
            missing = [n for n, p in sharded.named_parameters() if p.grad is None]
            mine_expected = expected.detach()[mine.start:mine.stop, : values.shape[1]]
            value_error = float((values.detach() - mine_expected).abs().max())
            results[name] = {"grad_error": worst, "value_error": value_error, "missing_grads": missing,
                             "dtensor_params": all(isinstance(p, DTensor) for p in sharded.parameters())}
            if not shared:
                lp._shares_prefix = lp_shares

    # generation with ranks finishing at different lengths; `keep_going` as TorchRollout does it
    # (InferlModule.any_rank_samples)
    model = source.load_model().eval()
    shard_causal_lm(model, mesh)
    forwards = {"count": 0}
    model.register_forward_pre_hook(lambda *args: forwards.__setitem__("count", forwards["count"] + 1))

    def keep_going(local_done: bool) -> bool:
        done = torch.tensor(float(local_done))
        dist.all_reduce(done, op=dist.ReduceOp.MIN)
        return bool(done < 1)

    eos = list(range(40)) if rank == 0 else [1]  # rank 0: every token ends a completion; rank 1: none do
    with torch.no_grad():
        samples = sample(model, [[5, 6, 7], [8, 9]], 2, SamplingParams(max_new_tokens=6, temperature=0.0),
                         eos_ids=eos, pad_id=0, keep_going=keep_going)
        reference = source.load_model().eval()
        shard_causal_lm(reference, mesh)
        lp.token_logprobs(reference, *batch(mine))
        resharded = all(isinstance(p, DTensor) for p in reference.parameters())
    results[f"rank{rank}"] = {"lengths": samples.completion_lengths.tolist(), "forwards": forwards["count"],
                              "reference_resharded": resharded}

    # configure_model shards every model of the module, once
    from types import SimpleNamespace

    from fit_helpers import tiny_module

    from modules import KLSettings
    from modules.logprobs import is_fsdp as is_sharded
    from modules.sharding import FSDP2Strategy

    module = tiny_module(kl=KLSettings(coef=0.1))
    module.critic = source.load_model()
    module.value_head = torch.nn.Linear(32, 1)
    module._device_mesh = init_device_mesh("cpu", (world, 1), mesh_dim_names=("data_parallel", "tensor_parallel"))
    module.trainer = SimpleNamespace(strategy=FSDP2Strategy(), world_size=world)
    module.configure_model()
    units = [name for name, part in module.named_modules() if is_sharded(part)]
    module.configure_model()
    results["configure_model"] = {
        "idempotent": units == [name for name, part in module.named_modules() if is_sharded(part)],
        "sharded": {name: is_sharded(getattr(module, name))
                    for name in ("policy", "reference", "critic", "value_head")},
        "layers_sharded": all(is_sharded(layer) for layer in module.policy.model.layers)}
    gathered = [None] * world
    dist.all_gather_object(gathered, results)
    if rank == 0:
        merged = {}
        for part in gathered:
            merged.update(part)
        Path(out).write_text(json.dumps(merged, indent=1))
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(worker, args=(2, port, sys.argv[1]), nprocs=2, join=True)


if __name__ == "__main__":
    main()
