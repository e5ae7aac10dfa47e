#!/usr/bin/env bash
# GPU check of `mucosa train` (run from the repository root on a machine with one CUDA GPU, PyTorch and
# Lightning installed; monai is installed from wheels in .whl/ when the machine has no package index).
# Trains the paper's config at 300x300 on a synthetic cohort in fp32 and bf16-mixed, evaluates, and times a
# bare training step at batch 16 and 64. Used once in session 1 on an H100 (about 1,900 images/s at 16).
if ls .whl/*.whl >/dev/null 2>&1; then python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1; fi
export PYTHONPATH=/tmp/site:$PWD/src
export PYTHONUNBUFFERED=1 MUCOSA_CACHE=/tmp/cache
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 -c "import torch, lightning, monai; print(torch.__version__, lightning.__version__, monai.__version__, torch.cuda.is_available())"
python3 -m mucosa synth /tmp/syn --patients 12 --per-patient 40 --size 300 --seed 0 | tail -1
# the paper's settings at 300x300 on one GPU, 3 epochs; then bf16 mixed precision
python3 -m mucosa train --manifest /tmp/syn/manifest.csv --config configs/paper.yaml --epochs 3 --accelerator gpu --devices 1 --workers 4 --out /tmp/run-gpu 2>&1 | grep -v "it/s" | tail -15
cat /tmp/run-gpu/metrics.csv
python3 -m mucosa train --manifest /tmp/syn/manifest.csv --config configs/paper.yaml --epochs 3 --accelerator gpu --devices 1 --workers 4 --precision bf16-mixed --out /tmp/run-bf16 2>&1 | grep -v "it/s" | tail -4
cat /tmp/run-bf16/metrics.csv
python3 -m mucosa evaluate --checkpoint /tmp/run-gpu/best.ckpt --manifest /tmp/syn/manifest.csv --out /tmp/ev --bootstrap 200 2>&1 | tail -3
[ -n "${OUT:-}" ] && cp /tmp/run-gpu/metrics.csv /tmp/ev/metrics.json "$OUT"/
python3 benchmarks/gpu_train_step.py --models cnn-lstm --batches 16 64 --channels-last --warmup 5
