"""Every figure of docs/results.md, from mucosa's own commands on the real data in ``../shared/data``.

Each run is ``mucosa train`` then ``mucosa evaluate --threshold youden`` (threshold chosen on the run's
grouped validation part) on the held-out cases; this script only loops over folds, seeds and settings
and pools the held-out predictions. Finished runs are skipped, so a killed sweep continues where it
stopped; delete a run folder to redo it. Sweeps started side by side (``--threads 1`` each on a 2-core
machine) share the runs: a run being trained by a live process is skipped by the others.

    python benchmarks/real_data.py run pcle   [--out runs/real] [--seeds 0 1] [--only grouped within] [--threads 1]
    python benchmarks/real_data.py run egcz   [--out runs/real] [--threads 1]
    python benchmarks/real_data.py run pcle --only disc-300 --workers 2 --deadline EPOCH_SECONDS   # a GPU
    python benchmarks/real_data.py summary    [--out runs/real] [--markdown]

Experiments (``--only`` picks some):

pcle (pCLE brain videos, a video is a case; configs/pcle.yaml):
  grouped       5-fold video-grouped cross-validation, CNN-LSTM and CNN, every seed
  within        the paper's within-patient split (80/20 of every video's frames), for contrast (first seed)
  no-augmentation, all-frames, no-crop, disc, no-quality, last-epoch
                ablations of the CNN-LSTM under grouped CV (first seed; disc, which is configs/pcle.yaml,
                every seed): no augmentation; every frame of
                every video in one epoch (about as many frames as 12 epochs of 64 frames a video); the
                field-of-view crop off (whole frame with overlays); the whole circular field kept, black
                outside it (``crop: disc``); the quality gate off; the grouped runs' last epoch instead of the
                epoch of best validation AUC (evaluation only)
  disc-128      configs/pcle.yaml at 128x128 instead of 64x64 (first seed)
  disc-300      configs/pcle.yaml at the paper's 300x300, CNN-LSTM and CNN, every seed; only when named
                (``--only disc-300``): about half an hour a fold on the 2-core CPU, minutes on a GPU
  ssl-fold      configs/pcle.yaml from a self-supervised encoder (``mucosa pretrain``, SimCLR) learnt on
                each fold's own training and validation videos only, every seed
  backbone      configs/pcle.yaml with timm's resnet18 (from scratch) instead of the paper's networks,
                every seed; needs timm (torchvision matching torch: run it with such a Python)
egcz (EGC-Z AIA microscopy, an animal is a case; configs/microscopy.yaml):
  lopo          leave one animal out (12 folds), CNN-LSTM, 256-pixel tiles each standardised on its own
                (configs/microscopy.yaml before the next row)
  stretch       configs/microscopy.yaml: brightness evened out per image, not per tile (intensities
                stretched before tiling, ``preprocessing.normalize: stretch``; the model's per-frame
                standardisation off, ``model.input_norm: none``); CNN-LSTM then CNN, every seed
  ssl-cohort    configs/microscopy.yaml from an encoder learnt on every EGC-Z image, labels unread, the
                left-out animal's too (transductive); CNN then CNN-LSTM, every seed
  ssl-videos    the same from an encoder learnt on the pCLE brain and colon videos only (other data)
  backbone      configs/microscopy.yaml with timm's resnet18 (from scratch), every seed
  whole-image   ablation of lopo: the whole image downsampled instead of 256-pixel tiles
  whole-image-long  the same trained up to 40 epochs (early stopping after 10 without progress)

The summary (``pooling.py``) pools each experiment's held-out predictions over its folds: frame-level ROC AUC and PR AUC
of the pooled probabilities, accuracy / sensitivity / specificity of the per-fold thresholded calls, all
with case-clustered bootstrap CIs (mucosa.metrics.bootstrap_ci), the case-level (video / animal)
accuracy with an exact binomial CI, and the spread of the per-fold ROC AUC.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pooling import markdown, pooled_cached  # benchmarks/pooling.py

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


@dataclass
class Sweep:
    """How this process runs its share of the runs."""

    threads: int = 0            # torch threads of each training (0 = all cores)
    workers: int = 0            # data-loading processes of each training (a GPU needs some)
    deadline: float = 0.0       # time.time() after which no run starts that would not finish (0 = none)
    train_args: list[str] = field(default_factory=list)  # further mucosa train options, last (they win)
    longest: float = 0.0        # the longest run this process finished, in seconds
    data: Path = DATA           # the real data folder (its pcle-brain and pcle-colon videos for pretraining)

    def has_time(self) -> bool:
        """Whether a run started now would end before the deadline (by the longest run so far)."""
        return not self.deadline or time.time() + self.longest < self.deadline


@dataclass
class Experiment:
    """One setting evaluated over all folds of a cohort."""

    cohort: str                 # pcle | egcz
    name: str
    config: str
    models: tuple[str, ...]
    split: list[str]            # mucosa train split options, without --fold
    folds: int
    extra: list[str] = field(default_factory=list)  # further mucosa train options
    all_seeds: bool = False     # run for every --seeds value (else the first only)
    main: bool = True           # main experiments run first, ablations after
    last_of: str = ""           # evaluate the last epoch's checkpoint of this experiment's runs (no training)
    named_only: bool = False    # runs only when named with --only (too slow for a CPU sweep)
    # start from a self-supervised encoder (mucosa pretrain, labels never read) learnt on: "cohort" every
    # image of the cohort, the test cases' too (transductive); "fold" the fold's training and validation
    # cases only; "videos" the pCLE brain and colon videos (other data than the cohort's)
    pretrain: str = ""
    pretrain_args: list[str] = field(default_factory=list)  # further mucosa pretrain options


PCLE_GROUPED = ["--split", "kfold", "--k", "5"]
SQUARE = "benchmarks/configs/pcle-square.yaml"  # configs/pcle.yaml before crop: disc
TILES = "benchmarks/configs/microscopy-tiles.yaml"  # configs/microscopy.yaml before normalize: stretch
SSL_ARGS = ["--epochs", "30"]  # mucosa pretrain: the config's batch, lr and frames per case, 30 epochs
EXPERIMENTS = [
    Experiment("pcle", "grouped", SQUARE, ("cnn-lstm", "cnn"), PCLE_GROUPED, 5, all_seeds=True),
    Experiment("pcle", "within", SQUARE, ("cnn-lstm", "cnn"),
               ["--split", "within-patient", "--test", "0.2"], 1),
    Experiment("pcle", "no-augmentation", "benchmarks/configs/pcle-no-augmentation.yaml", ("cnn-lstm",),
               PCLE_GROUPED, 5, main=False),
    Experiment("pcle", "all-frames", SQUARE, ("cnn-lstm",), PCLE_GROUPED, 5,
               ["--frames-per-case", "0", "--epochs", "1"], main=False),
    Experiment("pcle", "no-crop", "benchmarks/configs/pcle-no-crop.yaml", ("cnn-lstm",), PCLE_GROUPED, 5,
               main=False),
    Experiment("pcle", "disc", "configs/pcle.yaml", ("cnn-lstm",), PCLE_GROUPED, 5, all_seeds=True, main=False),
    Experiment("pcle", "disc-128", "configs/pcle.yaml", ("cnn-lstm",), PCLE_GROUPED, 5, ["--size", "128"],
               main=False),
    # the paper's input size: ~9 images/s on the 2-core CPU, 2-3 hours a model and seed (docs/results.md)
    Experiment("pcle", "disc-300", "configs/pcle.yaml", ("cnn-lstm", "cnn"), PCLE_GROUPED, 5, ["--size", "300"],
               all_seeds=True, main=False, named_only=True),
    Experiment("pcle", "no-quality", SQUARE, ("cnn-lstm",), PCLE_GROUPED, 5, ["--quality", "0"],
               main=False),
    Experiment("pcle", "last-epoch", SQUARE, ("cnn-lstm",), PCLE_GROUPED, 5, main=False,
               last_of="grouped"),
    # the fold's own videos only: pretraining never sees a test video
    Experiment("pcle", "ssl-fold", "configs/pcle.yaml", ("cnn-lstm",), PCLE_GROUPED, 5, all_seeds=True, main=False,
               pretrain="fold", pretrain_args=SSL_ARGS),
    Experiment("pcle", "backbone", "configs/pcle.yaml", ("timm:resnet18",), PCLE_GROUPED, 5, all_seeds=True,
               main=False),
    Experiment("egcz", "lopo", TILES, ("cnn-lstm",), ["--split", "lopo"], 12),
    Experiment("egcz", "stretch", "configs/microscopy.yaml", ("cnn-lstm", "cnn"), ["--split", "lopo"], 12,
               all_seeds=True),
    # every EGC-Z image, labels unread, the left-out animal's too (transductive); then the videos only (not)
    Experiment("egcz", "ssl-cohort", "configs/microscopy.yaml", ("cnn", "cnn-lstm"), ["--split", "lopo"], 12,
               all_seeds=True, main=False, pretrain="cohort", pretrain_args=SSL_ARGS),
    Experiment("egcz", "ssl-videos", "configs/microscopy.yaml", ("cnn", "cnn-lstm"), ["--split", "lopo"], 12,
               all_seeds=True, main=False, pretrain="videos", pretrain_args=SSL_ARGS),
    # a modern backbone from timm (needs timm, hence torchvision matching torch), from scratch: no weights here
    Experiment("egcz", "backbone", "configs/microscopy.yaml", ("timm:resnet18",), ["--split", "lopo"], 12,
               all_seeds=True, main=False),
    Experiment("egcz", "whole-image", "benchmarks/configs/microscopy-whole-image.yaml", ("cnn-lstm",),
               ["--split", "lopo"], 12, main=False),
    Experiment("egcz", "whole-image-long", "benchmarks/configs/microscopy-whole-image-long.yaml", ("cnn-lstm",),
               ["--split", "lopo"], 12, main=False),
]


def mucosa(*args: str, log: Path) -> None:
    """Run one mucosa command; its output goes to ``log``; a failure stops the sweep with the log's tail."""
    command = [sys.executable, "-m", "mucosa", *args]
    with open(log, "a") as handle:
        handle.write("$ mucosa " + " ".join(args) + "\n")
        handle.flush()
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
    if done.returncode:
        tail = log.read_text(errors="replace").replace("\r", "\n").splitlines()[-15:]
        sys.exit(f"failed ({done.returncode}): mucosa {' '.join(args)}\n" + "\n".join(tail))


