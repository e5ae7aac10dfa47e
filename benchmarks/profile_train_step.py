"""Where mucosa's fp32 training step spends its time: ``torch.profiler`` around the step of
``benchmarks/train_speed.py`` (same model, Lightning loop, batch 16, random inputs), ops grouped by kind.

    python benchmarks/profile_train_step.py SIZE [STEPS]      # e.g. 64, then 300

Self CPU times are summed over the profiled steps (warm-up included) and divided by their number; the
profiler slows the step down a little, and the images/s printed are those of the profiled run.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_speed  # noqa: E402

KINDS = {  # op-name fragments of each kind, first match wins
    "conv forward": ("mkldnn_convolution", "convolution_overrideable", "_convolution"),
    "conv backward": ("convolution_backward",),
    "LSTM": ("lstm", "rnn"),
    "dense (mm)": ("addmm", "aten::mm", "aten::bmm"),
    "batch norm": ("batch_norm",),
    "pooling": ("max_pool", "pool2d"),
    "ReLU, dropout, element-wise": ("relu", "threshold", "clamp", "mul", "add", "where", "bernoulli", "rand", "div",
                                    "sub"),
    "optimizer (Adam)": ("Adam", "_foreach", "lerp", "sqrt", "addcdiv", "addcmul"),
}


def kind_of(name: str) -> str:
    other = "other (copies, fills, hooks)"
    return next((kind for kind, parts in KINDS.items() if any(p in name for p in parts)), other)


def main() -> None:
    size = int(sys.argv[1])
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    spec = {"size": size, "batch": 16, "steps": steps, "warmup": 2, "ablate": [], "precision": "32-true",
            "compile": False}
    train_speed.measure_mucosa(dict(spec, steps=3))  # warm the process up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        tic = time.perf_counter()
        result = train_speed.measure_mucosa(spec)
        wall = time.perf_counter() - tic
    ran = spec["warmup"] + steps
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        kind = kind_of(event.key)
        totals[kind] = totals.get(kind, 0.0) + event.self_cpu_time_total / 1000 / ran
    everything = sum(totals.values())
    print(f"{size}x{size}, batch 16: {result['images_per_s']:.1f} images/s profiled; {wall:.2f} s for {ran} steps; "
          f"self CPU time per step {everything:.1f} ms (both threads)")
    for kind, ms in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"  {kind:32s} {ms:8.1f} ms  {100 * ms / everything:5.1f}%")


if __name__ == "__main__":
    main()
