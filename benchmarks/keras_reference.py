"""The paper's stack as a reference for the benchmarks: mucosa's CNN-LSTM (or CNN) in Keras on TensorFlow.

The paper (Udristoiu et al. 2021) was written in Keras. This file builds the same network layer for layer as
``src/mucosa/models/networks.py`` (same widths, 3x3 "valid" convolutions, 2x2 max pooling, batch norm with
eps 1e-3 and the same momentum, dropouts, rows of the final map as the LSTM's time steps through a
``TimeDistributed(Dense(128))``, LSTM 100 returning its last state, Dense 50, one logit; glorot_uniform
initialisation; the per-image standardisation of mucosa's default ``input_norm: image`` as a Lambda layer)
and times it the way a Keras user runs it: ``model.compile(Adam(1e-3), BinaryCrossentropy(from_logits=True))``
with every other setting at its default (``jit_compile="auto"``, which Keras resolves to no XLA on a CPU-only
machine; the record says what it resolved to), ``model.fit`` on random NHWC float32 data for training, and
``model.predict_on_batch`` on uint8 frames scaled to [0, 1] for inference.

- training: a Keras callback times each step from ``on_train_batch_begin`` to ``on_train_batch_end`` (the
  step function also takes the next batch from Keras' prefetching tf.data pipeline), the first ``warmup``
  steps (tracing, oneDNN primitive creation) are left out, and steps during which other processes used more
  than a quarter of a core are repeated, as for mucosa's steps (``step_clock.py``).
- inference: ``batch`` / median time of one ``predict_on_batch`` call (uint8 -> float conversion included),
  after two untimed calls, over at least ``n`` calls and ``seconds``.

TensorFlow is an optional extra, never a dependency of mucosa (``src/mucosa`` never imports it). Install it
with ``pip install -e '.[keras-reference]'`` or, to keep it out of mucosa's environment, in a venv of its own:

    python3 -m venv /work/tfvenv && /work/tfvenv/bin/pip install tensorflow-cpu
    /work/tfvenv/bin/python benchmarks/keras_reference.py train --size 300 --batch 16 --steps 5 --threads 2
    /work/tfvenv/bin/python benchmarks/keras_reference.py infer --size 300 --batch 16 --calls 10 --threads 2
    /work/tfvenv/bin/python benchmarks/keras_reference.py summary --size 300

``benchmarks/train_speed.py`` and ``benchmarks/inference_speed.py`` run it in a subprocess of their own
(TensorFlow and PyTorch never share a process or its thread pools), with the interpreter given by
``--keras-python`` (default: theirs, when it can import TensorFlow), and print mucosa / Keras per row. Each
run prints one JSON record; the parameter counts in it are compared with mucosa's PyTorch model by the
benchmarks (Keras counts one LSTM bias vector where PyTorch has two, and counts BatchNorm's moving mean and
variance as non-trainable weights where PyTorch has buffers).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
from step_clock import StepClock

MISSING_TF = 3  # exit code of a worker whose interpreter cannot import TensorFlow


def _import_keras(threads: int = 0, interop_threads: int = 0):
    """Import TensorFlow and Keras (TensorFlow backend) and set the thread pools before any op runs."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    if interop_threads:
        tf.config.threading.set_inter_op_parallelism_threads(interop_threads)
    import keras

    return tf, keras


def _standardize(x):
    """Per-image standardisation as mucosa's ``input_norm: image`` (unbiased std, + 1e-3)."""
    from keras import ops

    n = x.shape[1] * x.shape[2] * x.shape[3]
    mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
    var = ops.sum(ops.square(x - mean), axis=(1, 2, 3), keepdims=True) / (n - 1)
    return (x - mean) / (ops.sqrt(var) + 1e-3)