def manifest(cohort: str, out: Path, data: Path) -> Path:
    """Index the real data set with ``mucosa index`` (once)."""
    path = out / f"{cohort}.csv"
    if path.is_file():
        return path
    out.mkdir(parents=True, exist_ok=True)
    if cohort == "pcle":
        mucosa("index", str(data / "pcle-brain"), "-o", str(path), log=out / "index.log")
    else:
        mucosa("index", str(data / "egcz-aia" / "data_info.csv"), "--path-col", "sample_path", "--label-col",
               "label", "--patient-col", "animal_tag", "--label-map", "0=control,1=arthritis", "-o", str(path),
               log=out / "index.log")
    return path


def run_one(exp: Experiment, model: str, seed: int, fold: int, cohort_csv: Path, out: Path, sweep: Sweep
            ) -> Path | None:
    """Train and evaluate one fold; returns the evaluation folder (skipped when it is already there)."""
    run = out / exp.cohort / exp.name / model / f"seed{seed}" / f"fold{fold}"
    evaluation = run / "eval"
    if (evaluation / "metrics.json").is_file():
        return evaluation
    if exp.last_of:
        return evaluate_last(exp, model, seed, fold, out)
    if not sweep.has_time():
        return None  # would not finish before the deadline
    run.parent.mkdir(parents=True, exist_ok=True)
    claim = run.parent / f"fold{fold}.claim"
    if not _claim(claim):
        return None  # another sweep is running it
    try:
        if run.exists():
            shutil.rmtree(run)  # an unfinished run: start it again
        log = run.parent / f"fold{fold}.log"
        log.unlink(missing_ok=True)
        start = time.time()
        fold_args = ["--fold", str(fold)] if exp.folds > 1 else []
        manifest, split_args, init = cohort_csv, [*exp.split, *fold_args], []
        if exp.pretrain:
            manifest, split_args, init = pretrained(exp, model, seed, fold, cohort_csv, out, sweep, log)
        mucosa("train", "--manifest", str(manifest), "--config", exp.config, "--model", model, *split_args, *init,
               "--split-seed", str(seed), "--seed", str(seed), *exp.extra,
               "--threads", str(sweep.threads), "--workers", str(sweep.workers), "--no-onnx", *sweep.train_args,
               "--out", str(run), log=log)
        evaluate(run, "best.ckpt", evaluation, log)
    finally:
        claim.unlink(missing_ok=True)
    took = time.time() - start
    sweep.longest = max(sweep.longest, took)
    print(f"  {exp.name} {model} seed {seed} fold {fold}: {took:.0f} s", flush=True)
    return evaluation


