#!/usr/bin/env bash
# The pCLE brain videos at the paper's 300x300 on one CUDA GPU (docs/results.md, "300×300 on a GPU").
#
# Run from the repository root on the GPU machine. It needs the videos in .gpudata/pcle-brain (a copy of
# ../shared/data/pcle-brain) and, where that machine lacks PyAV, MONAI or pydantic, their wheels in .whl/
# (docs/results.md gives the pip download command). Nothing is fetched from the network.
#
#   bash benchmarks/gpu_pcle300.sh setup                      # wheels -> /tmp/site; GPU facts; a bare step
#   bash benchmarks/gpu_pcle300.sh run SECONDS [PARALLEL] [SEED...]
#   bash benchmarks/gpu_pcle300.sh pack                       # results -> $OUT/pcle300.tgz
#
# `run` indexes and prepares the 20 videos on that machine (one process a video), then runs
# `benchmarks/real_data.py run pcle --only disc-300` (CNN-LSTM first, then the CNN; 5 video-grouped folds):
# one sweep alone until its first fold is evaluated (the solo timing), then PARALLEL sweeps side by side
# sharing the GPU (they split the runs through real_data.py's claim files). No run starts that would not
# end within SECONDS of the start, judged by the longest run so far. Extra `mucosa train` options (a dry
# run on a CPU, say) go in TRAIN_ARGS.
set -u
SITE=/tmp/site
RUNS=/tmp/real
OUTDIR=${OUT:-/tmp/out}
export PYTHONPATH=$SITE:$PWD/src PYTHONUNBUFFERED=1 MUCOSA_CACHE=/tmp/cache
mkdir -p "$OUTDIR" "$RUNS"

setup() {
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $SITE .whl/*.whl \
        || exit 1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    nproc
    python3 -c "import av, lightning, monai, pydantic, torch; print('torch', torch.__version__, 'lightning',
lightning.__version__, 'monai', monai.__version__, 'av', av.__version__, 'pydantic', pydantic.__version__, 'cuda',
torch.cuda.is_available(), torch.cuda.get_device_name(0))"
    python3 benchmarks/gpu_train_step.py  # CNN-LSTM and CNN at 300x300, batch 32 and 128
    # the whole command chain once on the GPU, tiny (synthetic cohort, one epoch)
    python3 -m mucosa synth /tmp/syn --patients 8 --per-patient 8 --size 64 --seed 0 | tail -1
    python3 -m mucosa train --manifest /tmp/syn/manifest.csv --size 64 --epochs 1 --workers 2 --no-onnx \
        --out /tmp/smoke 2>&1 | grep -v "it/s" | tail -3
    python3 -m mucosa evaluate --checkpoint /tmp/smoke/best.ckpt --manifest /tmp/syn/manifest.csv --runtime torch \
        --bootstrap 20 --gallery 0 --out /tmp/smoke-eval 2>&1 | tail -2
}

sweep() {  # one real_data.py sweep in the background, its log under $RUNS
    python3 benchmarks/real_data.py run pcle --only disc-300 --seeds "$1" --out $RUNS --data .gpudata \
        --threads 2 --workers 2 --deadline "$DEADLINE" --expect "${EXPECT:-0}" --train-args "${TRAIN_ARGS:-}" \
        >"$RUNS/sweep-$1-$2.log" 2>&1 &
}

run() {
    local budget=$1 parallel=${2:-5}
    shift 2 || shift $#
    local seeds=${*:-0}
    DEADLINE=$(($(date +%s) + budget))
    [ -d $SITE/av ] || python3 -c "import av" 2>/dev/null || { echo "PyAV missing: run setup first on this machine"; exit 3; }
    [ -d .gpudata/pcle-brain ] || { echo ".gpudata/pcle-brain missing"; exit 3; }
    python3 -m mucosa index .gpudata/pcle-brain -o $RUNS/pcle.csv | tail -1
    # one manifest a video beside pcle.csv (its paths are relative to it), prepared side by side
    head -1 $RUNS/pcle.csv >$RUNS/header.csv
    tail -n +2 $RUNS/pcle.csv | split -l 1 - $RUNS/video-
    for f in $RUNS/video-??; do cat $RUNS/header.csv "$f" >"$f.csv" && rm "$f"; done
    local t0=$SECONDS
    # configs/pcle.yaml's preprocessing at 300x300 (keep in step with it, or training prepares again)
    ls $RUNS/video-*.csv | xargs -P "$(nproc)" -I{} python3 -m mucosa prepare {} --size 300 --crop disc \
        --channel auto --quality 0.5 >$RUNS/prepare.log 2>&1
    echo "prepared 20 videos at 300x300 in $((SECONDS - t0)) s: $(du -sh /tmp/cache | cut -f1) of cache"
    nvidia-smi dmon -s u -d 2 >$RUNS/gpu-util.log 2>&1 &
    local dmon=$!
    for seed in $seeds; do
        local solo=$SECONDS
        EXPECT=0
        sweep "$seed" 1
        local first=$!
        local done=$RUNS/pcle/disc-300/cnn-lstm/seed$seed/fold0/eval/metrics.json
        while [ ! -f "$done" ] && kill -0 $first 2>/dev/null; do sleep 2; done
        EXPECT=$((SECONDS - solo))  # later sweeps start no run that this fold's time says cannot end
        echo "seed $seed fold 0 alone: $EXPECT s"
        for i in $(seq 2 "$parallel"); do sweep "$seed" "$i"; sleep 1; done
        local pids
        pids=$(jobs -p | grep -vx "$dmon")
        [ -z "$pids" ] || wait $pids
        grep -h " s$" $RUNS/sweep-"$seed"-*.log
    done
    kill $dmon 2>/dev/null || true
}

pack() {  # evaluations, logs, metrics and splits (no checkpoints, no cache)
    (cd $RUNS && find . \( -name '*.log' -o -name '*.csv' -o -name '*.json' -o -name 'config.yaml' \) \
        -not -path './pcle/*/*/*/*/*/eval/*.png' -print0 | tar czf "$OUTDIR/pcle300.tgz" --null -T -)
    ls -la "$OUTDIR"
}

case ${1:-} in
setup) setup ;;
run) shift; run "$@" ;;
pack) pack ;;
*) echo "usage: bash benchmarks/gpu_pcle300.sh setup | run SECONDS [PARALLEL] [SEED...] | pack"; exit 2 ;;
esac
