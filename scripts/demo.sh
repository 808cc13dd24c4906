#!/usr/bin/env bash
# The main job on a small default, end to end. It grows as the stack grows:
# collect demos -> train -> evaluate -> export -> run over ROS 2.
# Sizes are small so it finishes in a few minutes on 2 CPU cores; scale them with the variables below.
set -euo pipefail
out=${1:-demo}
episodes=${DEMO_EPISODES:-20}
steps=${DEMO_STEPS:-300}
eval_episodes=${DEMO_EVAL_EPISODES:-4}
dpstack=.venv/bin/dpstack
mkdir -p "$out"

echo "== 1. collect $episodes Push-T expert demonstrations (resumes if $out/pusht.zarr exists)"
$dpstack collect task=pusht episodes="$episodes" out="$out/pusht.zarr" workers=2 progress=false \
  | .venv/bin/python -c 'import json,sys; s=json.load(sys.stdin); print({k: s[k] for k in ("episodes_stored","success_rate","mean_steps","cpu_s_per_episode")})'

echo "== 2. inspect the episode store"
$dpstack dataset info "$out/pusht.zarr" | head -n 8

echo "== 3. train a small streaming U-Net Diffusion Policy for $steps steps"
rm -rf "$out/run"
$dpstack train task=pusht policy=unet-streaming dataset="$out/pusht.zarr" out="$out/run" steps="$steps" \
  warmup_steps=50 val_every=100 checkpoint_every=100 eval_episodes=0 progress=false

echo "== 4. evaluate it in closed loop: DDIM-10, then the streaming sampler ($eval_episodes episodes from seed 100000)"
$dpstack eval checkpoint="$out/run" episodes="$eval_episodes" sampler=ddim out="$out/eval-ddim" videos=1 progress=false
$dpstack eval checkpoint="$out/run" episodes="$eval_episodes" sampler=streaming out="$out/eval" videos=1 progress=false

echo "== 5. export it to ONNX (streaming, 3 levels: one network call per 5-action tick) and evaluate it without PyTorch"
rm -rf "$out/onnx"
$dpstack export checkpoint="$out/run" sampler=streaming sampler.num_inference_steps=3 out="$out/onnx"
$dpstack eval checkpoint="$out/onnx" backend=onnx episodes="$eval_episodes" out="$out/eval-onnx" videos=0 progress=false

echo "== 6. the same export over ROS 2: policy node + simulator bridge as two processes (lockstep on /clock)"
$dpstack ros loop "$out/onnx" episodes=2 real_time_factor=0 out="$out/eval-ros"

echo "demo finished: store $out/pusht.zarr, run $out/run (loss_curve.png), evals $out/eval* (eval.json, videos/), ONNX $out/onnx, ROS 2 $out/eval-ros"
echo "(a few hundred steps on 20 demos is a smoke run; see README 'Results and training budget' for real numbers)"