SPLIT_OPTIONS = ("--split", "--k", "--val", "--test", "--fold", "--split-seed")


def pretrained(exp: Experiment, model: str, seed: int, fold: int, cohort_csv: Path, out: Path, sweep: Sweep,
               log: Path) -> tuple[Path, list[str], list[str]]:
    """The manifest, split options and ``--init-from`` of a run that starts from a self-supervised encoder
    (pretrained here first when it is not there yet, or when it was learnt with other settings)."""
    settings = ["--config", exp.config, "--model", model, "--seed", str(seed), *exp.pretrain_args]
    common = [*settings, "--threads", str(sweep.threads), "--workers", str(sweep.workers)]
    fold_args = ["--fold", str(fold)] if exp.folds > 1 else []
    if exp.pretrain == "fold":  # the fold's own split, written first: its test cases never reach the encoder
        folder = out / exp.cohort / exp.name / model / f"seed{seed}"
        manifest = fold_split(exp, seed, fold, cohort_csv, folder / f"fold{fold}.split.csv", sweep, log)
        encoder = folder / f"fold{fold}.encoder"
        shutil.rmtree(encoder, ignore_errors=True)
        mucosa("pretrain", "--manifest", str(manifest), "--parts", "train,val", *common, "--out", str(encoder),
               log=log)
        return manifest, ["--split", "manifest", *fold_args], ["--init-from", str(encoder / "encoder.ckpt")]
    source = cohort_csv if exp.pretrain == "cohort" else videos_manifest(out, sweep.data)
    encoder = out / exp.cohort / f"encoder-{exp.pretrain}" / model / f"seed{seed}"
    stamp = json.dumps({"pretrain": settings, "config": (ROOT / exp.config).read_text(),
                        "source": hashlib.sha256(source.read_bytes()).hexdigest()}, sort_keys=True)

    def ready() -> bool:
        marks = encoder / "stamp.json"
        return (encoder / "encoder.ckpt").is_file() and marks.is_file() and marks.read_text() == stamp

    if not ready():
        claim = encoder.parent / f"seed{seed}.claim"
        encoder.parent.mkdir(parents=True, exist_ok=True)
        while not _claim(claim):  # another sweep is learning it
            time.sleep(10)
        try:
            if not ready():  # absent, unfinished or learnt with other settings: learn it again
                shutil.rmtree(encoder, ignore_errors=True)
                mucosa("pretrain", "--manifest", str(source), *common, "--out", str(encoder),
                       log=encoder.parent / f"seed{seed}.log")
                (encoder / "stamp.json").write_text(stamp)
        finally:
            claim.unlink(missing_ok=True)
    return cohort_csv, [*exp.split, *fold_args], ["--init-from", str(encoder / "encoder.ckpt")]


