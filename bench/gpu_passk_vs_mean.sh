#!/usr/bin/env bash
# PassAtK(k = 4) against MeanReward on GSM8K with a 0.5B-1.5B instruct model on one GPU (H100/H200): bf16 autocast,
# vLLM rollouts colocated in the training process (configs/rollout/vllm.yaml), held-out validation on the GSM8K test
# split before and after. Sized for under 10 minutes on one H100 with Qwen2.5-0.5B-Instruct (two runs of 16 steps,
# 8 prompts x 16 samples, at most 384 new tokens; validation 64 prompts x 16 samples); larger models: fewer steps.
#
#   bash bench/gpu_passk_vs_mean.sh MODEL_FOLDER [OUT_DIR] [SEED]
#
# MODEL_FOLDER: a local Hugging Face folder (save_pretrained output: config.json, safetensors, tokenizer files, a chat
# template). Nothing is downloaded: GPU machines here reach no network, so the weights must be on the machine (the
# 0.5B model is about 1 GB in bf16, too large to travel with the checkout). The environment must have the project
# and CUDA vLLM installed: pip install -e '.[vllm]' (or the wheels carried beside the checkout).
# Prints the held-out pass@k / maj@k tables after training (and before, from the step-0 validation) and each
# run's wall time; the step-time breakdown is in TensorBoard (time/rollout, time/update) under OUT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:?usage: bash bench/gpu_passk_vs_mean.sh MODEL_FOLDER [OUT_DIR] [SEED]}
out=${2:-runs/gpu_passk_vs_mean}
seed=${3:-0}
[ -f "$model/config.json" ] || { echo "no model folder at $model (it needs config.json and the weights)" >&2; exit 2; }
python=${PYTHON:-python}
"$python" -c "import torch, vllm; assert torch.cuda.is_available(), 'no CUDA device'" \
  || { echo "this script needs a CUDA device and vLLM (pip install -e '.[vllm]')" >&2; exit 2; }
common=(--config configs/rollout/vllm.yaml
  --model.policy.init_args.name_or_path "$model" --model.policy.init_args.dtype float32
  --trainer.precision bf16-mixed --trainer.max_steps 16 --trainer.val_check_interval 16
  --trainer.num_sanity_val_steps -1 --checkpoint.every_n_train_steps 16
  --model.group.size 16 --model.group.sampling.max_new_tokens 384 --model.evaluation.samples 16
  --model.evaluation.pass_k 4 --model.optimizer.init_args.lr 1.0e-6 --model.rollout.init_args.gpu_memory_utilization 0.35
  --data.batch_size 8 --data.val_limit 64 --seed_everything "$seed" --model.group.seed "$seed" --data.seed "$seed"
  --trainer.logger.init_args.save_dir "$out")
for objective in mean_reward pass_at_k; do
  start=$(date +%s)
  "$python" -m app fit --config "configs/gsm8k/$objective.yaml" "${common[@]}" \
    --trainer.logger.init_args.name "$objective" --checkpoint.dirpath "$out/$objective/checkpoints"
  echo "$objective: $(( $(date +%s) - start )) s wall"
done
"$python" bench/compare_runs.py "MeanReward=$out/mean_reward/version_0" "PassAtK(4)=$out/pass_at_k/version_0" \
  --png "$out/passk_vs_mean.png" --title "GSM8K held-out, $(basename "$model"), seed $seed"
"$python" bench/compare_runs.py "MeanReward before=$out/mean_reward/version_0" --step first --png "$out/before.png"
