"""Training samples from `dynamite_hf.data.instances` rows, in a deterministic order that survives resuming.

Every sample is addressed by its global position `p` in the stream of samples the run consumes: micro-step
`m` of process `r` (of `W`, each taking `B` samples) reads positions `m * B * W + r * B + [0, B)`. Position `p`
is row `permutation(epoch)[p mod N]` with `epoch = p // N`, and its augmentation and initial clicks draw from
`default_rng([seed, p])`. A run resumed at micro-step `m` therefore sees exactly the samples, crops and clicks
the uninterrupted run would have seen, with any number of dataloader workers.

Rows that cannot be used (an unreadable image, no instance mask, only empty masks, no instance surviving the
crops) are skipped with a warning and counted; the next row of the permutation takes their place.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ..clicks import Click
from ..data.instances import decode_rle
from .augmentation import augment
from .click_simulation import initial_clicks

logger = logging.getLogger(__name__)

MAX_REPLACEMENTS = 50


@dataclass
class TrainingSample:
    """One augmented sample with its initial clicks.

    Attributes:
        pixel_values: `(3, S, S)` float32, normalised (the padding is grey 128 before normalisation).
        instance_map: `(S, S)` int32 numpy, 0 background, k + 1 = instance k.
        padding_mask: `(S, S)` bool numpy.
        clicks: the initial clicks, `frame="model"`.
        position: the global sample position it fills.
        skipped: reasons of the rows skipped to fill this position.
    """

    pixel_values: torch.Tensor
    instance_map: np.ndarray
    padding_mask: np.ndarray
    clicks: list[Click]
    position: int
    skipped: list[str] = field(default_factory=list)


class UnusableRow(Exception):
    """A dataset row that cannot become a training sample (the message says why)."""


class DynamiteTrainingDataset(torch.utils.data.Dataset):
    """Map-style view of an instance dataset indexed by global sample position (see the module docstring).

    Args:
        dataset: a `datasets.Dataset` of the `dynamite_hf.data.instances` schema.
        crop_size: side of the square training crop.
        seed: the run's seed.
        pixel_mean / pixel_std: RGB normalisation (0-255 scale), from the image processor.
        min_area: instances of at most this many pixels (original resolution) are not used.
        max_instances: subsampling cap.
        min_scale / max_scale: the large-scale-jitter range.
    """

    def __init__(
        self,
        dataset,
        crop_size: int,
        seed: int,
        pixel_mean: list[float],
        pixel_std: list[float],
        min_area: int = 400,
        max_instances: int = 30,
        min_scale: float = 0.1,
        max_scale: float = 2.0,
    ) -> None:
        import datasets

        if len(dataset) == 0:
            raise ValueError("the training dataset is empty")
        missing = {"image", "masks", "areas"} - set(dataset.column_names)
        if missing:
            raise ValueError(
                f"the training dataset lacks column(s) {sorted(missing)}; build it with scripts/build_dataset.py "
                f"(got columns {dataset.column_names})"
            )
        # Images are decoded here (inside a try), so a corrupt file is a skipped row, not a crash.
        self.dataset = dataset.cast_column("image", datasets.Image(decode=False))
        self.crop_size = crop_size
        self.seed = seed
        self.mean = torch.tensor(pixel_mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(pixel_std, dtype=torch.float32)[:, None, None]
        self.min_area = min_area
        self.max_instances = max_instances
        self.min_scale, self.max_scale = min_scale, max_scale
        self._permutations: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def row_index(self, position: int, offset: int = 0) -> int:
        """The row that global position `position` reads (`offset` > 0: its replacement number `offset`)."""
        epoch, within = divmod(position, len(self.dataset))
        if epoch not in self._permutations:
            self._permutations = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))}
        return int(self._permutations[epoch][(within + offset) % len(self.dataset)])

    def _decode(self, row: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        try:
            data = row["image"]["bytes"]
            if data is None:
                with open(row["image"]["path"], "rb") as file:
                    data = file.read()
            with Image.open(io.BytesIO(data)) as image:
                image = np.asarray(image.convert("RGB"))
        except (OSError, SyntaxError, ValueError, TypeError) as error:
            raise UnusableRow(f"unreadable image ({type(error).__name__}: {error})") from error
        if not row["masks"]:
            raise UnusableRow("no instance masks")
        masks = np.stack([decode_rle(rle) for rle in row["masks"]])
        if masks.shape[1:] != image.shape[:2]:
            raise UnusableRow(f"masks of size {masks.shape[1:]} for an image of size {image.shape[:2]}")
        areas = np.asarray(row["areas"], dtype=np.int64)
        if not masks.any(axis=(1, 2)).any():
            raise UnusableRow("every instance mask is empty")
        return image, masks, areas

    def __getitem__(self, position: int) -> TrainingSample:
        skipped = []
        for offset in range(MAX_REPLACEMENTS):
            rng = np.random.default_rng([self.seed, position, offset])
            row = self.dataset[self.row_index(position, offset)]
            try:
                image, masks, areas = self._decode(row)
                sample = augment(
                    image,
                    masks,
                    areas,
                    self.crop_size,
                    rng,
                    self.min_area,
                    self.max_instances,
                    min_scale=self.min_scale,
                    max_scale=self.max_scale,
                )
                if sample is None:
                    raise UnusableRow(f"no instance larger than {self.min_area} px survives the crops")
            except UnusableRow as reason:
                warnings.warn(f"skipped training row {row.get('sample_id', '?')!r}: {reason}", stacklevel=2)
                skipped.append(str(reason).split(" (")[0])
                continue
            clicks = initial_clicks(sample.instance_map, sample.padding_mask, rng)
            pixels = torch.from_numpy(np.ascontiguousarray(sample.image)).permute(2, 0, 1).float()
            return TrainingSample(
                (pixels - self.mean) / self.std, sample.instance_map, sample.padding_mask, clicks, position, skipped
            )
        raise RuntimeError(
            f"{MAX_REPLACEMENTS} rows in a row could not be used for a training sample (last reasons: "
            f"{skipped[-3:]}); check the dataset with scripts/build_dataset.py"
        )


class TrainingOrder(torch.utils.data.Sampler):
    """Batches of global sample positions for one process, from micro-step `start` on, without end.

    `first_position` is the first position micro-step `start` reads (default `start * num_processes *
    batch_size`, the uninterrupted run's); a run resumed with another process count or batch size gives the
    number of samples the saved run had consumed, so the stream continues where it stopped."""

    def __init__(
        self,
        batch_size: int,
        process_index: int,
        num_processes: int,
        start: int = 0,
        first_position: int | None = None,
    ) -> None:
        self.batch_size, self.process_index, self.num_processes, self.start = (
            batch_size,
            process_index,
            num_processes,
            start,
        )
        self.first_position = start * num_processes * batch_size if first_position is None else first_position

    def positions(self, micro_step: int) -> list[int]:
        offset = ((micro_step - self.start) * self.num_processes + self.process_index) * self.batch_size
        first = self.first_position + offset
        return list(range(first, first + self.batch_size))

    def __iter__(self) -> Iterator[list[int]]:
        micro_step = self.start
        while True:
            yield self.positions(micro_step)
            micro_step += 1


@dataclass
class TrainingBatch:
    pixel_values: torch.Tensor
    instance_maps: list[np.ndarray]
    padding_masks: list[np.ndarray]
    clicks: list[list[Click]]
    positions: list[int]
    skipped: Counter


def collate(samples: list[TrainingSample]) -> TrainingBatch:
    return TrainingBatch(
        torch.stack([s.pixel_values for s in samples]),
        [s.instance_map for s in samples],
        [s.padding_mask for s in samples],
        [s.clicks for s in samples],
        [s.position for s in samples],
        Counter(reason for s in samples for reason in s.skipped),
    )