def build_model(size: int, kind: str = "cnn-lstm", num_outputs: int = 1, conv_dropout: float = 0.25,
                dense_dropout: float = 0.5, lstm_units: int = 100, in_channels: int = 1, bn_momentum: float = 0.1,
                input_norm: str = "image"):
    """mucosa's network (``networks.CNNLSTM`` or ``networks.CNN``) as a Keras functional model, NHWC input."""
    _, keras = _import_keras()
    from keras import layers

    inputs = keras.Input((size, size, in_channels), name="x")
    x = layers.Lambda(_standardize, name="standardize")(inputs) if input_norm == "image" else inputs
    for block, (first, second) in enumerate(((32, 32), (64, 128)), start=1):
        x = layers.Conv2D(first, 3, activation="relu", name=f"conv{2 * block - 1}")(x)
        x = layers.Conv2D(second, 3, activation="relu", name=f"conv{2 * block}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{block}")(x)
        x = layers.BatchNormalization(momentum=1 - bn_momentum, epsilon=1e-3, name=f"bn{block}")(x)
        x = layers.Dropout(conv_dropout, name=f"drop{block}")(x)
    side, channels = x.shape[1], x.shape[3]
    if kind == "cnn-lstm":
        x = layers.Reshape((side, side * channels), name="rows")(x)  # H' steps of W'*C, channels fastest
        x = layers.TimeDistributed(layers.Dense(128, activation="relu"), name="fc1")(x)
        x = layers.Dropout(dense_dropout, name="drop3")(x)
        x = layers.LSTM(lstm_units, name="lstm")(x)  # last hidden state
        x = layers.Dense(50, activation="relu", name="fc2")(x)
    elif kind == "cnn":
        x = layers.Flatten(name="flatten")(x)
        x = layers.Dense(128, activation="relu", name="fc1")(x)
        x = layers.Dropout(dense_dropout, name="drop3")(x)
        x = layers.Dense(50, activation="relu", name="fc2")(x)
    else:
        raise ValueError(f"unknown model kind {kind!r}")
    x = layers.Dropout(dense_dropout, name="drop4")(x)
    outputs = layers.Dense(num_outputs, name="fc3")(x)  # logits
    return keras.Model(inputs, outputs, name=f"keras-{kind}")


def _compile(model, keras) -> None:
    """Adam 1e-3 and the BCE-with-logits loss (softmax cross-entropy for more than two classes)."""
    multi = model.output_shape[-1] > 1
    loss = (keras.losses.SparseCategoricalCrossentropy(from_logits=True) if multi
            else keras.losses.BinaryCrossentropy(from_logits=True))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)


def _describe(model, tf, keras, threads: int, interop_threads: int) -> dict:
    """Versions, settings and parameter counts of a Keras run."""
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    frozen = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    return {"impl": "keras", "tensorflow": tf.__version__, "keras": keras.__version__,
            "jit_compile": bool(getattr(model, "jit_compile", False)),
            "threads": threads or tf.config.threading.get_intra_op_parallelism_threads() or "default",
            "interop_threads": interop_threads or tf.config.threading.get_inter_op_parallelism_threads() or "default",
            "onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
            "params_trainable": trainable, "params_non_trainable": frozen}


def keras_train_images_per_s(size: int, batch: int, steps: int, threads: int, warmup: int = 2,
                             interop_threads: int = 0, **model_kwargs) -> dict:
    """Keras training steps (``model.fit``) per second x batch on random data, warm-up excluded."""
    tf, keras = _import_keras(threads, interop_threads)
    keras.utils.set_random_seed(0)
    model = build_model(size, **model_kwargs)
    _compile(model, keras)
    rng = np.random.default_rng(0)
    count = (warmup + 2 * steps) * batch
    x = rng.random((count, size, size, model.input_shape[-1]), dtype=np.float32)
    classes = max(2, model.output_shape[-1])
    y = rng.integers(0, classes, (count, 1)).astype(np.float32)
    clock = StepClock()

    class Clock(keras.callbacks.Callback):
        def on_train_batch_begin(self, index, logs=None) -> None:
            clock.start()

        def on_train_batch_end(self, index, logs=None) -> None:
            clock.stop(index >= warmup)
            if index >= warmup and clock.enough(steps):
                self.model.stop_training = True

    model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=[Clock()])
    return {**clock.result(batch, steps), **_describe(model, tf, keras, threads, interop_threads)}


