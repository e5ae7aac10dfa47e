"""A bare training step of mucosa's networks on one device, in images/s: random images already on the device,
no data loading, no Lightning (the ceiling that ``mucosa train`` is measured against on a GPU).

    python benchmarks/gpu_train_step.py                              # CNN-LSTM and CNN, 300x300, batch 32 and 128
    python benchmarks/gpu_train_step.py --models cnn-lstm --batches 16 64 --channels-last
"""

from __future__ import annotations

import argparse
import time

import torch

from mucosa.models.networks import ModelConfig, create_model


def images_per_second(kind: str, size: int, batch: int, device: str, channels_last: bool, steps: int,
                      warmup: int) -> float:
    """fp32 Adam steps of binary cross-entropy on one logit; the mean rate over ``steps`` after ``warmup``."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = create_model(ModelConfig(kind=kind, size=size)).to(device, memory_format=layout)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.rand(batch, 1, size, size, device=device).contiguous(memory_format=layout)  # (B, 1, S, S)
    y = torch.rand(batch, device=device).round()  # (B,)

    def sync() -> None:
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()

    for i in range(warmup + steps):
        if i == warmup:
            sync()
            start = time.perf_counter()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x)[:, 0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    sync()
    return steps * batch / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["cnn-lstm", "cnn"])
    parser.add_argument("--size", type=int, default=300)
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 128], help="32: configs/pcle.yaml's batch")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args(argv)
    for kind in args.models:
        for batch in args.batches:
            rate = images_per_second(kind, args.size, batch, args.device, args.channels_last, args.steps, args.warmup)
            print(f"bare fp32 training step, {kind}, {args.size}x{args.size}, batch {batch}: {rate:.0f} images/s",
                  flush=True)


if __name__ == "__main__":
    main()
