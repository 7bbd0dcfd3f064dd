#!/usr/bin/env bash
# Over-optimization in the tiny world, single reward model against an ensemble under each aggregation.
#
#   bash benchmarks/overoptimization.sh            # about 30 minutes on 2 cores; reuses runs/tiny/* when present
#
# The setting where one RM is over-optimized (docs/results/main-job.md, "lever by lever"): the 3-epoch RM of
# recipes/tiny/rm.yaml at kl_coef 0.05. PPO runs four times from the same SFT model on the same prompts and budget:
# against that RM, and against an ensemble of 4 RMs (seeds and bootstrap resamples of the same rankings) read by its
# mean, its minimum and its mean minus one standard deviation. Every checkpoint is then judged by the noiseless
# rubric (the gold judge, as in Gao et al. 2022) on the 180 held-out prompts, and the table printed:
# gold score and share correct at the peak and at the end, and the KL at the peak.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=offline
OUT=${OUT:-runs/overopt}
for stage in pretrain sft collect rm; do
  [ -f "runs/tiny/$stage/instructgpt_run.json" ] || instructgpt "recipes/tiny/$stage.yaml" --report_to none
done
[ -f "$OUT/rm-ensemble/instructgpt_run.json" ] || instructgpt-rm recipes/tiny/rm.yaml --report_to none \
  --ensemble_size 4 --output_dir "$OUT/rm-ensemble"
run_ppo() {  # name, reward model, extra settings
  local name=$1 rm=$2; shift 2
  [ -f "$OUT/ppo-$name/instructgpt_run.json" ] || instructgpt-ppo recipes/tiny/ppo.yaml --report_to none \
    --reward_model_path "$rm" --kl_coef 0.05 --save_steps 3 --eval_num_prompts 0 --num_sample_generations 0 \
    --output_dir "$OUT/ppo-$name" "$@"
}
run_ppo single runs/tiny/rm
run_ppo mean "$OUT/rm-ensemble" --reward_aggregation mean
run_ppo min "$OUT/rm-ensemble" --reward_aggregation min
run_ppo mean_minus_std "$OUT/rm-ensemble" --reward_aggregation mean_minus_std --reward_std_coef 1.0
[ -f "$OUT/eval/results.json" ] || instructgpt eval --models sft=runs/tiny/sft --reference sft \
  --prompts data/tiny/eval_prompts.jsonl --labeler simulated --reward_model runs/tiny/rm --max_checkpoints 8 \
  --checkpoint_runs "single=$OUT/ppo-single" "mean=$OUT/ppo-mean" "min=$OUT/ppo-min" \
  "mean_minus_std=$OUT/ppo-mean_minus_std" --output_dir "$OUT/eval" --report_to none
python benchmarks/overoptimization_table.py "$OUT/eval/results.json"