def keras_infer_images_per_s(size: int, batch: int, n: int, threads: int, seconds: float = 0.0,
                             interop_threads: int = 0, **model_kwargs) -> dict:
    """Keras inference (``predict_on_batch`` of uint8 frames scaled to [0, 1]): batch / median call time."""
    tf, keras = _import_keras(threads, interop_threads)
    keras.utils.set_random_seed(0)
    model = build_model(size, **model_kwargs)
    frames = np.random.default_rng(0).integers(0, 256, (batch, size, size, model.input_shape[-1]), dtype=np.uint8)

    def run() -> np.ndarray:
        return model.predict_on_batch(frames.astype(np.float32) / 255.0)

    first = time.perf_counter()
    run()
    first = time.perf_counter() - first
    run()
    times, start = [], time.perf_counter()
    while len(times) < max(n, 1) or time.perf_counter() - start < seconds:
        tic = time.perf_counter()
        run()
        times.append(time.perf_counter() - tic)
    median = statistics.median(times)
    return {"images_per_s": round(batch / median, 3), "call_s": round(median, 4), "calls": len(times),
            "first_call_s": round(first, 2), **_describe(model, tf, keras, threads, interop_threads)}


def set_torch_weights(model, state) -> None:
    """Give the Keras ``model`` the weights of mucosa's PyTorch model (``state``: its state_dict as NumPy)."""
    for layer in model.layers:
        name = layer.name
        if name.startswith("conv"):  # (out, in, kh, kw) -> (kh, kw, in, out)
            layer.set_weights([state[f"{name}.weight"].transpose(2, 3, 1, 0), state[f"{name}.bias"]])
        elif name.startswith("bn"):
            layer.set_weights([state[f"{name}.{key}"] for key in ("weight", "bias", "running_mean", "running_var")])
        elif name.startswith("fc"):  # TimeDistributed(Dense) or Dense: (out, in) -> (in, out)
            layer.set_weights([state[f"{name}.weight"].T, state[f"{name}.bias"]])
        elif name == "lstm":  # same gate order (i, f, g/c, o); Keras has one bias vector
            layer.set_weights([state["lstm.weight_ih_l0"].T, state["lstm.weight_hh_l0"].T,
                               state["lstm.bias_ih_l0"] + state["lstm.bias_hh_l0"]])


def check_outputs(spec: dict) -> dict:
    """Inference-mode logits of the Keras model given mucosa's weights vs mucosa's own logits (from ``npz``)."""
    _, keras = _import_keras(spec.get("threads", 0))
    data = np.load(spec["npz"])
    model = build_model(spec["size"], **spec["model"])
    set_torch_weights(model, data)
    logits = model.predict_on_batch(data["x"].transpose(0, 2, 3, 1))  # NCHW -> NHWC
    expected = data["logits"]
    return {"bench": "check", "size": spec["size"], "max_abs_diff": float(np.abs(logits - expected).max()),
            "max_abs_logit": float(np.abs(expected).max()), "keras": keras.__version__}


def worker(spec: dict) -> dict:
    """One measurement from a spec (as the benchmarks send it): its JSON record."""
    mode, model_kwargs = spec["mode"], spec.get("model", {})
    if mode == "check":
        return check_outputs(spec)
    common = {"size": spec["size"], "batch": spec["batch"], "threads": spec.get("threads", 0),
              "interop_threads": spec.get("interop_threads", 0), **model_kwargs}
    if mode == "train":
        result = keras_train_images_per_s(steps=spec["steps"], warmup=spec.get("warmup", 2), **common)
    elif mode == "infer":
        result = keras_infer_images_per_s(n=spec["calls"], seconds=spec.get("seconds", 0.0), **common)
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return {"bench": mode, "size": spec["size"], "batch": spec["batch"], "precision": "32-true", **result}


# ---- used by the benchmarks, in mucosa's interpreter (no TensorFlow import) ----

def model_kwargs(config) -> dict:
    """The Keras ``build_model`` arguments for a mucosa ``ModelConfig``."""
    return {"kind": config.kind, "num_outputs": config.num_outputs, "conv_dropout": config.conv_dropout,
            "dense_dropout": config.dense_dropout, "lstm_units": config.lstm_units,
            "in_channels": config.in_channels, "bn_momentum": config.bn_momentum, "input_norm": config.input_norm}


def keras_python(requested: str | None) -> tuple[str | None, str]:
    """Interpreter to run the Keras reference with, or None and why it is skipped (one line)."""
    if requested:
        return requested, ""
    if importlib.util.find_spec("tensorflow") is not None:
        return sys.executable, ""
    return None, (f"Keras reference skipped: TensorFlow is not importable by {sys.executable} (install the "
                  f"'keras-reference' extra, or pass --keras-python PATH of an interpreter that has it)")


