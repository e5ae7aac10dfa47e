"""Training speed of the paper's CNN-LSTM: mucosa's training step vs Keras/TensorFlow and plain eager PyTorch.

A training step is forward + BCE-with-logits loss + backward + Adam step on random inputs, batch 16.

- ``mucosa``: the real thing: ``mucosa.models.training.FrameClassifierModule`` (the model from ``create_model``, its
  channels_last setting, loss and Adam) run by a Lightning ``Trainer`` with the settings ``mucosa train``
  passes (CPU, ``precision``); each ``training_step`` is timed from a callback (``on_train_batch_start`` to
  ``on_train_batch_end``: zero_grad, forward, loss, backward, optimizer step). ``--precision`` chooses
  ``32-true`` (the default of ``TrainingConfig``) and/or ``bf16-mixed``.
- ``keras``: the paper's stack, the same network in Keras on TensorFlow, trained with ``model.fit`` (Adam
  1e-3, BCE from logits, Keras defaults otherwise; ``benchmarks/keras_reference.py``), with the same number
  of threads. Its parameter counts are checked against mucosa's model. TensorFlow is an optional extra,
  never a dependency of mucosa: ``pip install -e '.[keras-reference]'``, or a venv of its own passed as
  ``--keras-python /work/tfvenv/bin/python``. Without it the benchmark says so in one line and goes on
  without the ``vs Keras`` column.
- ``eager``: the same network written the way a newcomer would (nn.Sequential conv stack, nn.LSTM,
  nn.Dropout, contiguous NCHW, default threads, fp32) in a plain loop.

Each measurement runs in its own Python process (allocator settings, thread pools and caches do not leak
from one to the next; TensorFlow and PyTorch never share one). After ``--warmup`` steps, ``--steps`` steps
are timed and images/s is batch / median step time. The machine is shared: a step during which other
processes used more than a quarter of a core is repeated (at most ``--steps`` extra steps); ``other_load``
says how many cores others used on average during the steps kept. ``--check`` first verifies that mucosa's
model and the eager one compute the same function.

    python benchmarks/train_speed.py [--sizes 300 128] [--batch 16] [--steps 5] [--json] [--check]
        [--keras-python PATH] [--impl keras mucosa eager] [--precision 32-true bf16-mixed]

For history only: the issue reported Keras/TensorFlow at 8.5 images/s (text) or 8.9 (table, TF 2.21) and
plain eager PyTorch at 3.5 images/s, 300x300, batch 16, on the development machine. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from keras_reference import compare_params, keras_check, keras_python, model_kwargs, run_keras
from step_clock import StepClock
from torch import nn

from mucosa.models.networks import ModelConfig, create_model, feature_size


class EagerCNNLSTM(nn.Module):
    """The CNN-LSTM as a newcomer writes it: plain modules, NCHW, nn.LSTM; same math as mucosa's model."""

    def __init__(self, size: int, conv_dropout: float = 0.25, dense_dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.BatchNorm2d(32, eps=1e-3), nn.Dropout(conv_dropout),
            nn.Conv2d(32, 64, 3), nn.ReLU(), nn.Conv2d(64, 128, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.BatchNorm2d(128, eps=1e-3), nn.Dropout(conv_dropout),
        )
        self.fc1 = nn.Linear(feature_size(size) * 128, 128)
        self.drop3 = nn.Dropout(dense_dropout)
        self.lstm = nn.LSTM(128, 100, batch_first=True)
        self.fc2 = nn.Linear(100, 50)
        self.drop4 = nn.Dropout(dense_dropout)
        self.fc3 = nn.Linear(50, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = x.mean(dim=(1, 2, 3), keepdim=True), x.std(dim=(1, 2, 3), keepdim=True)
        f = self.features((x - mean) / (std + 1e-3))  # per-image standardisation, as mucosa's default
        seq = f.permute(0, 2, 3, 1).flatten(2)  # (B, H', W'*128): rows as time steps, channels fastest
        seq = self.drop3(F.relu(self.fc1(seq)))
        _, (h, _) = self.lstm(seq)
        return self.fc3(self.drop4(F.relu(self.fc2(h[-1]))))


EAGER_NAMES = {"features.0": "conv1", "features.2": "conv2", "features.5": "bn1", "features.7": "conv3",
               "features.9": "conv4", "features.12": "bn2"}


def mucosa_name(eager_name: str) -> str:
    """EagerCNNLSTM parameter/buffer name -> the mucosa model's name for the same tensor."""
    if eager_name.startswith("features."):
        head, index, rest = eager_name.split(".", 2)
        return f"{EAGER_NAMES[head + '.' + index]}.{rest}"
    return eager_name


def train_gflops(size: int) -> float:
    """GFLOPs of one training step per image: 3x the forward's convolutions and dense layers (forward,
    input gradient, weight gradient), less conv1's input gradient, which is not computed."""
    s, conv1, rest = size - 2, 0.0, 0.0
    conv1 = 2 * s * s * 32 * 9
    s -= 2
    rest += 2 * s * s * 32 * 32 * 9
    s //= 2
    for c_in, c_out in ((32, 64), (64, 128)):
        s -= 2
        rest += 2 * s * s * c_out * c_in * 9
    side = feature_size(size)
    rest += 2 * side * side * 128 * 128 + 2 * side * 4 * 100 * 228 + 2 * (100 * 50 + 50)
    return (2 * conv1 + 3 * rest) / 1e9


def measure_eager(spec: dict) -> dict:
    size, batch, steps = spec["size"], spec["batch"], spec["steps"]
    torch.manual_seed(0)
    model = EagerCNNLSTM(size).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.rand(batch, 1, size, size), torch.randint(0, 2, (batch,)).float()
    clock = StepClock()
    for i in range(spec["warmup"] + 2 * steps):
        timed = i >= spec["warmup"]
        clock.start()
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(x)[:, 0], y)
        loss.backward()
        opt.step()
        clock.stop(timed)
        if timed and clock.enough(steps):
            break
    return clock.result(batch, steps)


def measure_mucosa(spec: dict) -> dict:
    import lightning as L

    from mucosa.models.config import config_from_dict
    from mucosa.models.networks import FastDropout
    from mucosa.models.trainer import quiet_lightning
    from mucosa.models.training import FrameClassifierModule

    size, batch, steps, warmup, ablate = spec["size"], spec["batch"], spec["steps"], spec["warmup"], spec["ablate"]
    quiet_lightning()
    training = {"batch_size": batch, "precision": spec["precision"], "channels_last": "channels_last" not in ablate}
    config = config_from_dict({"model": {"size": size}, "training": training})
    if "allocator" in ablate:
        FrameClassifierModule.keep_freed_memory = staticmethod(lambda keep: False)
    if "onednn" in ablate:
        torch.backends.mkldnn.enabled = False
    torch.manual_seed(0)
    module = FrameClassifierModule(config, ["control", "active"], [1, 1], {})
    if "dropout" in ablate:
        for name, layer in list(module.model.named_children()):
            if isinstance(layer, FastDropout):
                setattr(module.model, name, nn.Dropout(layer.p))
    if spec["compile"]:
        module.model = torch.compile(module.model)
    x, y = torch.rand(batch, 1, size, size), torch.randint(0, 2, (batch,))
    batches = [(x, y, torch.arange(batch))] * (warmup + 2 * steps)
    clock = StepClock()

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            clock.start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            clock.stop(batch_idx >= warmup)
            if batch_idx >= warmup and clock.enough(steps):
                trainer.should_stop = True

    trainer = L.Trainer(accelerator="cpu", devices=1, precision=spec["precision"], max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=[Clock()])
    trainer.fit(module, torch.utils.data.DataLoader(batches, batch_size=None))
    return clock.result(batch, steps)


def peak_rss_mb() -> int:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from the parent's fork)."""
    with open("/proc/self/status") as handle:
        kib = next(int(line.split()[1]) for line in handle if line.startswith("VmHWM:"))
    return round(kib / 1024)


def worker(spec: dict) -> None:
    """Run one measurement (in a fresh process) and print its JSON record."""
    if spec["interop_threads"]:
        torch.set_num_interop_threads(spec["interop_threads"])
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    result = (measure_eager if spec["impl"] == "eager" else measure_mucosa)(spec)
    record = {"bench": "train", "impl": spec["impl"], "size": spec["size"], "batch": spec["batch"],
              "precision": spec["precision"], **result, "threads": torch.get_num_threads(),
              "gflops": round(train_gflops(spec["size"]) * result["images_per_s"], 1),
              "peak_rss_mb": peak_rss_mb()}
    if spec["ablate"]:
        record["ablate"] = spec["ablate"]
    if spec["compile"]:
        record["compile"] = True
    print(json.dumps(record), flush=True)


def _loss_and_grads(size: int, batch: int, dtype: torch.dtype, bf16: bool = False) -> tuple[list, list]:
    """Loss and gradients of mucosa's model (channels_last) and of EagerCNNLSTM with the same weights."""
    torch.manual_seed(0)
    model = create_model(ModelConfig(size=size, conv_dropout=0.0, dense_dropout=0.0)).train()
    model = model.to(dtype=dtype, memory_format=torch.channels_last)
    eager = EagerCNNLSTM(size, 0.0, 0.0).train().to(dtype)
    state = model.state_dict()
    eager.load_state_dict({name: state[mucosa_name(name)] for name in eager.state_dict()})
    x = torch.rand(batch, 1, size, size, dtype=dtype)
    y = torch.tensor([0.0, 1.0] * (batch // 2), dtype=dtype)
    losses, grads = [], []
    for net, inp in ((model, x.contiguous(memory_format=torch.channels_last)), (eager, x)):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16 and net is model):
            loss = F.binary_cross_entropy_with_logits(net(inp)[:, 0], y)
        loss.backward()
        losses.append(loss.item())
        named = dict(net.named_parameters())
        grads.append(torch.cat([named[n if net is eager else mucosa_name(n)].grad.flatten()
                                for n, _ in eager.named_parameters()]))
    return losses, grads


def check(size: int = 64, batch: int = 4) -> list[tuple[str, str, str]]:
    """(name, "ok" / "FAIL" / "info", detail): does mucosa's step compute what the eager network does?"""
    from mucosa.models.networks import FastDropout

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return ((a - b).norm() / b.norm()).item()

    results = []
    losses, grads = _loss_and_grads(size, batch, torch.float64)  # no rounding: exact same math expected
    diff = max(abs(losses[0] - losses[1]), rel(grads[0], grads[1]))
    results.append(("float64: loss and gradients of mucosa's model = eager network", "ok" if diff < 1e-10 else
                    "FAIL", f"largest difference {diff:.1e}"))
    losses, grads = _loss_and_grads(size, batch, torch.float32)
    diff = rel(grads[0], grads[1])
    results.append(("float32: same, channels_last vs NCHW rounding (a ReLU whose input is within ~1e-6 of 0 "
                    "may flip)", "ok" if abs(losses[0] - losses[1]) < 1e-5 and diff < 1e-2 else "FAIL",
                    f"losses {losses[0]:.7f} / {losses[1]:.7f}, gradients relative L2 {diff:.1e}"))
    torch.manual_seed(1)
    drop = FastDropout(0.25).train()
    v = (torch.rand(16, 128, 72, 72) + 0.5).contiguous(memory_format=torch.channels_last).requires_grad_()
    out = drop(v)
    keep = out != 0
    out.backward(torch.ones_like(out))
    rate = keep.float().mean().item()
    exact = torch.equal(out[keep], v[keep] * (4 / 3)) and torch.equal(v.grad, keep * (4 / 3))
    results.append(("FastDropout(0.25): keep rate, kept values and gradient x 4/3",
                    "ok" if abs(rate - 0.75) < 2e-3 and exact else "FAIL", f"keep rate {rate:.4f}"))
    losses, grads = _loss_and_grads(size, batch, torch.float32, bf16=True)
    cos = F.cosine_similarity(grads[0], grads[1], dim=0).item()
    results.append(("bf16-mixed vs float32 (not exact by design)", "info",
                     f"losses {losses[0]:.4f} / {losses[1]:.4f}, gradient cosine {cos:.4f}, relative L2 "
                     f"{rel(grads[0], grads[1]):.3f}"))
    return results


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    name = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "unknown")
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), [])
    onednn = next((part.split()[0] for part in torch.__config__.show().split("MKL-DNN ")[1:]), "?")
    return {"bench": "machine", "cpu": name, "cpus": os.cpu_count(), "torch": torch.__version__,
            "onednn": onednn, "avx512_bf16": "avx512_bf16" in flags, "amx": "amx_bf16" in flags,
            "load": [round(v, 2) for v in os.getloadavg()]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 128])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement (median)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--impl", nargs="+", choices=["keras", "mucosa", "eager"], default=["keras", "mucosa", "eager"])
    parser.add_argument("--precision", nargs="+", choices=["32-true", "bf16-mixed"],
                        default=["32-true", "bf16-mixed"], help="mucosa's precision(s); eager is always fp32")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    parser.add_argument("--interop-threads", type=int, default=0)
    parser.add_argument("--keras-python", help="Python interpreter with TensorFlow for the Keras reference "
                        "(default: this one, when it can import TensorFlow)")
    parser.add_argument("--ablate", nargs="+", default=[], choices=["allocator", "dropout", "channels_last", "onednn"],
                        help="turn off these mucosa optimisations (to measure what each one brings)")
    parser.add_argument("--compile", action="store_true", help="torch.compile mucosa's model (experiment)")
    parser.add_argument("--check", action="store_true", help="verify equivalence before timing")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return

    def emit(record: dict, text: str) -> None:
        print(json.dumps(record) if args.json else text, flush=True)

    info = machine()
    emit(info, f"{info['cpu']}, {info['cpus']} CPUs, torch {info['torch']}, oneDNN {info['onednn']}, "
               f"avx512_bf16 {'yes' if info['avx512_bf16'] else 'no'}, AMX {'yes' if info['amx'] else 'no'}; "
               f"load average {info['load']}")
    keras = None
    if "keras" in args.impl:
        keras, why = keras_python(args.keras_python)
        if keras is None:
            emit({"bench": "keras", "skipped": why}, why)
    if args.check:
        results = check()
        if keras is not None:
            results.append(("Keras reference, given mucosa's weights: same logits (inference mode)",
                            *keras_check(keras)))
        for name, status, detail in results:
            emit({"bench": "check", "check": name, "status": status, "detail": detail},
                 f"check {status:4} {name}: {detail}")
        if any(status == "FAIL" for _, status, _ in results):
            sys.exit(1)
    if not args.json:
        print(f"{'size':>4}  {'impl':7} {'precision':10} {'images/s':>8} {'step s':>7} {'GFLOP/s':>7} "
              f"{'vs eager':>8} {'vs Keras':>8} {'others':>6}  first step s")
    for size in args.sizes:
        keras = run_size(args, size, keras, emit)
    if not args.json:
        print(f"load average after: {[round(v, 2) for v in os.getloadavg()]}")


