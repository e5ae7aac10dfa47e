"""Inference speed of the paper's CNN-LSTM: PyTorch eager vs mucosa's paths, and end-to-end streaming.

Prints, at 300x300 by default:

- images/s at batch 1 and 16 for
  ``torch-eager``: the mucosa model as built by ``create_model`` with PyTorch defaults (contiguous NCHW
  float input, ``torch.no_grad``, default threads) — the plain way to run it;
  ``torch-best``: mucosa's PyTorch path (``infer.TorchPredictor``: batch norms folded, channels-last,
  ``inference_mode``, uint8 frames in);
  ``onnx-fp32`` and ``onnx-int8``: ONNX Runtime on the exported graph (``export.to_onnx`` and
  ``export.quantize_int8``, static int8 calibrated here on random frames: speed does not depend on it);
  ``keras``: the paper's stack, the same network in Keras on TensorFlow (``benchmarks/keras_reference.py``:
  ``model.predict_on_batch`` of the frames scaled to [0, 1], Keras defaults), run in a process of its own
  with as many threads as PyTorch uses; every row then says how many times Keras' rate at its batch size
  it reaches (``vs Keras``). TensorFlow is an optional extra, never a dependency of mucosa:
  ``pip install -e '.[keras-reference]'``, or a venv of its own passed as ``--keras-python PATH``; without
  it the benchmark says so in one line and goes on without the ratio;
- end-to-end ``stream`` fps on a real pCLE video (decode + field-of-view crop + quality + inference +
  smoothing), with milliseconds per frame in each stage;
- the machine's fp32 matmul GFLOPS (best of torch and NumPy 2048x2048 matmuls; measured first, and again
  at the end to show how much the load moved it) and the share of it each path reaches, with the
  model's FLOPs per image counted analytically (a multiply-add is 2 FLOPs; convolutions and dense layers
  agree with ``torch.utils.flop_counter``, which does not count the LSTM's 13 MFLOPs; int8 paths are
  counted in the same FLOPs and may exceed the fp32 peak).

- the path ``--runtime auto`` (every command's default) chooses, printed first and measured as the
  ``default`` row: with ``--checkpoint`` a trained checkpoint's (e.g. the validated ``best.int8.onnx``
  training wrote beside it, which then is also the ``onnx-int8`` row), else the random model's (an fp32
  export made in memory).

Without ``--checkpoint`` the model has random weights (speed does not depend on them). Results vary with
the load of the machine: the load average is printed before and after. ``--json`` prints one JSON object per line.

    python benchmarks/inference_speed.py [--size 300] [--batches 1 16] [--checkpoint C.ckpt] [--impls ...]
        [--seconds 3] [--video PATH] [--no-stream] [--keras-python PATH | --no-keras] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from keras_reference import compare_params, keras_python, model_kwargs, run_keras

from mucosa.data.preparation import Preprocessing
from mucosa.inference.onnx import OnnxPredictor, quantize_int8, to_onnx
from mucosa.inference.onnx_files import int8_path
from mucosa.inference.pytorch import TorchPredictor
from mucosa.inference.runtime import describe, for_checkpoint, open_predictor
from mucosa.inference.stream import default_threads, stream
from mucosa.models.checkpoint import LoadedCheckpoint, load_checkpoint
from mucosa.models.networks import ModelConfig, create_model, feature_size

VIDEO = Path(__file__).resolve().parents[2] / "shared" / "data" / "pcle-colon" / "s01v01.mpeg"


def model_flops(config: ModelConfig) -> float:
    """FLOPs (2 per multiply-add) of one forward pass of one image, convolutions and dense layers."""
    s, flops = config.size, 0.0
    for c_in, c_out in ((config.in_channels, 32), (32, 32)):
        s -= 2
        flops += 2 * s * s * c_out * c_in * 9
    s //= 2
    for c_in, c_out in ((32, 64), (64, 128)):
        s -= 2
        flops += 2 * s * s * c_out * c_in * 9
    side = feature_size(config.size)
    if config.kind == "cnn-lstm":
        flops += 2 * side * (side * 128) * 128  # FC1 on each of the H' rows
        flops += 2 * side * 4 * config.lstm_units * (128 + config.lstm_units)  # LSTM gates per step
        flops += 2 * (config.lstm_units * 50 + 50 * config.num_outputs)
    else:
        flops += 2 * side * side * 128 * 128 + 2 * (128 * 50 + 50 * config.num_outputs)
    return flops


def matmul_gflops(seconds: float = 2.0, n: int = 2048) -> float:
    """Measured fp32 GFLOPS of large matmuls (torch and NumPy, all threads): the best of repeated runs."""
    best = 0.0
    for a, b in ((torch.rand(n, n), torch.rand(n, n)), (np.random.rand(n, n).astype(np.float32),) * 2):
        a @ b
        start = time.perf_counter()
        while time.perf_counter() - start < seconds / 2:
            tic = time.perf_counter()
            a @ b
            best = max(best, 2 * n**3 / (time.perf_counter() - tic) / 1e9)
    return best


def images_per_s(run, batch: int, seconds: float) -> float:
    """batch / median time of one call, over calls repeated for at least ``seconds`` (and 3 calls)."""
    run()
    times, start = [], time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < seconds:
        tic = time.perf_counter()
        run()
        times.append(time.perf_counter() - tic)
    return batch / float(np.median(times))


def implementations(size: int, trained: Path | None = None):
    """name -> (description, function of uint8 frames (N, S, S)) for each path measured, and the path
    ``--runtime auto`` (the default of every command) chooses for the checkpoint (``default``)."""
    torch.manual_seed(0)
    if trained is not None:
        checkpoint = load_checkpoint(trained)
        model = checkpoint.model
    else:
        model = create_model(ModelConfig(size=size)).eval()
        checkpoint = LoadedCheckpoint(model, model.config, ["control", "active"], Preprocessing(size=size), {},
                                      Path("random.ckpt"))
    eager = create_model(model.config).eval()
    eager.load_state_dict(model.state_dict())

    def run_eager(frames: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(frames.astype(np.float32) / 255.0)[:, None]  # (B, 1, S, S), contiguous NCHW
        with torch.no_grad():
            return torch.sigmoid(eager(x)[:, 0]).numpy()

    fp32 = to_onnx(checkpoint)
    beside = int8_path(checkpoint.path)
    if beside.is_file():  # the int8 model training wrote (calibrated on the run's validation frames)
        int8 = beside.read_bytes()
    else:
        calibration = np.random.default_rng(1).integers(0, 256, (16, size, size), dtype=np.uint8)
        int8 = quantize_int8(fp32, calibration)
    if trained is not None:
        default = open_predictor(trained, batch_size=16)
    else:
        default = for_checkpoint(checkpoint, batch_size=16, device="cpu")
    return checkpoint, {
        "torch-eager": ("mucosa model, PyTorch defaults (NCHW, no_grad)", run_eager),
        "torch-best": ("folded BN, channels_last, inference_mode", TorchPredictor(checkpoint, batch_size=16)),
        "onnx-fp32": ("ONNX Runtime fp32", OnnxPredictor(fp32, batch_size=16)),
        "onnx-int8": ("ONNX Runtime static int8 (QDQ)", OnnxPredictor(int8, batch_size=16)),
        "default": (f"--runtime auto: {describe(default.choice)}", default),
    }, {"onnx-fp32": fp32, "onnx-int8": int8}


def keras_rates(args, config: ModelConfig, peak: float, emit) -> dict[int, float]:
    """Keras' images/s at each batch size (its own process per batch), empty when TensorFlow is missing."""
    python, why = keras_python(args.keras_python)
    if python is None:
        emit({"bench": "keras", "skipped": why}, why)
        return {}
    rates, flops = {}, model_flops(config)
    for batch in args.batches:
        spec = {"mode": "infer", "size": args.size, "batch": batch, "calls": 3, "seconds": args.seconds,
                "threads": torch.get_num_threads(), "model": model_kwargs(config)}
        record = run_keras(python, spec)
        if "error" in record:
            emit({"bench": "keras", "skipped": record["error"]}, record["error"] + "; going on without it")
            return {}
        if not rates:
            line = compare_params(record, create_model(config))
            emit({"bench": "params", "size": args.size, "detail": line}, line)
        rate = rates[batch] = record["images_per_s"]
        share = rate * flops / 1e9 / peak
        description = (f"Keras {record['keras']} / TensorFlow {record['tensorflow']}, predict_on_batch, "
                       f"{record['threads']} threads")
        emit({**record, "gflops": round(rate * flops / 1e9, 1), "share_of_matmul_peak": round(share, 3),
              "description": description},
             f"{'keras':<12} batch {batch:>3}: {rate:7.1f} images/s  {rate * flops / 1e9:6.1f} GFLOPS "
             f"({100 * share:5.1f}% of matmul)  [{description}]")
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=300)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--seconds", type=float, default=3.0, help="minimum time per measurement")
    parser.add_argument("--video", type=Path, default=VIDEO)
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a trained checkpoint (its size is used): the default row then shows the path "
                        "--runtime auto picks for it, e.g. the int8 model training wrote beside it")
    parser.add_argument("--impls", nargs="+", default=None, help="measure only these rows (e.g. default onnx-int8)")
    parser.add_argument("--no-stream", action="store_true")
    parser.add_argument("--no-keras", action="store_true", help="leave out the Keras/TensorFlow reference")
    parser.add_argument("--keras-python", help="Python interpreter with TensorFlow for the Keras reference "
                        "(default: this one, when it can import TensorFlow)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args()
    if args.checkpoint is not None:
        args.size = load_checkpoint(args.checkpoint).preprocessing.size

    def emit(record: dict, text: str) -> None:
        print(json.dumps(record) if args.json else text, flush=True)

    load = os.getloadavg()
    config = ModelConfig(size=args.size)
    flops = model_flops(config)
    peak = matmul_gflops()
    import onnxruntime

    emit({"bench": "machine", "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
          "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "torch_threads": torch.get_num_threads(),
          "matmul_gflops": round(peak, 1), "model_gflops_per_image": round(flops / 1e9, 3),
          "load_before": [round(v, 2) for v in load]},
         f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime "
         f"{onnxruntime.__version__}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n"
         f"fp32 matmul (best of torch and NumPy, 2048^2): {peak:.1f} GFLOPS; model: {flops / 1e9:.3f} GFLOPs per "
         f"{args.size}x{args.size} image")
    keras = {} if args.no_keras else keras_rates(args, config, peak, emit)
    checkpoint, impls, onnx_models = implementations(args.size, args.checkpoint)
    default = impls["default"][1]
    emit({"bench": "default", "choice": default.choice}, f"default path (--runtime auto): {describe(default.choice)}")
    if args.impls:
        impls = {k: v for k, v in impls.items() if k in args.impls}
    rng = np.random.default_rng(0)
    for name, (description, run) in impls.items():
        for batch in args.batches:
            frames = rng.integers(0, 256, (batch, args.size, args.size), dtype=np.uint8)
            rate = images_per_s(lambda run=run, frames=frames: run(frames), batch, args.seconds)
            share = rate * flops / 1e9 / peak
            record = {"bench": "infer", "impl": name, "size": args.size, "batch": batch,
                      "images_per_s": round(rate, 2), "gflops": round(rate * flops / 1e9, 1),
                      "share_of_matmul_peak": round(share, 3), "description": description}
            vs_keras = ""
            if batch in keras:
                record["vs_keras"] = round(rate / keras[batch], 3)
                vs_keras = f" {rate / keras[batch]:5.2f}x Keras"
            emit(record, f"{name:<12} batch {batch:>3}: {rate:7.1f} images/s  {rate * flops / 1e9:6.1f} GFLOPS "
                         f"({100 * share:5.1f}% of matmul){vs_keras}  [{description}]")
    if not args.no_stream and args.video.is_file():
        threads = default_threads()
        streams = {"torch-best": lambda: TorchPredictor(checkpoint, batch_size=1, threads=threads),
                   "onnx-fp32": lambda: OnnxPredictor(onnx_models["onnx-fp32"], batch_size=1, threads=threads),
                   "onnx-int8": lambda: OnnxPredictor(onnx_models["onnx-int8"], batch_size=1, threads=threads),
                   "default": lambda: (open_predictor(args.checkpoint, batch_size=1, threads=threads)
                                       if args.checkpoint else for_checkpoint(checkpoint, batch_size=1,
                                                                              threads=threads, device="cpu"))}
        streams = {k: v for k, v in streams.items() if not args.impls or k in args.impls}
        for name, make in streams.items():
            summary = stream(make(), args.video)
            stages = {k: round(v, 2) for k, v in summary.stage_ms().items()}
            latency = float(np.median(summary.latency_ms[summary.buffered:]))  # after the field-of-view buffer
            emit({"bench": "stream", "impl": name, "size": args.size, "batch": 1, "threads": threads,
                  "fps": round(summary.fps, 2), "frames": summary.frames, "used": summary.used,
                  "latency_ms_median": round(latency, 2), "stage_ms": stages,
                  "video": str(args.video)},
                 f"stream {name:<10}: {summary.fps:6.1f} fps end to end ({summary.frames} frames, {summary.used} "
                 f"inferred, {threads} inference thread(s)); median latency {latency:.1f} ms after the first "
                 f"{summary.buffered} frames; ms/frame: "
                 + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    torch.set_num_threads(os.cpu_count() or 1)
    load, after = os.getloadavg(), matmul_gflops()
    emit({"bench": "load", "load_after": [round(v, 2) for v in load], "matmul_gflops_after": round(after, 1)},
         f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; fp32 matmul now {after:.1f} GFLOPS"
         + (f" (shares above used {peak:.1f})" if after <= peak else
            f" (higher than before: the shares above are {peak / after:.2f}x as large against it)"))


if __name__ == "__main__":
    main()