def run_keras(python: str, spec: dict, timeout: float = 3600) -> dict:
    """Run one Keras measurement in its own process: its record, or ``{"error": one line}``."""
    try:
        done = subprocess.run([python, __file__, "--spec", json.dumps(spec)], capture_output=True, text=True,
                              timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as error:
        return {"error": f"Keras reference with {python} failed: {error}"}
    records = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if records:
        return json.loads(records[-1])
    lines = [line for line in done.stderr.splitlines() if line.strip()] or ["no output"]
    return {"error": f"Keras reference with {python} failed (exit {done.returncode}): {lines[-1].strip()}"}


def keras_check(python: str, size: int = 64, batch: int = 4) -> tuple[str, str]:
    """(status, detail): does the Keras model, given mucosa's weights, compute mucosa's logits? ``status`` is
    "ok", "FAIL" or "info" (the Keras reference could not run)."""
    import tempfile

    import torch

    from mucosa.models.networks import ModelConfig, create_model

    torch.manual_seed(0)
    config = ModelConfig(size=size)
    model = create_model(config).eval()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):  # non-trivial running statistics, so that they are checked too
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
        x = torch.rand(batch, config.in_channels, size, size)
        logits = model(x)
    state = {name: value.numpy() for name, value in model.state_dict().items()}
    with tempfile.TemporaryDirectory() as tmp:
        npz = os.path.join(tmp, "weights.npz")
        np.savez(npz, x=x.numpy(), logits=logits.numpy(), **state)
        record = run_keras(python, {"mode": "check", "size": size, "npz": npz, "model": model_kwargs(config)})
    if "error" in record:
        return "info", record["error"]
    diff, scale = record["max_abs_diff"], record["max_abs_logit"]
    return ("ok" if diff <= 1e-4 * max(scale, 1.0) else "FAIL",
            f"largest logit difference {diff:.1e} (logits up to {scale:.2f}), Keras {record['keras']}")


def compare_params(record: dict, model) -> str:
    """One line comparing the Keras record's parameter counts with mucosa's PyTorch ``model``; raises
    AssertionError when they differ beyond the two known conventions (LSTM bias, BatchNorm statistics)."""
    params = sum(p.numel() for p in model.parameters())
    stats = sum(b.numel() for name, b in model.named_buffers() if not name.endswith("num_batches_tracked"))
    lstm = getattr(model, "lstm", None)
    second_bias = 4 * lstm.hidden_size if lstm is not None else 0
    trainable, frozen = record["params_trainable"], record["params_non_trainable"]
    line = (f"parameters: mucosa (PyTorch) {params:,} + {stats:,} BatchNorm statistics; Keras {trainable:,} "
            f"trainable + {frozen:,} non-trainable" + (f" (+{second_bias}: PyTorch's LSTM has a second bias "
                                                        f"vector)" if second_bias else ""))
    assert params == trainable + second_bias and stats == frozen, f"the networks differ: {line}"
    return line + ": same network"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", choices=["train", "infer", "summary"], default="summary")
    parser.add_argument("--size", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps (median)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--calls", type=int, default=10, help="timed predict_on_batch calls (median)")
    parser.add_argument("--seconds", type=float, default=0.0, help="minimum time of the timed inference calls")
    parser.add_argument("--threads", type=int, default=0, help="TensorFlow intra-op threads (0: its default)")
    parser.add_argument("--interop-threads", type=int, default=0)
    parser.add_argument("--kind", choices=["cnn-lstm", "cnn"], default="cnn-lstm")
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    spec = json.loads(args.spec) if args.spec else {
        "mode": args.mode, "size": args.size, "batch": args.batch, "steps": args.steps, "warmup": args.warmup,
        "calls": args.calls, "seconds": args.seconds, "threads": args.threads,
        "interop_threads": args.interop_threads, "model": {"kind": args.kind}}
    if importlib.util.find_spec("tensorflow") is None:
        print(json.dumps({"error": f"Keras reference skipped: TensorFlow is not importable by {sys.executable}"}),
              flush=True)
        sys.exit(MISSING_TF)
    if spec["mode"] == "summary":
        model = build_model(spec["size"], **spec["model"])
        model.summary()
        return
    print(json.dumps(worker(spec)), flush=True)


if __name__ == "__main__":
    main()