def fold_split(exp: Experiment, seed: int, fold: int, cohort_csv: Path, manifest: Path, sweep: Sweep,
               log: Path) -> Path:
    """``mucosa split`` of one fold, as ``mucosa train`` with the experiment's split options would draw it."""
    from mucosa.models.config import load_config

    extra = [*exp.extra, *sweep.train_args]
    if any(a in SPLIT_OPTIONS or a.startswith("split.") for a in extra):
        sys.exit(f"{exp.name}: split options in {' '.join(extra)} would not reach the fold's own split, which "
                 f"is written from {exp.config} and the experiment's split")
    split = load_config(ROOT / exp.config).split
    mode = exp.split[exp.split.index("--split") + 1]
    k = exp.split[exp.split.index("--k") + 1] if "--k" in exp.split else str(split.k)
    mucosa("split", str(cohort_csv), "--mode", mode, "--k", k, "--fold", str(fold), "--seed", str(seed),
           "--val", str(split.val), "-o", str(manifest), log=log)
    return manifest


def videos_manifest(out: Path, data: Path) -> Path:
    """A path-only manifest of the pCLE brain and colon videos (unlabelled frames for pretraining)."""
    path = out / "videos.csv"
    if not path.is_file():
        videos = sorted((data / "pcle-brain").rglob("*.mpg")) + [data / "pcle-colon" / "s01v01.mpeg"]
        partial = path.with_suffix(f".{os.getpid()}.part")
        with open(partial, "w", newline="") as handle:
            csv.writer(handle).writerows([["path"], *[[str(v.resolve())] for v in videos]])
        os.replace(partial, path)  # whole or absent, for sweeps side by side
    return path


