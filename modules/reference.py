"""The KL reference model: none, a frozen copy (in the policy's dtype, or quantized 8-/4-bit with bitsandbytes), or,
under LoRA training, the policy itself with its adapters disabled.

`InferlModule(reference=...)` takes one `ReferenceChoice`; `resolve_reference` turns it (with kl_coef and whether
LoRA is on) into a `ReferenceKind`, and `make_reference` is the one place that acts on the kind, both to build the
reference and to re-make it from the current policy (`InferlModule.reset_reference`, after a supervised warm start).
`reference_model` gives the model to run for the reference log-probs.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Literal, get_args

import torch

from modules.policy import optional_import, quantized_copy

#: `model.kl.reference`: "auto" = "adapters" with LoRA, else "copy"; "copy" = a frozen copy in the policy's dtype;
#: "8bit" / "4bit" = a frozen copy quantized with bitsandbytes (LLM.int8 / NF4); "adapters" = the policy with its
#: LoRA adapters disabled (no second model). With kl_coef = 0 no reference is made, whatever the choice.
ReferenceChoice = Literal["auto", "copy", "8bit", "4bit", "adapters"]
ReferenceKind = Literal["copy", "8bit", "4bit", "adapters"]


def resolve_reference(choice: ReferenceChoice, kl_coef: float, lora: bool) -> ReferenceKind | None:
    """The reference to make: None when kl_coef is 0; "auto" -> "adapters" with LoRA, else "copy". Raises ValueError
    (naming the key) for a choice that cannot work."""
    if choice not in get_args(ReferenceChoice):
        raise ValueError(f"model.kl.reference must be auto, copy, 8bit, 4bit or adapters, got {choice!r}")
    if choice == "adapters" and not lora:
        raise ValueError("model.kl.reference: adapters needs LoRA training (set model.memory.lora, e.g. {rank: 16}); "
                         "without it use copy, 8bit or 4bit")
    if choice in ("8bit", "4bit") and lora:
        raise ValueError(f"model.kl.reference: {choice} is a quantized copy of a full model and LoRA training has none "
                         "to copy; use adapters (the policy with its adapters disabled, no extra memory) or copy")
    if kl_coef == 0:
        return None
    if choice == "auto":
        return "adapters" if lora else "copy"
    return choice


def make_reference(policy: torch.nn.Module, kind: ReferenceKind | None, previous=None):
    """The reference of `kind` for `policy` as it is now; with `previous` (the current reference) re-made in place
    where possible: a copy reloads the policy's weights, a quantized copy is quantized again from them, and the
    adapters' reference folds the adapters into the base weights (`merge_adapters`).

    Returns a frozen model in eval mode, an `AdapterReference`, or None (kind None)."""
    if kind is None:
        return None
    if kind == "copy":
        if previous is None:
            return frozen_copy(policy)
        previous.load_state_dict(policy.state_dict())
        return previous
    if kind == "adapters":
        if previous is not None:
            merge_adapters(policy)
        return AdapterReference(policy)
    if kind in ("8bit", "4bit"):
        return freeze(quantized_copy(policy, kind))
    raise ValueError(f"unknown reference kind {kind!r}")


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """`model` in eval mode with gradients off."""
    model.eval()
    model.requires_grad_(False)
    return model


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` in eval mode with gradients off (the KL reference)."""
    return freeze(copy.deepcopy(model))


class AdapterReference:
    """The reference under LoRA training: the policy with its adapters disabled. It holds no weights of its own (the
    policy is not a submodule: nothing is saved, counted or sharded twice); `disabled()` yields the policy with its
    adapters off."""

    def __init__(self, policy: torch.nn.Module) -> None:
        if not hasattr(policy, "disable_adapter"):
            raise ValueError("model.kl.reference: adapters needs a peft (LoRA) policy; set model.memory.lora")
        self.policy = policy

    @contextmanager
    def disabled(self) -> Iterator[torch.nn.Module]:
        with self.policy.disable_adapter():
            yield self.policy


@contextmanager
def reference_model(reference) -> Iterator[torch.nn.Module]:
    """The model whose log-probs are the reference's, in eval mode for the duration (no dropout; the frozen copy is
    put back in train mode by Lightning with the rest of the module): the frozen copy, or the policy with adapters
    disabled."""
    context = reference.disabled() if isinstance(reference, AdapterReference) else nullcontext(reference)
    with context as model:
        training = model.training
        model.eval()
        try:
            yield model
        finally:
            model.train(training)


@torch.no_grad()
def merge_adapters(policy: torch.nn.Module) -> None:
    """Fold each LoRA adapter into its base weight and restart the adapter at zero (lora_B = 0; lora_A kept): the
    policy computes the same function, and with adapters disabled it now computes it too, so the reference is the
    current policy. Parameter objects of the adapters stay the same (an optimizer built on them keeps working); a
    4-bit base is dequantized, summed and quantized again (peft's merge), which rounds."""
    optional_import("peft", "model.memory.lora", "peft")
    from peft.tuners.lora import LoraLayer

    for module in policy.modules():
        if not isinstance(module, LoraLayer):
            continue
        module.merge()
        module.merged_adapters.clear()  # the base now includes the update: the adapters start again from zero
        for name in module.active_adapters:
            if name in module.lora_B:
                for param in module.lora_B[name].parameters():
                    param.zero_()
            if name in getattr(module, "lora_embedding_B", {}):
                module.lora_embedding_B[name].zero_()


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of `module`'s weights as its state_dict holds them (parameters, persistent buffers, bitsandbytes
    quantization statistics), a tensor shared by several entries (tied weights) counted once."""
    seen, total = set(), 0
    for tensor in module.state_dict().values():
        if not isinstance(tensor, torch.Tensor):
            continue
        key = (tensor.device, tensor.data_ptr(), tensor.numel(), tensor.dtype)
        if key not in seen:
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
    return total
