"""Loaders for the public advertising data samples under ``../shared/data``.

One module per format; each ``read_*`` takes an explicit path and each ``load_*`` reads
the sample from ``get_settings().shared_data / <folder>`` (``ADPLATFORM_SHARED_DATA``).
Every loader raises :class:`adplatform.errors.DataError` naming the file and 1-based line
of the first malformed row; none skips rows. A missing file raises the usual
``FileNotFoundError``. Nothing is read at import.

Use :func:`available` / :func:`require` to check for a sample first.
"""

from __future__ import annotations

from training.loaders._tabular import STRING_DTYPE
from training.loaders.avazu import AVAZU_COLUMNS, load_avazu_sample, read_avazu
from training.loaders.criteo import (
    CAT_FEATURES,
    CRITEO_COLUMNS,
    INT_FEATURES,
    CriteoSplit,
    load_criteo_sample,
    read_criteo,
)
from training.loaders.datasets import (
    DatasetName,
    DatasetUnavailable,
    available,
    dataset_dir,
    dataset_names,
    require,
)
from training.loaders.drsa import (
    BidLandscape,
    DrsaSplit,
    load_drsa_featindex,
    load_drsa_log_sample,
    load_drsa_sample,
    read_drsa,
    read_drsa_log,
)
from training.loaders.ipinyou import (
    IPINYOU_COLUMNS,
    Season2Kind,
    Season3Kind,
    ipinyou_season2_files,
    ipinyou_season3_files,
    load_ipinyou_season2,
    load_ipinyou_season3,
    read_ipinyou_log,
    read_ipinyou_logs,
)
from training.loaders.libfm import (
    FmSplit,
    LibFMData,
    SparseFeatures,
    load_ipinyou_fm_featindex,
    load_ipinyou_fm_sample,
    read_featindex,
    read_libfm,
)
from training.loaders.talkingdata import (
    TALKINGDATA_COLUMNS,
    load_talkingdata_sample,
    read_talkingdata,
)

__all__ = [
    "AVAZU_COLUMNS",
    "CAT_FEATURES",
    "CRITEO_COLUMNS",
    "INT_FEATURES",
    "IPINYOU_COLUMNS",
    "STRING_DTYPE",
    "TALKINGDATA_COLUMNS",
    "BidLandscape",
    "CriteoSplit",
    "DatasetName",
    "DatasetUnavailable",
    "DrsaSplit",
    "FmSplit",
    "LibFMData",
    "Season2Kind",
    "Season3Kind",
    "SparseFeatures",
    "available",
    "dataset_dir",
    "dataset_names",
    "ipinyou_season2_files",
    "ipinyou_season3_files",
    "load_avazu_sample",
    "load_criteo_sample",
    "load_drsa_featindex",
    "load_drsa_log_sample",
    "load_drsa_sample",
    "load_ipinyou_fm_featindex",
    "load_ipinyou_fm_sample",
    "load_ipinyou_season2",
    "load_ipinyou_season3",
    "load_talkingdata_sample",
    "read_avazu",
    "read_criteo",
    "read_drsa",
    "read_drsa_log",
    "read_featindex",
    "read_ipinyou_log",
    "read_ipinyou_logs",
    "read_libfm",
    "read_talkingdata",
    "require",
]