def run_size(args: argparse.Namespace, size: int, keras: str | None, emit) -> str | None:
    """Measure every implementation at one size, each in its own process; returns the Keras interpreter
    still to use (None once the Keras reference failed: it is not tried again)."""
    rates: dict[str, float] = {}
    runs = [("eager", "32-true")] * ("eager" in args.impl) + [("keras", "32-true")] * (keras is not None) + [
        ("mucosa", p) for p in args.precision] * ("mucosa" in args.impl)
    for impl, precision in runs:
        spec = {"impl": impl, "size": size, "batch": args.batch, "steps": args.steps, "warmup": args.warmup,
                "precision": precision, "threads": args.threads, "interop_threads": args.interop_threads,
                "ablate": args.ablate if impl == "mucosa" else [], "compile": args.compile and impl == "mucosa"}
        record = measure_keras(spec, keras, emit) if impl == "keras" else measure_torch(spec)
        if record is None:
            keras = None
            continue
        rates.setdefault(impl, record["images_per_s"])
        vs = {name: record["images_per_s"] / rates[name] for name in ("eager", "keras") if name in rates}
        if "keras" in vs:
            record["vs_keras"] = round(vs["keras"], 3)
        columns = " ".join(f"{vs[name]:7.2f}x" if name in vs else "       -" for name in ("eager", "keras"))
        flag = " (contended)" if record["contended"] else ""
        emit(record, f"{size:4d}  {impl:7} {precision:10} {record['images_per_s']:8.2f} {record['step_s']:7.3f} "
                     f"{record['gflops']:7.1f} {columns} {record['other_load']:6.2f}  "
                     f"{record['first_step_s']:.1f}{flag}")
    return keras


def measure_torch(spec: dict) -> dict:
    """One PyTorch measurement (mucosa or eager) in a fresh process of this interpreter."""
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{spec['impl']} at {spec['size']}x{spec['size']} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_keras(spec: dict, python: str, emit) -> dict | None:
    """The Keras reference in its own process (``python``), same size, batch, steps and thread count; its
    parameter counts checked against mucosa's model. None (after one line saying why) when it failed."""
    config = ModelConfig(size=spec["size"])
    keras_spec = {"mode": "train", "size": spec["size"], "batch": spec["batch"], "steps": spec["steps"],
                  "warmup": spec["warmup"], "threads": spec["threads"] or torch.get_num_threads(),
                  "interop_threads": spec["interop_threads"], "model": model_kwargs(config)}
    record = run_keras(python, keras_spec)
    if "error" in record:
        emit({"bench": "keras", "skipped": record["error"]}, record["error"] + "; going on without it")
        return None
    line = compare_params(record, create_model(config))
    emit({"bench": "params", "size": spec["size"], "detail": line}, f"{spec['size']:4d}  {line}")
    record["gflops"] = round(train_gflops(spec["size"]) * record["images_per_s"], 1)
    return record


if __name__ == "__main__":
    main()
