"""Peak memory of the log-prob pass of a causal LM as the vocabulary grows: inferl's chunked LM head against
the naive full-logits computation.

    python bench/logprob_memory.py [--vocab 32000 65536 100000 151936] [--tokens 1024] [--rows 2]
                                   [--prompt 16] [--chunk-tokens 256] [--hidden 256] [--layers 2]
                                   [--device cpu|cuda]

For each vocabulary size V and each mode it measures the extra memory, above the model and its inputs, of
  - inferl: `modules.logprobs.token_logprobs(..., chunk_tokens=...)`, the LM head and log-softmax in chunks of
    `chunk_tokens` completion tokens, never a float32 [N, T, V] logits tensor;
  - naive: `model(input_ids).logits.float()`, sliced to the completion, then `log_softmax(-1).gather(...)`, the
    computation most RL fine-tuning code runs;
in two modes: "fwd+bwd" (loss = -(logprobs * mask).sum(), then backward: the policy update) and "fwd" (under
no_grad: the reference-model / old-policy pass).

Model: a transformers Llama config built with AutoModelForCausalLM.from_config (hidden `--hidden`, `--layers`
layers, untied embeddings, random weights, float32; nothing is downloaded). Inputs: N = `--rows` rows with
distinct random prompts of `--prompt` tokens and T = `--tokens` completion tokens, no padding.

Each (method, V, mode) runs in a fresh subprocess (`--one`), so that one measurement's allocations and the
allocator's cached pages cannot leak into the next. On CPU the figure is the peak resident set size during the
pass (VmHWM, the counter behind ru_maxrss, reset to the current RSS first) minus the resident size right after the
model and inputs were built and one tiny warm-up pass ran (torch's CPU allocator is invisible to tracemalloc);
the child runs with a fixed glibc mmap threshold so that freed tensors leave the RSS (see `child_env`). On CUDA
it is torch.cuda.max_memory_allocated minus memory_allocated at the same point. Before measuring, the script
checks on a small vocabulary that both methods give the same log-probs (1e-4) and the same LM-head gradient, so
the figures compare like with like. Wall times are printed for information only. The default sizes took 3.3 minutes
on 2 CPU cores (8.5 minutes while other jobs shared the cores).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import resource
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = ("naive", "inferl")
MODES = ("fwd+bwd", "fwd")
MIB = 2 ** 20


@dataclass(frozen=True)
class Workload:
    vocab: int
    rows: int
    prompt: int
    tokens: int
    hidden: int
    layers: int
    chunk_tokens: int


Inputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def build_model(work: Workload, device: str) -> torch.nn.Module:
    """A randomly initialised float32 Llama with an untied LM head of `work.vocab` rows (seed 0)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=work.vocab, hidden_size=work.hidden, num_hidden_layers=work.layers,
                         num_attention_heads=4, num_key_value_heads=4, intermediate_size=4 * work.hidden,
                         max_position_embeddings=work.prompt + work.tokens, tie_word_embeddings=False,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).to(device=device, dtype=torch.float32)


def build_inputs(work: Workload, device: str) -> Inputs:
    """Distinct random prompts (so neither method shares a prompt pass) and completions, all tokens real."""
    generator = torch.Generator().manual_seed(1)
    prompt_ids = torch.randint(3, work.vocab, (work.rows, work.prompt), generator=generator)
    completion_ids = torch.randint(3, work.vocab, (work.rows, work.tokens), generator=generator)
    tensors = (prompt_ids, torch.ones_like(prompt_ids), completion_ids, torch.ones_like(completion_ids))
    return tuple(t.to(device) for t in tensors)


