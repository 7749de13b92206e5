"""Weight memory of the policy + KL reference options (model.reference, model.lora, the policy's quantization) for a
~21M-parameter Llama built from a config (no download), measured on CPU; plus the AdamW / AdamW8bit optimizer state
and the CPU time of one reference log-prob pass. Prints a Markdown table (figures only, no assertions).

    python bench/reference_memory.py [--dtype bfloat16] [--hidden 512] [--layers 5]

Bytes are those of the module's state_dict tensors (parameters, persistent buffers, bitsandbytes quantization
statistics: what a GPU would hold for the weights), counted once each (modules.reference.weight_bytes). Activation,
KV-cache and logits memory are not included.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from datamodules.types import Samples
from modules import (
    EvalSettings,
    GroupSettings,
    InferlModule,
    KLSettings,
    LoraParams,
    MemorySettings,
    PolicySource,
    SamplingParams,
    TinyPolicy,
)
from modules.policy import DTYPES
from modules.reference import weight_bytes


class BenchPolicy(PolicySource):
    """TinyPolicy's byte-level Llama at bench size, cast to `dtype` (as PretrainedPolicy(dtype=...) loads one)."""

    def __init__(self, dtype: str, quantization: str | None, **sizes) -> None:
        self.source = TinyPolicy(alphabet=None, quantization=None, **sizes)
        self.dtype = DTYPES[dtype]
        self.quantization = quantization

    def load_tokenizer(self):
        return self.source.load_tokenizer()

    def load_model(self):
        from modules.policy import quantized_copy

        model = self.source.load_model().to(self.dtype)
        return model if self.quantization is None else quantized_copy(model, self.quantization)


def optimizer_state_bytes(module: InferlModule, kind) -> int:
    """Bytes of the optimizer state after one step on random gradients of the trainable parameters."""
    params = [p for p in module.policy.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    optimizer = kind(params, lr=1e-5)
    optimizer.step()
    total = sum(t.numel() * t.element_size() for state in optimizer.state.values() for t in state.values()
                if isinstance(t, torch.Tensor))
    for p in params:
        p.grad = None
    return total


def fake_samples(vocab: int, rows: int = 16, prompt: int = 32, completion: int = 64) -> Samples:
    generator = torch.Generator().manual_seed(0)
    return Samples(prompt_ids=torch.randint(3, vocab, (rows, prompt), generator=generator),
                   prompt_mask=torch.ones(rows, prompt, dtype=torch.long),
                   completion_ids=torch.randint(3, vocab, (rows, completion), generator=generator),
                   completion_mask=torch.ones(rows, completion, dtype=torch.long),
                   sampling_logprobs=torch.zeros(rows, completion), finished=torch.ones(rows, dtype=torch.bool),
                   group_size=4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--intermediate", type=int, default=2048)
    parser.add_argument("--lora-rank", type=int, default=16)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    import bitsandbytes as bnb

    sizes = dict(hidden_size=args.hidden, num_layers=args.layers, num_heads=8, intermediate_size=args.intermediate)
    lora = LoraParams(rank=args.lora_rank, alpha=2.0 * args.lora_rank)
    setups = [  # name, policy quantization, reference, lora, kl_coef
        ("no reference (kl_coef: 0)", None, "auto", None, 0.0),
        ("reference: copy", None, "copy", None, 0.1),
        ("reference: 8bit", None, "8bit", None, 0.1),
        ("reference: 4bit", None, "4bit", None, 0.1),
        (f"lora (rank {args.lora_rank}), reference: adapters", None, "adapters", lora, 0.1),
        ("QLoRA: 4-bit policy + lora, reference: adapters", "4bit", "adapters", lora, 0.1),
    ]
    rows, policy_bytes = [], None
    for name, quantization, reference, lora_params, kl_coef in setups:
        module = InferlModule(BenchPolicy(args.dtype, quantization, **sizes),
                              group=GroupSettings(size=4, sampling=SamplingParams(max_new_tokens=8)),
                              kl=KLSettings(reference=reference, coef=kl_coef),
                              evaluation=EvalSettings(samples=4, pass_k=2), memory=MemorySettings(lora=lora_params))
        if policy_bytes is None:
            policy_bytes = weight_bytes(module.policy)
            params = sum(p.numel() for p in module.policy.parameters())
            linear = sum(m.weight.numel() for m in module.policy.modules() if isinstance(m, torch.nn.Linear)
                         and m is not module.policy.get_output_embeddings())
        total = weight_bytes(module)
        trainable = sum(p.numel() for p in module.policy.parameters() if p.requires_grad)
        adamw = optimizer_state_bytes(module, torch.optim.AdamW)
        adamw8 = optimizer_state_bytes(module, bnb.optim.AdamW8bit)
        samples = fake_samples(len(module.tokenizer))
        seconds = None
        if module.reference is not None:
            module.reference_logprobs(samples)  # warm-up
            start = time.perf_counter()
            module.reference_logprobs(samples)
            seconds = time.perf_counter() - start
        rows.append((name, total, total - weight_bytes(module.policy), trainable, adamw, adamw8, seconds))
        del module

    mib = lambda b: f"{b / 2**20:.1f}"  # noqa: E731
    print(f"Llama from config: {params / 1e6:.1f}M parameters ({linear / params:.0%} in decoder linear layers), "
          f"{args.dtype}, hidden {args.hidden}, {args.layers} layers, byte vocabulary; policy weights "
          f"{mib(policy_bytes)} MiB. torch {torch.__version__}, bitsandbytes {bnb.__version__}, "
          f"{torch.get_num_threads()} CPU threads.\n")
    print("| setup | policy + reference weights (MiB) | of which reference (MiB) | trainable params (M) | "
          "AdamW state (MiB) | AdamW8bit state (MiB) | reference pass, 16 x 96 tokens, CPU (s) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, total, reference, trainable, adamw, adamw8, seconds in rows:
        timing = "-" if seconds is None else f"{seconds:.2f}"
        print(f"| {name} | {mib(total)} | {mib(reference)} | {trainable / 1e6:.2f} | {mib(adamw)} | {mib(adamw8)} | "
              f"{timing} |")


if __name__ == "__main__":
    main()
