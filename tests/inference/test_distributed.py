"""Predicting on several processes (Lightning DDP): every file once, and the same outputs as one process."""

import subprocess
import sys

import numpy as np
import pytest

from media import write_gray_clip
from mucosa.atomic import write_torch
from mucosa.errors import ConfigError, MucosaWarning
from mucosa.inference.batch import predict
from mucosa.inference.distributed import Processes, shares


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_shares_hold_every_file_once_without_padding(world):
    rng = np.random.default_rng(world)
    for count in range(0, 12):
        weights = rng.integers(0, 1000, count).tolist()
        parts = shares(weights, world)
        assert len(parts) == world
        flat = [i for part in parts for i in part]
        assert sorted(flat) == list(range(count))  # each index exactly once: nothing repeated to even them out
        assert all(part == sorted(part) for part in parts)


def test_shares_balance_sizes_and_are_deterministic():
    weights = [900, 10, 10, 10, 10, 10, 10, 800]
    parts = shares(weights, 2)
    assert parts == shares(weights, 2)
    loads = sorted(sum(weights[i] for i in part) for part in parts)
    assert loads == [860, 900]  # the two large files apart, the small ones all on the lighter share


def test_one_device_is_one_process_and_a_single_device_name_is_refused(tmp_path, monkeypatch):
    assert not Processes().several and not Processes(devices="1").several
    assert Processes(devices=2).several and Processes(num_nodes=2).several and Processes(devices="auto").several
    with pytest.raises(ConfigError, match="names one device"):
        predict(tmp_path / "any.ckpt", [tmp_path], tmp_path / "out", device="cpu", processes=Processes(devices=2))
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")  # one of 4 processes torchrun started, each told it is alone
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ConfigError, match="torchrun started 4 processes"):
        predict(tmp_path / "any.ckpt", [tmp_path], tmp_path / "out")
    Processes(devices=2, num_nodes=2).check_launcher()  # settings that say several: Lightning checks the count


def test_several_nodes_without_a_launcher_are_refused_instead_of_waiting_a_day(monkeypatch):
    import os

    from mucosa.inference.distributed import _fabric

    for key in [k for k in os.environ if k.startswith(("SLURM_", "TORCHELASTIC_")) or k in (
            "NODE_RANK", "MASTER_ADDR", "WORLD_SIZE", "LOCAL_RANK", "GROUP_RANK")]:
        monkeypatch.delenv(key)
    with pytest.raises(ConfigError, match="num_nodes 2: no SLURM job or torchrun .*NODE_RANK"):
        _fabric(Processes("cpu", devices=1, num_nodes=2))
    monkeypatch.setenv("NODE_RANK", "0")  # Lightning's own way: the same command on each machine, by hand
    monkeypatch.setenv("MASTER_ADDR", "localhost")
    assert _fabric(Processes("cpu", devices=1, num_nodes=2)).world_size == 2


