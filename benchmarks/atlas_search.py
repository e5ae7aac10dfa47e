"""Atlas search at scale: HNSW's recall@10 against exact search, and query latency, on synthetic embeddings.

The embeddings stand in for a model's frame embeddings (D = 128, the CNN-LSTM's feature channels):
L2-normalised points from a mixture of Gaussians on the sphere, three levels deep as real ones are:
:data:`CLUSTERS` kinds of tissue; patients around each (:data:`FRAMES_PER_PATIENT` frames, a video); each
frame around its patient. Within a kind of tissue, patients and frames vary along :data:`RANK` directions
of their own (plus a little noise in all): real embeddings lie near a low-dimensional surface, and
isotropic noise in all 128 directions (``--rank 0``) would make every neighbour about as far as the next,
which no real image set does. Two query sets:

- **new patients** (the usual search: a patient not in the atlas), searched with nothing left out;
- **own patient left out** (calibration's search, and a case of the atlas searched again): new frames of
  patients in the atlas, searched without that patient's rows, the very neighbourhood a graph search
  reaches first (``inference.atlas_index`` gives it one more candidate for each row left out).

For each atlas size the exact index (``IndexFlatIP``) gives the true 10 nearest frames; each HNSW setting
(M, efSearch) is measured against it. Latency is the median and p95 of searching one query frame (a still
image) and a batch of 64 frames (a case's video), repeated, on the threads mucosa sets (``--threads``; the
graph is built on ``--build-threads``). Prints a markdown table; ``--out FILE`` writes the rows as JSON.

    nice python benchmarks/atlas_search.py [--sizes 10000 30000 100000 1000000] [--m 32] [--ef 64 128 256]
        [--threads N] [--build-threads N] [--out atlas_search.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from mucosa.inference.atlas_index import EXACT, HNSW, VectorIndex, default_threads, set_threads

DIMENSION = 128
CLUSTERS = 20  # kinds of tissue
FRAMES_PER_PATIENT = 200  # a video's usable frames
PATIENT_SPREAD = 0.5  # a patient's centre around its cluster's (noise of this norm before normalising)
FRAME_SPREAD = 0.35  # a frame around its patient's centre
RANK = 16  # directions a patient's frames vary along (a video's changes are few: depth, motion, contrast)
NOISE = 0.05  # and a little noise in every direction
NEIGHBOURS = 10
SINGLE_QUERIES = 200  # one-frame searches timed
BATCH, BATCHES = 64, 30  # a case's frames, and how many such searches are timed
LEFT_OUT_PATIENTS, LEFT_OUT_FRAMES = 20, 25  # own-patient-left-out queries: 500 frames of 20 patients


def normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def around(centres: np.ndarray, spread: float, rng: np.random.Generator) -> np.ndarray:
    """Points on the sphere around ``centres`` (one per row): Gaussian noise of norm about ``spread``."""
    noise = rng.standard_normal(centres.shape, dtype=np.float32) * (spread / np.sqrt(centres.shape[1]))
    return normalise(centres + noise)


class World:
    """The synthetic cohort: clusters (kinds of tissue), each with its centre and ``rank`` directions along
    which its patients and their frames vary (rank 0: every direction, isotropic noise)."""

    def __init__(self, seed: int = 0, rank: int = RANK) -> None:
        self.rng = np.random.default_rng(seed)
        self.rank = rank
        self.clusters = normalise(self.rng.standard_normal((CLUSTERS, DIMENSION), dtype=np.float32))
        self.directions = self.rng.standard_normal((CLUSTERS, rank, DIMENSION), dtype=np.float32) / np.sqrt(DIMENSION)

    def moved(self, centres: np.ndarray, cluster: int, spread: float) -> np.ndarray:
        """``centres`` moved along their cluster's directions by about ``spread``, then by ``NOISE`` in all."""
        if not self.rank:
            return around(centres, spread, self.rng)
        moves = self.rng.standard_normal((len(centres), self.rank), dtype=np.float32) * (spread / np.sqrt(self.rank))
        return around(centres + moves @ self.directions[cluster], NOISE, self.rng)

    def patients(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """``count`` new patients: their centres and clusters."""
        clusters = self.rng.integers(CLUSTERS, size=count)
        return np.stack([self.moved(self.clusters[c][None], c, PATIENT_SPREAD)[0] for c in clusters]), clusters

    def frames(self, patients: tuple[np.ndarray, np.ndarray], per_patient: int) -> np.ndarray:
        """``per_patient`` frames of each patient, patient after patient."""
        centres, clusters = patients
        return np.concatenate([self.moved(np.repeat(centre[None], per_patient, 0), cluster, FRAME_SPREAD)
                               for centre, cluster in zip(centres, clusters)])


def latency_ms(index: VectorIndex, queries: np.ndarray, batch: int, repeats: int) -> dict:
    """Median and p95 milliseconds of searching ``batch`` query frames at a time."""
    times = []
    for i in range(repeats):
        chunk = queries[(i * batch) % len(queries):][:batch]
        start = time.perf_counter()
        index.search(chunk, NEIGHBOURS)
        times.append(time.perf_counter() - start)
    return {"p50": float(np.percentile(times, 50) * 1000), "p95": float(np.percentile(times, 95) * 1000)}


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.tolist(), truth.tolist())]))


