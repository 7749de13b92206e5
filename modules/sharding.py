"""Sharded training with FSDP2 (`torch.distributed.fsdp.fully_shard`) under Lightning's `ModelParallelStrategy`.

`InferlModule.configure_model` calls `shard_models`: under a ModelParallelStrategy every decoder layer of the
policy (and of the frozen reference and a critic LM, when there are any) becomes its own FSDP unit and the model's
root a last one, which owns the embeddings, the final norm and the LM head; a value head is sharded as a unit of
its own. Parameters are DTensors sharded over the data-parallel mesh dimension. Under DDP or on one device nothing
happens.

The root owns the LM head so that the log-prob path (`modules.logprobs`), which runs the trunk and reads
`lm_head.weight` directly instead of calling the model's forward, can run as one forward of the root
(`torch.distributed.fsdp.register_fsdp_forward_method`), with the head's weight gathered.

`FSDP2Strategy` is Lightning's ModelParallelStrategy with two changes: `data_parallel_size="auto"` means every
process (Lightning's "auto" means the number of nodes, with tensor parallelism inside a node) and the sharded
directory checkpoint is written to a temporary directory and swapped into place, so a crash mid-save keeps the
previous checkpoint whole.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.fsdp import fully_shard

from modules.checkpoint_io import remove_path, swap_into_place
from modules.errors import ConfigError
from modules.logprobs import backbone_and_head, is_fsdp


def layer_modules(model: nn.Module) -> list[nn.Module]:
    """The decoder layers of a transformers model (the classes its `_no_split_modules` names), innermost first;
    the trunk's `layers` when it names none."""
    names: set[str] = set()
    for part in model.modules():
        names |= set(getattr(part, "_no_split_modules", None) or [])
    layers = [part for part in model.modules() if type(part).__name__ in names and part is not model]
    if not layers:
        layers = list(getattr(backbone_and_head(model)[0], "layers", []))
    return layers[::-1]  # fully_shard goes bottom-up: a nested unit before the one around it


def check_shardable(model: nn.Module, key: str) -> None:
    """Reject quantized (bitsandbytes 4-/8-bit) weights: FSDP2 shards floating-point parameters only."""
    bad = [name for name, p in model.named_parameters()
           if not p.dtype.is_floating_point or type(p).__module__.split(".")[0] == "bitsandbytes"]
    if bad:
        raise ConfigError(f"{key} has quantized (bitsandbytes) weights ({bad[0]}, ...), which FSDP2 cannot shard; "
                          "load it unquantized under trainer.strategy modules.sharding.FSDP2Strategy, or train "
                          "quantized models on one device (configs/trainer/single.yaml) or with DDP")


def shard_causal_lm(model: nn.Module, mesh, key: str = "model.policy") -> None:
    """`fully_shard` each decoder layer, then the root (embeddings, final norm, LM head). Idempotent."""
    if is_fsdp(model):
        return
    check_shardable(model, key)
    for layer in layer_modules(model):
        if not is_fsdp(layer):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)


def shard_module(module: nn.Module, mesh) -> None:
    """`fully_shard` a small module (a value head) as one unit, if it has parameters. Idempotent."""
    if not is_fsdp(module) and any(True for _ in module.parameters()):
        fully_shard(module, mesh=mesh)


def shard_models(module) -> None:
    """Shard an InferlModule's models under ModelParallelStrategy (call from `configure_model`)."""
    if not isinstance(module.trainer.strategy, ModelParallelStrategy):
        return
    mesh = module.device_mesh
    if mesh["tensor_parallel"].size() != 1:
        raise ConfigError(f"trainer.strategy: tensor parallelism is not implemented (tensor_parallel_size = "
                          f"{mesh['tensor_parallel'].size()}); set tensor_parallel_size: 1 and data_parallel_size: "
                          "auto (configs/trainer/fsdp.yaml)")
    data_parallel = mesh["data_parallel"]
    policy = module.policy
    shard_causal_lm(policy, data_parallel, "model.policy")
    for name in ("reference", "critic"):
        model = getattr(module, name, None)
        if isinstance(model, nn.Module) and model is not policy:
            shard_causal_lm(model, data_parallel, f"the {name} model")
    head = getattr(module, "value_head", None)
    if isinstance(head, nn.Module):
        shard_module(head, data_parallel)


def check_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """Reject optimizers that cannot step DTensor parameters (bitsandbytes' 8-bit ones)."""
    kind = type(optimizer)
    if kind.__module__.split(".")[0] == "bitsandbytes":
        raise ConfigError(f"model.optimizer: {kind.__module__}.{kind.__name__} does not work with FSDP2 (sharded "
                          "DTensor parameters); use class_path: torch.optim.AdamW under "
                          "modules.sharding.FSDP2Strategy, or keep the 8-bit optimizer with DDP or one device")


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's `ModelParallelStrategy` for FSDP2 data parallelism (the model is sharded in
    `InferlModule.configure_model`).

    Args:
        data_parallel_size: processes the model is sharded over; "auto" = all of them (devices x num_nodes).
        tensor_parallel_size: must be 1 (tensor parallelism is not implemented).
        save_distributed_checkpoint: True: each rank writes its shard into a checkpoint directory (resume on the
            same world size); False: the full state is gathered on rank 0 into one file.
        process_group_backend: e.g. "nccl", "gloo"; None = the device's default.
        timeout: collective timeout.
    """

    def __init__(self, data_parallel_size: Literal["auto"] | int = "auto",
                 tensor_parallel_size: Literal["auto"] | int = 1, save_distributed_checkpoint: bool = True,
                 process_group_backend: str | None = None,
                 timeout: timedelta | None = default_pg_timeout) -> None:
        super().__init__(data_parallel_size=data_parallel_size, tensor_parallel_size=tensor_parallel_size,
                         save_distributed_checkpoint=save_distributed_checkpoint,
                         process_group_backend=process_group_backend, timeout=timeout)

    def setup_environment(self) -> None:
        self._data_parallel_size, self._tensor_parallel_size = mesh_sizes(
            self._data_parallel_size, self._tensor_parallel_size, self.num_nodes * self.num_processes)
        super().setup_environment()

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any | None = None) -> None:
        if not self._save_distributed_checkpoint or storage_options is not None or "://" in str(filepath):
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(os.fspath(filepath)))
        partial = path.parent / f".{path.name}.partial"
        if self.global_rank == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_path(partial)  # left by a crash
        self.barrier()
        super().save_checkpoint(checkpoint, partial)  # every rank's shard, then meta.pt from rank 0
        self.barrier()
        if self.global_rank == 0:
            swap_into_place(partial, path)
        self.barrier()


def mesh_sizes(data_parallel_size: Literal["auto"] | int, tensor_parallel_size: Literal["auto"] | int,
               world_size: int) -> tuple[int, int]:
    """(data-parallel, tensor-parallel) sizes of the device mesh: tensor "auto" = 1, data "auto" = the rest."""
    tensor = 1 if tensor_parallel_size == "auto" else int(tensor_parallel_size)
    data = max(world_size // tensor, 1) if data_parallel_size == "auto" else int(data_parallel_size)
    return data, tensor