def naive_logprobs(model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                   completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Log-probs [N, T] from the full float32 logits of prompt + completion, as most RL code computes them."""
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention = torch.cat([prompt_mask, completion_mask], dim=1)
    logits = model(input_ids=input_ids, attention_mask=attention).logits.float()
    width = prompt_ids.shape[1]
    logits = logits[:, width - 1: width - 1 + completion_ids.shape[1]]  # position P-1+j predicts token j
    return logits.log_softmax(-1).gather(-1, completion_ids[..., None]).squeeze(-1) * completion_mask


def load_token_logprobs():
    """modules.logprobs.token_logprobs, loaded from its file: importing the `modules` package pulls in lightning
    (5-10 s a process here, times 17 processes), which the log-prob pass does not use."""
    name = "modules.logprobs"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "modules" / "logprobs.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name].token_logprobs


def method_logprobs(method: str, model: torch.nn.Module, inputs: Inputs, chunk_tokens: int) -> torch.Tensor:
    if method == "naive":
        return naive_logprobs(model, *inputs)
    return load_token_logprobs()(model, *inputs, chunk_tokens=chunk_tokens)[0]


def run_pass(method: str, mode: str, model: torch.nn.Module, inputs: Inputs, chunk_tokens: int) -> None:
    """The measured work: the log-prob pass, and for "fwd+bwd" the backward of the summed masked log-probs."""
    if mode == "fwd":
        with torch.no_grad():
            method_logprobs(method, model, inputs, chunk_tokens)
        return
    logprobs = method_logprobs(method, model, inputs, chunk_tokens)
    loss = -(logprobs * inputs[3]).sum()
    loss.backward()


def check_equal(chunk_tokens: int, device: str) -> None:
    """Both methods agree on a small vocabulary: log-probs to 1e-4 and the LM head's gradient to 1e-4, through
    several chunks (the recompute-in-backward path) and through the bench's own chunk size."""
    work = Workload(vocab=1000, rows=2, prompt=5, tokens=48, hidden=64, layers=2, chunk_tokens=chunk_tokens)
    token_logprobs = load_token_logprobs()
    model, inputs = build_model(work, device), build_inputs(work, device)
    expected = naive_logprobs(model, *inputs)
    (-expected.sum()).backward()
    expected_grad = model.get_output_embeddings().weight.grad.clone()
    for chunk in (7, chunk_tokens):
        model.zero_grad(set_to_none=True)
        got = token_logprobs(model, *inputs, chunk_tokens=chunk)[0]
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
        (-got.sum()).backward()
        torch.testing.assert_close(model.get_output_embeddings().weight.grad, expected_grad, atol=1e-4, rtol=1e-4)
        with torch.no_grad():
            torch.testing.assert_close(token_logprobs(model, *inputs, chunk_tokens=chunk)[0], expected.detach(),
                                       atol=1e-4, rtol=0)


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field}")
    return int(match.group(1))


def reset_cpu_peak() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux clear_refs "5"). Without it the peak would
    include model initialisation's transient buffers."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def cpu_peak_kib() -> int:
    """Peak RSS of this process in KiB: VmHWM, the counter behind ru_maxrss, but of this address space only;
    ru_maxrss (KiB on Linux) also keeps the peak of the address space the process had before exec, the parent's
    after a fork, which a reset cannot clear."""
    try:
        return _status_kib("VmHWM")
    except (OSError, RuntimeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def warm_up(method: str, mode: str, model: torch.nn.Module, inputs: Inputs, chunk_tokens: int) -> None:
    """The same pass on 4 + 4 tokens: lazy one-time set-up (thread pools, kernels) is not the pass's memory."""
    short = tuple(t[:, -4:] if i < 2 else t[:, :4] for i, t in enumerate(inputs))
    run_pass(method, mode, model, short, chunk_tokens)
    model.zero_grad(set_to_none=True)


def start_peak(device: str) -> tuple[float, bool]:
    """Start counting the peak here: (memory now in MiB, whether the peak mark could be reset to it)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / MIB, True
    reset = reset_cpu_peak()
    return _status_kib("VmRSS") / 1024, reset


def peak_mib(device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / MIB
    return cpu_peak_kib() / 1024


def measure_one(method: str, mode: str, work: Workload, device: str) -> dict:
    """Build, warm up, run one pass, and return the extra peak memory in MiB and the pass's wall time."""
    model, inputs = build_model(work, device), build_inputs(work, device)
    warm_up(method, mode, model, inputs, work.chunk_tokens)
    base, reset = start_peak(device)
    start = time.perf_counter()
    run_pass(method, mode, model, inputs, work.chunk_tokens)
    peak = peak_mib(device)  # synchronises on CUDA, so the time below covers the kernels
    seconds = time.perf_counter() - start
    return {"delta_mib": peak - base, "base_mib": base, "seconds": seconds, "peak_reset": reset}


def child_env() -> dict[str, str]:
    """The environment of a measuring child. A fixed glibc mmap threshold (1 MiB) keeps every tensor of 1 MiB
    or more in its own mapping, returned to the system when freed: by default glibc raises the threshold to
    the size of the last freed block (up to 32 MiB), after which blocks up to that size are carved from the heap
    and stay resident after free, so peak RSS would depend on whether a buffer is just under or just over 32 MiB
    (with V = 32000, one [256, V] float32 chunk is 31.25 MiB) rather than on the live tensors."""
    return {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MIB)}