def left_out_search(index: VectorIndex, queries: np.ndarray, patients: np.ndarray, exact: bool = False) -> np.ndarray:
    """Each query's 10 nearest rows without its own patient's rows (``FRAMES_PER_PATIENT`` a patient)."""
    rows = []
    for patient, chunk in zip(patients, np.split(queries, len(patients))):
        own = np.arange(patient * FRAMES_PER_PATIENT, (patient + 1) * FRAMES_PER_PATIENT)
        rows.append(index.search(chunk, NEIGHBOURS, excluded=own, exact=exact)[1])
    return np.concatenate(rows)


def measure(size: int, ms: list[int], efs: list[int], threads: int, build_threads: int, seed: int,
            rank: int = RANK) -> list[dict]:
    world = World(seed, rank)
    centres = world.patients(-(-size // FRAMES_PER_PATIENT))
    atlas = world.frames(centres, FRAMES_PER_PATIENT)[:size]
    fresh = world.frames(world.patients(-(-(BATCH * BATCHES) // LEFT_OUT_FRAMES)), LEFT_OUT_FRAMES)
    whole_patients = size // FRAMES_PER_PATIENT
    chosen = world.rng.choice(whole_patients, min(LEFT_OUT_PATIENTS, whole_patients), replace=False)
    own = world.frames((centres[0][chosen], centres[1][chosen]), LEFT_OUT_FRAMES)

    set_threads(threads)
    exact = VectorIndex.build(atlas, EXACT)
    truth, truth_left_out = exact.search(fresh, NEIGHBOURS)[1], left_out_search(exact, own, chosen)
    rows = [{"frames": size, "index": "exact", "M": None, "ef_search": None, "recall_at_10": 1.0,
             "recall_at_10_own_patient_left_out": 1.0, "build_s": 0.0,
             "ms_1_frame": latency_ms(exact, fresh, 1, SINGLE_QUERIES),
             "ms_64_frames": latency_ms(exact, fresh, BATCH, BATCHES)}]
    print_row(rows[-1])
    del exact
    for m in ms:
        set_threads(build_threads)
        start = time.perf_counter()
        hnsw = VectorIndex.build(atlas, HNSW, m=m)
        build_s = time.perf_counter() - start
        set_threads(threads)
        for ef in efs:
            hnsw.ef_search = ef
            rows.append({"frames": size, "index": "hnsw", "M": m, "ef_search": ef,
                         "recall_at_10": recall(hnsw.search(fresh, NEIGHBOURS)[1], truth),
                         "recall_at_10_own_patient_left_out": recall(left_out_search(hnsw, own, chosen),
                                                                     truth_left_out),
                         "build_s": build_s, "ms_1_frame": latency_ms(hnsw, fresh, 1, SINGLE_QUERIES),
                         "ms_64_frames": latency_ms(hnsw, fresh, BATCH, BATCHES)})
            print_row(rows[-1])
        del hnsw
    return rows


HEADER = ("| atlas frames | index | M | efSearch | recall@10 | recall@10, own patient left out | build (s) "
          "| 1 frame, ms (median / p95) | 64 frames, ms (median / p95) |\n"
          "|---:|---|---:|---:|---:|---:|---:|---:|---:|")


def print_row(row: dict) -> None:
    def text(value, digits):
        return "" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else f"{value}"

    print(f"| {row['frames']:,} | {row['index']} | {text(row['M'], 0)} | {text(row['ef_search'], 0)} "
          f"| {text(row['recall_at_10'], 4)} | {text(row['recall_at_10_own_patient_left_out'], 4)} "
          f"| {text(row['build_s'], 1)} | {row['ms_1_frame']['p50']:.2f} / {row['ms_1_frame']['p95']:.2f} "
          f"| {row['ms_64_frames']['p50']:.1f} / {row['ms_64_frames']['p95']:.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000, 1_000_000])
    parser.add_argument("--m", type=int, nargs="+", default=[32], help="HNSW links per frame (default 32)")
    parser.add_argument("--ef", type=int, nargs="+", default=[64, 128, 256], help="HNSW efSearch values")
    parser.add_argument("--threads", type=int, default=default_threads(), help="search threads (mucosa's default)")
    parser.add_argument("--build-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rank", type=int, default=RANK, help="directions a patient's frames vary along "
                        f"(default {RANK}; 0: every direction, isotropic noise)")
    parser.add_argument("--out", help="write the rows as JSON to this file")
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, search threads {args.threads}, "
          f"build threads {args.build_threads}, D = {DIMENSION}, load average {os.getloadavg()[0]:.2f}\n")
    print(HEADER)
    rows = [row for size in args.sizes
            for row in measure(size, args.m, args.ef, args.threads, args.build_threads, args.seed, args.rank)]
    print(f"\nload average {os.getloadavg()[0]:.2f}")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"dimension": DIMENSION, "threads": args.threads, "build_threads": args.build_threads,
                       "cores": os.cpu_count(), "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
