#!/usr/bin/env bash
# The GPU check: finishes within 8 minutes on one H100/H200. Run it from the repository root, in the
# environment the README installs, whenever a GPU is at hand, and put its output in the README:
#
#     bash bench/gpu_check.sh [OUT_DIR]        # default OUT_DIR: gpu-check-out
#
# 1. the crop matcher against the one-region reference (target: at least 20x on the GPU), and
# 2. the single-pass encoder against crops: bench/bench_matcher.py, ViT-B-16, 8 images x 100 proposals;
# 3. training throughput at batch 256: bench/bench_train.py (MPT and full finetune);
# 4. the controlled-world loop on the GPU: `dataengine demo`, then the world's encoder comparison.
#
# DEVICE=cpu SMOKE=1 runs the same steps, much smaller, on a CPU (to check the script itself).
set -euo pipefail
out=${1:-gpu-check-out}
device=${DEVICE:-cuda}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
if [[ -n "${SMOKE:-}" ]]; then
  images=2 proposals=10 batch=8 steps=2 scenes=24 clip=dataengine-tiny
else
  images=8 proposals=100 batch=256 steps=20 scenes=240 clip=ViT-B-16
fi

step() { echo; echo "== $1 ($(date -u +%H:%M:%S))"; }
failed=0
run() { "$@" || { echo "!! step failed with status $? (the check goes on)"; failed=1; }; }  # a slow step must not hide the others
step "machine"
python - <<'EOF'
import torch
print(f"torch {torch.__version__}; cuda: {torch.cuda.is_available()}"
      + (f" ({torch.cuda.get_device_name(0)}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)"
         if torch.cuda.is_available() else ""))
EOF

step "1-2. region encoders: one-region reference, crop matcher, single-pass ($clip, $images images x $proposals proposals)"
run timeout 120 bash -c "cd bench && python bench_matcher.py --clip $clip --device $device --images $images --proposals $proposals"

step "3. training throughput at batch $batch ($clip)"
run timeout 120 bash -c "cd bench && python bench_train.py --clip $clip --device $device --batch-size $batch --steps $steps --workers 4"

step "4a. the controlled-world demo (mine, mask prompt tuning, benchmark)"
run timeout 100 dataengine demo --out "$out/demo" --no-progress

step "4b. the world's encoders: crops against single-pass ($scenes scenes)"
run timeout 100 python -m finetune.world.encoders --out "$out/encoders" --scenes "$scenes" --encoders crops single-pass --no-progress

step "done"
exit $failed