def spawn_one(method: str, mode: str, work: Workload, device: str) -> dict:
    """One measurement in a fresh interpreter; it prints a JSON line as its last output."""
    command = [sys.executable, str(Path(__file__).resolve()), "--one", method, mode, "--device", device,
               "--vocab", str(work.vocab), "--rows", str(work.rows), "--prompt", str(work.prompt),
               "--tokens", str(work.tokens), "--hidden", str(work.hidden), "--layers", str(work.layers),
               "--chunk-tokens", str(work.chunk_tokens)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=child_env())
    if done.returncode != 0:
        raise RuntimeError(f"{method} {mode} V={work.vocab} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def logits_mib(work: Workload) -> float:
    """One float32 [N*T, V] tensor: the unit the naive pass allocates several of."""
    return work.rows * work.tokens * work.vocab * 4 / MIB


def table(rows: list[tuple[Workload, str, dict, dict]]) -> str:
    lines = ["| V | mode | naive MiB | inferl MiB | ratio naive/inferl | 1 x fp32 [N*T, V] MiB | naive s | inferl s |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for work, mode, naive, ours in rows:
        ratio = naive["delta_mib"] / ours["delta_mib"] if ours["delta_mib"] > 0 else float("inf")
        lines.append(f"| {work.vocab} | {mode} | {naive['delta_mib']:.0f} | {ours['delta_mib']:.0f} | {ratio:.1f} "
                     f"| {logits_mib(work):.0f} | {naive['seconds']:.1f} | {ours['seconds']:.1f} |")
    return "\n".join(lines)


def shown_command() -> str:
    """The command as typed, with the interpreter relative to the working directory when it lies under it."""
    python = Path(sys.executable)
    try:
        python = python.relative_to(Path.cwd())
    except ValueError:
        pass
    return shlex.join([str(python), *sys.argv])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, nargs="+", default=[32000, 65536, 100000, 151936])
    parser.add_argument("--tokens", type=int, default=1024, help="completion tokens T per row")
    parser.add_argument("--rows", type=int, default=2, help="sequences N")
    parser.add_argument("--prompt", type=int, default=16, help="prompt tokens per row")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--chunk-tokens", type=int, default=256, help="inferl's chunk_tokens")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    return args


def workload(args: argparse.Namespace, vocab: int) -> Workload:
    return Workload(vocab=vocab, rows=args.rows, prompt=args.prompt, tokens=args.tokens, hidden=args.hidden,
                    layers=args.layers, chunk_tokens=args.chunk_tokens)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.check:
        check_equal(args.chunk_tokens, args.device)
        return
    if args.one:
        method, mode = args.one
        print(json.dumps(measure_one(method, mode, workload(args, args.vocab[0]), args.device)))
        return
    print(f"$ {shown_command()}")
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, float32; "
          f"N={args.rows} rows x T={args.tokens} completion tokens (+{args.prompt} prompt), hidden {args.hidden}, "
          f"{args.layers} layers, inferl chunk_tokens={args.chunk_tokens}")
    # run the check in a child too, so this process stays small and its peak cannot reach the measured children
    check = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--check", "--device", args.device,
                            "--chunk-tokens", str(args.chunk_tokens)], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        raise SystemExit(f"naive and inferl log-probs differ:\n{check.stderr[-4000:]}")
    print("check: inferl log-probs equal naive to 1e-4 (V=1000, fwd and fwd+bwd, LM-head gradient too)")
    rows = []
    for vocab in args.vocab:
        work = workload(args, vocab)
        for mode in MODES:
            naive, ours = (spawn_one(method, mode, work, args.device) for method in METHODS)
            if not (naive["peak_reset"] and ours["peak_reset"]):
                print(f"note: peak RSS could not be reset (V={vocab}, {mode}); the delta may include model setup")
            print(f"V={vocab} {mode}: naive {naive['delta_mib']:.0f} MiB in {naive['seconds']:.1f} s, "
                  f"inferl {ours['delta_mib']:.0f} MiB in {ours['seconds']:.1f} s "
                  f"(base {ours['base_mib']:.0f} MiB)", flush=True)
            rows.append((work, mode, naive, ours))
    unit = "CUDA max_memory_allocated" if args.device == "cuda" else "CPU peak RSS"
    print(f"\nExtra memory of the pass ({unit} minus the same after building model and inputs):\n")
    print(table(rows))


if __name__ == "__main__":
    main()
