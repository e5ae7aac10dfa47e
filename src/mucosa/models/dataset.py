"""The PyTorch side of a frame table: dataset, MONAI augmentation, a per-case sampler and the data loader
that training and pretraining share."""

from __future__ import annotations

import numpy as np

from mucosa.data.frame_table import FrameTable


def make_augmentation(config, size: int, seed: int = 0):
    """MONAI random affine (rotation, translation, shear, zoom, as the paper lists) and random flips.

    Args:
        config: an ``AugmentationConfig``.
        size: side of the frames (translation is a share of it).
        seed: seeds the transforms' random state (data-loading workers reseed it, see ``worker_init``).
    """
    import math

    from monai.transforms import Compose, RandAffine, RandFlip

    steps = []
    if config.probability > 0:
        steps.append(RandAffine(
            prob=config.probability, rotate_range=math.radians(config.rotate),
            shear_range=(config.shear, config.shear), scale_range=(config.zoom, config.zoom),
            translate_range=(config.translate * size, config.translate * size),
            padding_mode="reflection", mode="bilinear", cache_grid=False))
    if config.flip:
        steps += [RandFlip(prob=0.5, spatial_axis=0), RandFlip(prob=0.5, spatial_axis=1)]
    transform = Compose(steps)
    transform.set_random_state(seed=seed)
    return transform


class FrameDataset:
    """Frames of a FrameTable as ``(image (1, S, S) float in [0, 1], class index, table position)``."""

    def __init__(self, table: FrameTable, positions: np.ndarray, augment=None) -> None:
        self.table, self.positions, self.augment = table, np.asarray(positions, np.int64), augment
        self.labels = table.labels[self.positions] if len(self.positions) else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int):
        import torch

        position = int(self.positions[i])
        image = torch.from_numpy(self.table.frame(position).astype(np.float32) / 255.0)[None]  # (1, S, S)
        if self.augment is not None:
            image = torch.as_tensor(self.augment(image)).float().clamp_(0.0, 1.0)
        return image, int(self.labels[i]), position


def worker_init(worker_id: int) -> None:
    """Give every data-loading worker its own augmentation random stream."""
    from monai.data.utils import worker_init_fn

    worker_init_fn(worker_id)


class CaseSampler:
    """Each epoch, at most ``per_case`` random frames of every case (a video or a patient's image set).

    Consecutive pCLE frames are highly correlated: sampling a few per case and epoch lets every case count
    and keeps epochs short, while over many epochs all frames are seen.
    """

    def __init__(self, cases: np.ndarray, per_case: int, seed: int = 0) -> None:
        self.groups = [np.flatnonzero(cases == c) for c in dict.fromkeys(cases.tolist())]
        self.per_case, self.seed, self.epoch = per_case, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(min(len(g), self.per_case) for g in self.groups)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        chosen = np.concatenate([rng.choice(g, min(len(g), self.per_case), replace=False) for g in self.groups])
        self.epoch += 1
        return iter(rng.permutation(chosen).tolist())


def case_sampler(table: FrameTable, positions: np.ndarray, per_case: int, seed: int = 0) -> CaseSampler | None:
    """A :class:`CaseSampler` over the frames at table ``positions`` (a case: one file of one patient), or None
    when ``per_case`` is 0 (every frame every epoch)."""
    if per_case <= 0:
        return None
    records = table.cohort.records
    cases = np.array([str(records[r].path) + records[r].patient for r in table.row[positions]])
    return CaseSampler(cases, per_case, seed)


def frame_loader(dataset, training, sampler: CaseSampler | None = None, shuffle: bool = False,
                 drop_last: bool = False):
    """A ``DataLoader`` of ``dataset`` with the batch size and workers of ``training`` (a ``TrainingConfig``);
    ``shuffle``: in random order, where no ``sampler`` chooses the frames."""
    from torch.utils.data import DataLoader

    return DataLoader(dataset, batch_size=training.batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      drop_last=drop_last, num_workers=training.workers, persistent_workers=training.workers > 0,
                      worker_init_fn=worker_init if training.workers else None)
