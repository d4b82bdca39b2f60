"""Where the public data samples live, and whether they are there.

Every sample is a folder under ``get_settings().shared_data`` (environment variable
``ADPLATFORM_SHARED_DATA``; by default ``../shared/data`` beside the repository). Tests
call :func:`require` through one helper and skip with its message when a folder is absent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from adplatform.config import get_settings
from adplatform.errors import DataError

DatasetName = Literal[
    "criteo_dac_sample",
    "avazu_ctr_sample",
    "ipinyou_season2_userCTR",
    "ipinyou_season3_adv2821",
    "ipinyou_2259_bid_landscape_drsa",
    "ipinyou_adv2997_fm_deepctr",
    "talkingdata_adtracking",
]

#: The files (relative to the dataset folder) that the default loaders read.
REQUIRED_FILES: dict[str, tuple[str, ...]] = {
    "criteo_dac_sample": tuple(f"lapis_hong_wide_resdnn/{split}.tsv"
                               for split in ("train", "dev", "test")),
    "avazu_ctr_sample": ("deepctr/avazu_sample.txt",),
    "ipinyou_season2_userCTR": ("trainingData",),
    "ipinyou_season3_adv2821": ("training3rd",),
    "ipinyou_2259_bid_landscape_drsa": tuple(
        f"{split}.{part}.txt" for split in ("train", "test") for part in ("yzbx", "bid", "log")
    ) + ("featindex.txt",),
    "ipinyou_adv2997_fm_deepctr": ("train.fm.txt", "test.fm.txt", "featindex.fm.txt"),
    "talkingdata_adtracking": ("train_sample.csv",),
}


class DatasetUnavailable(DataError):
    """A public data sample is not present under the configured shared-data folder."""

    def __init__(self, missing: Path, name: str) -> None:
        super().__init__(f"{missing} absent; set ADPLATFORM_SHARED_DATA "
                         f"(the folder that holds {name}/)")
        self.path = str(missing)


def dataset_names() -> tuple[str, ...]:
    """Every dataset folder the loaders know."""
    return get_args(DatasetName)


def dataset_dir(name: DatasetName) -> Path:
    """The folder of dataset ``name`` under the configured shared-data root."""
    if name not in REQUIRED_FILES:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(dataset_names())}")
    return get_settings().shared_data / name


def _missing(name: DatasetName) -> Path | None:
    folder = dataset_dir(name)
    if not folder.is_dir():
        return folder
    for relative in REQUIRED_FILES[name]:
        if not (folder / relative).exists():
            return folder / relative
    return None


def available(name: DatasetName) -> bool:
    """Whether dataset ``name`` and every file its default loader reads are present."""
    return _missing(name) is None


def require(name: DatasetName) -> Path:
    """The folder of dataset ``name``; :class:`DatasetUnavailable` if it (or a file) is absent.

    The message says what is missing and how to point the loaders elsewhere, e.g.
    ``../shared/data/criteo_dac_sample absent; set ADPLATFORM_SHARED_DATA``.
    """
    missing = _missing(name)
    if missing is not None:
        raise DatasetUnavailable(missing, name)
    return dataset_dir(name)
