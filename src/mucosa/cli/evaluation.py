"""``mucosa evaluate``, ``compare``, ``explain``, ``texture`` and ``demo`` (``mucosa.evaluation``): their options
and commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from mucosa.atomic import check_writable_folder
from mucosa.choices import AGGREGATION_RULES
from mucosa.cli import checks
from mucosa.cli.options import add_device_option, add_pseudonym_options, add_runtime_option, open_cache
from mucosa.data.readers import CHANNELS
from mucosa.data.splits import SELECTIONS

__all__ = ["add_parser"]


def add_parser(sub) -> None:
    """Add ``evaluate``, ``compare``, ``explain``, ``texture`` and ``demo`` to the ``mucosa`` subcommands."""
    p = sub.add_parser("evaluate", help="metrics with patient-bootstrap CIs, patient verdicts, report")
    add_device_option(p)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--split", default="auto", choices=SELECTIONS,
                   help="auto: the manifest's test rows, else the checkpoint's test patients, else all rows")
    p.add_argument("--threshold", default="0.5", type=checks.threshold_rule,
                   help="a number in [0, 1], youden, sensitivity=0.95 or specificity=0.9 (rules use the validation "
                   "part)")
    p.add_argument("--aggregate", default="mean", choices=AGGREGATION_RULES,
                   help="patient score: mean frame probability, or share of frames called inflamed")
    p.add_argument("--bootstrap", type=checks.integer(1), default=1000, help="bootstrap replicates for the CIs")
    p.add_argument("--seed", type=checks.integer(0), default=0)
    add_pseudonym_options(p)
    p.add_argument("--gallery", type=checks.integer(0), default=3,
                   help="Grad-CAM examples per group (true/false positives/negatives) in the report; 0 = none")
    add_runtime_option(p)
    p.add_argument("--cache", type=Path, default=None)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", help="Table III and Fig. 4 for evaluated runs, with paired AUC tests")
    p.add_argument("runs", nargs="+", type=Path, help="evaluation folders (or run folders with evaluation/)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--bootstrap", type=checks.integer(1), default=2000)
    p.add_argument("--seed", type=checks.integer(0), default=0)
    add_pseudonym_options(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("explain", help="feature maps (the paper's Fig. 3) and Grad-CAM for images, video frames "
                       "or folders of them")
    add_device_option(p)
    p.add_argument("inputs", nargs="+", metavar="IMAGE_VIDEO_OR_FOLDER")  # str: an empty one is refused
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="folder for the PNGs and explain.csv")
    p.add_argument("--frames", default=None,
                   help="video frames to explain: every:K, A-B, A-B:K or K (default: the --top most confident)")
    p.add_argument("--top", type=checks.integer(1), default=None,
                   help="per video, explain the N most confident (of the --frames) frames (default 4 without --frames)")
    add_runtime_option(p, "; feature maps and Grad-CAM always run PyTorch (they need gradients)")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("texture", help="LBP texture classifier on a run's split, alone and fused with the network "
                       "(the published recipe)")
    p.add_argument("--manifest", type=Path, required=True,
                   help="a manifest with a split column, e.g. a run's split.csv: fitted on train and val, "
                   "scored on test")
    p.add_argument("--fuse", type=Path, metavar="EVALUATION",
                   help="the network's mucosa evaluate folder for the same test part: each file's probability "
                   "averaged with the texture's")
    p.add_argument("--out", type=Path, required=True, help="folder for files.csv, patients.csv, metrics.json")
    p.add_argument("--channel", choices=CHANNELS, default="auto",
                   help="which channel of a colour image (e.g. red for a red stain; default auto)")
    p.add_argument("--bootstrap", type=checks.integer(1), default=1000,
                   help="bootstrap replicates (over patients) for the intervals")
    p.add_argument("--seed", type=checks.integer(0), default=0, help="seed of the bootstrap")
    add_pseudonym_options(p)
    p.set_defaults(func=cmd_texture)

    p = sub.add_parser("demo", help="synthetic cohort -> 4 trainings -> evaluation -> comparison report")
    p.add_argument("--out", type=Path, default=Path("mucosa-demo"))
    p.add_argument("--quick", action="store_true", help="a seconds-long variant (tests)")
    p.add_argument("--config", type=Path, default=Path("configs/cpu-quick.yaml"))
    p.add_argument("--seed", type=checks.integer(0), default=0)
    p.set_defaults(func=cmd_demo)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from mucosa.evaluation.evaluate import evaluate
    from mucosa.evaluation.report import fmt

    check_writable_folder(args.out)
    cache = open_cache(args.cache)
    result = evaluate(args.checkpoint, args.manifest, args.out, split=args.split, threshold=args.threshold,
                      aggregation=args.aggregate, n_boot=args.bootstrap, seed=args.seed,
                      pseudonymise=args.pseudonymise, pseudonym_key=args.pseudonym_key, cache=cache,
                      gallery_size=args.gallery, device=args.device, runtime=args.runtime)
    p, i = result["patient"], result["image"]
    print(f"patients ({result['counts']['patients']}): accuracy {fmt(p['accuracy'])}"
          + (f", ROC AUC {fmt(p.get('roc_auc'))}" if "roc_auc" in p else ""))
    print(f"frames ({result['counts']['frames']}): accuracy {fmt(i['accuracy'])}, ROC AUC {fmt(i.get('roc_auc'))}")
    print(f"report: {Path(args.out) / 'report.html'}")


def cmd_compare(args: argparse.Namespace) -> None:
    from mucosa.evaluation.compare import compare

    check_writable_folder(args.out)
    summary = compare(args.runs, args.out, n_boot=args.bootstrap, seed=args.seed, pseudonymise=args.pseudonymise,
                      pseudonym_key=args.pseudonym_key)
    for row in summary["rows"]:
        print("  " + " | ".join(row))
    print(f"{len(summary['paired_tests'])} paired test(s); report: {Path(args.out) / 'comparison.html'}")


def cmd_explain(args: argparse.Namespace) -> None:
    from mucosa.evaluation.explain import explain_paths

    check_writable_folder(args.out)
    results = explain_paths(args.checkpoint, args.inputs, args.out, frames=args.frames, top=args.top,
                            device=args.device, runtime=args.runtime)
    for r in results:
        where = str(r.input) + ("" if r.frame is None else f" frame {r.frame}")
        print(f"{where}: {r.predicted} ({len(r.files)} figures)")
    print(f"explained {len(results)} frame(s); index: {Path(args.out) / 'explain.csv'}")


def cmd_texture(args: argparse.Namespace) -> None:
    from mucosa.evaluation.texture import texture

    check_writable_folder(args.out)
    result = texture(args.manifest, args.out, args.fuse, args.channel, args.bootstrap, args.seed,
                     args.pseudonymise, args.pseudonym_key)
    for name, m in result.methods.items():
        auc = "n/a" if m["roc_auc"]["value"] is None else f"{m['roc_auc']['value']:.3f}"
        right, total = m["patient_accuracy"]["count"]
        print(f"  {name}: file ROC AUC {auc}, files right at 0.5 {m['accuracy']['value']:.3f}, "
              f"patients right {right}/{total}")
    print(f"{result.methods['texture']['files']} test files; {result.out / 'metrics.json'}")


def cmd_demo(args: argparse.Namespace) -> None:
    from mucosa.demo import run_demo

    check_writable_folder(args.out, "demo folder")
    report = run_demo(args.out, quick=args.quick, config=args.config, seed=args.seed)
    print(f"demo report (synthetic data): {report}")