def test_settings_that_disagree_with_slurm_are_refused_before_any_work(monkeypatch):
    from mucosa.inference.distributed import _fabric

    slurm = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "1", "SLURM_JOB_NAME": "predict",
             "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost",
             "SLURM_JOB_ID": "1"}  # srun --nodes 1 --ntasks-per-node 2
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match="devices 3, num_nodes 1: .*ntasks-per-node=2"):
        _fabric(Processes("cpu", devices=3))
    with pytest.raises(ConfigError, match="num_nodes 2: .*--nodes=1"):
        _fabric(Processes("cpu", devices=2, num_nodes=2))
    assert _fabric(Processes("cpu", devices=2)).world_size == 2  # matching settings: two processes, from srun


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A random-weight checkpoint and seven files: four synthetic images (two cases), two videos and a broken
    image; returns (checkpoint, the paths to predict)."""
    import torch
    from PIL import Image

    from mucosa.data.preparation import Preprocessing
    from mucosa.data.synth import synthesize_cohort
    from mucosa.models.checkpoint import describe
    from mucosa.models.networks import ModelConfig, create_model

    root = tmp_path_factory.mktemp("archive")
    torch.manual_seed(0)
    config = ModelConfig(size=32)
    state = {f"model.{k}": v for k, v in create_model(config).state_dict().items()}
    prep = Preprocessing(size=32, crop="none", quality_threshold=0.2)
    write_torch({"state_dict": state, "mucosa": describe(config, ["healed", "active"], prep, {}, {})},
                root / "model.ckpt")
    synthesize_cohort(root / "cohort", patients=2, per_patient=2, size=40, seed=4)
    videos = root / "videos"
    videos.mkdir()
    images = [np.asarray(Image.open(p).convert("L")) for p in sorted((root / "cohort").rglob("*.png"))]
    for name, count in (("a.avi", 9), ("b.avi", 5)):  # synthetic tissue, and a black frame below the quality gate
        frames = [images[(i + len(name) * count) % len(images)] for i in range(count)]
        frames[2] = np.zeros_like(frames[2])
        write_gray_clip(videos / name, frames)
    (videos / "c-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"cut short")
    return root / "model.ckpt", [root / "cohort" / "images", videos]


@pytest.mark.slow
def test_two_cpu_processes_write_what_one_process_writes(archive, tmp_path):
    checkpoint, paths = archive
    with pytest.warns(MucosaWarning, match="c-broken.png"):
        one = predict(checkpoint, paths, tmp_path / "one", threads=1)
    assert one.total == 7 and len(one.unreadable) == 1  # an odd count, and one file unreadable
    videos = [f for f in one.files if f.name.endswith(".avi")]
    assert [f.frames for f in videos] == [9, 5] and all(0 < f.used < f.frames for f in videos)  # gated frames too

    run = subprocess.run([sys.executable, "-m", "mucosa", "predict", "--checkpoint", str(checkpoint),
                          *map(str, paths), "--out", str(tmp_path / "two"), "--threads", "1", "--accelerator",
                          "cpu", "--devices", "2", "--strategy", "ddp"],
                         text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=240)
    assert run.returncode == 3, run.stdout  # done, with an unreadable file
    for name in ("predictions.csv", "files.csv", "cases.csv"):  # byte for byte: same rows, order and numbers
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["cases.csv", "files.csv", "predictions.csv"]
    lines = run.stdout.splitlines()
    shared = [line for line in lines if " of 2 (cpu): " in line]
    counts = sorted(int(line.split(": ")[1].split(" of ")[0]) for line in shared)
    assert len(shared) == 2 and sum(counts) == 7 and counts[0] >= 1, run.stdout  # both worked, 7 files in all
    assert len([line for line in lines if "c-broken.png" in line and line.startswith("warning:")]) == 1
    assert len([line for line in lines if "1 of 7 files unreadable" in line]) == 1  # reported by rank 0 alone
    assert len([line for line in lines if line.startswith("per frame:")]) == 1
    assert len([line for line in lines if "has no atlas beside it" in line]) == 1  # said once, not once a process
    assert "Traceback" not in run.stdout


def test_two_processes_ask_the_atlas_as_one_process_does(atlas_run, tmp_path):
    from media import foreign_frames, write_images
    from mucosa.data.manifest import load_manifest

    held_out = next(r for r in load_manifest(atlas_run.run / "split.csv").records if r.split == "test").path.parent
    paths = [held_out, write_images(tmp_path / "sine", foreign_frames("sine"))]
    one = predict(atlas_run.best, paths, tmp_path / "one", threads=1)
    assert len(one.unfamiliar) == 1
    run = subprocess.run([sys.executable, "-m", "mucosa", "predict", "--checkpoint", str(atlas_run.best),
                          *map(str, paths), "--out", str(tmp_path / "two"), "--threads", "1", "--accelerator",
                          "cpu", "--devices", "2", "--strategy", "ddp"],
                         text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=240)
    assert run.returncode == 4, run.stdout  # done, with a case unfamiliar
    thumbnails = sorted(p.name for p in (tmp_path / "one" / "similar").iterdir())
    assert thumbnails and sorted(p.name for p in (tmp_path / "two" / "similar").iterdir()) == thumbnails
    for name in ("predictions.csv", "files.csv", "cases.csv", "similar.json", f"similar/{thumbnails[0]}"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name


def test_unusable_settings_are_one_line(archive, tmp_path, capsys):
    import torch

    from mucosa.cli import main

    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine could run two GPU processes")
    checkpoint, paths = archive

    code = main(["predict", "--checkpoint", str(checkpoint), str(paths[1]), "--out", str(tmp_path / "p"),
                 "--accelerator", "gpu", "--devices", "2"])
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "p").exists()
    assert [line for line in err.splitlines() if line.startswith("error:")] != [] and "Traceback" not in err