def evaluate(run: Path, checkpoint: str, evaluation: Path, log: Path) -> None:
    """``mucosa evaluate`` of one of a run's checkpoints on its held-out part (threshold from validation),
    with the trained PyTorch network itself (not an int8 export: the tables describe the network)."""
    mucosa("evaluate", "--checkpoint", str(run / checkpoint), "--manifest", str(run / "split.csv"),
           "--runtime", "torch", "--threshold", "youden", "--bootstrap", "100", "--gallery", "0",
           "--out", str(evaluation), log=log)


def _claim(path: Path) -> bool:
    """Mark a run as taken by this process, so that sweeps started side by side share the work."""
    try:
        owner = int(path.read_text() or 0)
        if owner <= 0:  # no process id (yet): being written, or left by a process killed while writing it
            if time.time() - path.stat().st_mtime < 60:
                return False
            raise ProcessLookupError
        os.kill(owner, 0)
        return False  # its process is alive
    except (FileNotFoundError, ValueError, ProcessLookupError):
        path.unlink(missing_ok=True)  # stale: its process is gone
    try:
        with open(path, "x") as handle:
            handle.write(str(os.getpid()))
        return True
    except FileExistsError:
        return False


def evaluate_last(exp: Experiment, model: str, seed: int, fold: int, out: Path) -> Path | None:
    """Evaluate the last epoch instead of the best validation epoch of an existing run (None: not there yet)."""
    trained = out / exp.cohort / exp.last_of / model / f"seed{seed}" / f"fold{fold}"
    if not (trained / "eval" / "metrics.json").is_file():
        print(f"  {exp.name}: skipped, {trained} is not finished", flush=True)
        return None
    evaluation = out / exp.cohort / exp.name / model / f"seed{seed}" / f"fold{fold}" / "eval"
    evaluation.parent.mkdir(parents=True, exist_ok=True)
    evaluate(trained, "last.ckpt", evaluation, evaluation.parent.parent / f"fold{fold}.log")
    return evaluation


def run(cohort: str, out: Path, seeds: list[int], only: list[str] | None, sweep: Sweep,
        models: list[str] | None = None) -> None:
    """Main experiments at the first seed, then at the other seeds; then the others at the first seed, then
    those of them that run every seed at the other seeds: a sweep cut short holds the first seeds."""
    cohort_csv = manifest(cohort, out, sweep.data)
    chosen = [e for e in EXPERIMENTS if e.cohort == cohort and (e.name in only if only else not e.named_only)]
    order = [(e, seeds[0]) for e in chosen if e.main]
    order += [(e, s) for s in seeds[1:] for e in chosen if e.main and e.all_seeds]
    order += [(e, seeds[0]) for e in chosen if not e.main]
    order += [(e, s) for s in seeds[1:] for e in chosen if not e.main and e.all_seeds]
    for exp, seed in order:
        for model in exp.models:
            if models and model not in models:
                continue
            for fold in range(exp.folds):
                run_one(exp, model, seed, fold, cohort_csv, out, sweep)


# ----------------------------------------------------------------------------------------------- summary


def collect(out: Path) -> list[dict]:
    """One row per experiment, model and seed whose folds are all finished."""
    rows, seen = [], set()
    for exp in EXPERIMENTS:
        for model in exp.models:
            if (exp.cohort, exp.name, model) in seen:
                continue
            seen.add((exp.cohort, exp.name, model))
            for seed_dir in sorted((out / exp.cohort / exp.name / model).glob("seed*")):
                evaluations = [seed_dir / f"fold{k}" / "eval" for k in range(exp.folds)]
                done = [e for e in evaluations if (e / "metrics.json").is_file()]
                if not done:
                    continue
                result = pooled_cached(seed_dir / "pooled.json", done)
                rows.append({"cohort": exp.cohort, "experiment": exp.name, "model": model,
                             "seed": int(seed_dir.name.removeprefix("seed")),
                             "folds": f"{len(done)}/{exp.folds}", **result})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    go = sub.add_parser("run")
    go.add_argument("cohort", choices=("pcle", "egcz"))
    go.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    go.add_argument("--only", nargs="+", choices=sorted({e.name for e in EXPERIMENTS}))
    go.add_argument("--data", type=Path, default=DATA)
    go.add_argument("--threads", type=int, default=0, help="torch threads of each training (0 = all cores); "
                    "two sweeps side by side on 2 cores: 1 each")
    go.add_argument("--models", nargs="+", help="only these models of the experiments (e.g. cnn)")
    go.add_argument("--workers", type=int, default=0, help="data-loading processes of each training")
    go.add_argument("--deadline", type=float, default=0.0, help="time.time() after which no run starts that "
                    "would not finish by it (judged by this process's longest run so far)")
    go.add_argument("--expect", type=float, default=0.0, help="with --deadline: seconds a run is taken to "
                    "last until this process has finished one (a sweep started late starts nothing that cannot end)")
    go.add_argument("--train-args", default="", help="further mucosa train options, appended (quoted, one string)")
    summary = sub.add_parser("summary")
    summary.add_argument("--markdown", action="store_true")
    for p in (go, summary):
        p.add_argument("--out", type=Path, default=ROOT / "runs" / "real")
    args = parser.parse_args()
    if args.command == "run":
        if not args.data.is_dir():
            sys.exit(f"{args.data}: real data folder not found (see its README in shared/data)")
        sweep = Sweep(args.threads, args.workers, args.deadline, shlex.split(args.train_args),
                      longest=args.expect, data=args.data.resolve())
        run(args.cohort, args.out.resolve(), args.seeds, args.only, sweep, args.models)
        print("done; tables: python benchmarks/real_data.py summary --markdown")
        return
    rows = collect(args.out.resolve())
    if getattr(args, "markdown", False):
        print(markdown(rows))
    else:
        for r in rows:
            print(json.dumps(r, default=float))


if __name__ == "__main__":
    main()
