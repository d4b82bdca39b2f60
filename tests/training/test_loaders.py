"""training.loaders: the real public samples (skipped when absent) and malformed files.

Every real-data test reaches its folder through :func:`need`, the one place that skips.
Malformed-file tests write small files to ``tmp_path`` and check that the DataError names
the file and the 1-based line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import training.loaders as loaders
from adplatform.config import get_settings
from adplatform.errors import DataError
from training.loaders import (
    AVAZU_COLUMNS,
    CRITEO_COLUMNS,
    IPINYOU_COLUMNS,
    STRING_DTYPE,
    TALKINGDATA_COLUMNS,
    DatasetName,
    DatasetUnavailable,
    DrsaSplit,
    FmSplit,
    available,
    load_avazu_sample,
    load_criteo_sample,
    load_drsa_featindex,
    load_drsa_log_sample,
    load_drsa_sample,
    load_ipinyou_fm_featindex,
    load_ipinyou_fm_sample,
    load_ipinyou_season2,
    load_ipinyou_season3,
    load_talkingdata_sample,
    read_avazu,
    read_criteo,
    read_drsa,
    read_featindex,
    read_ipinyou_log,
    read_libfm,
    read_talkingdata,
    require,
)

realdata = pytest.mark.realdata


def need(name: DatasetName) -> Path:
    """The folder of sample ``name``, or skip the test saying what is absent and what to set."""
    try:
        return require(name)
    except DatasetUnavailable as exc:
        pytest.skip(str(exc))


def error_at(call: Callable[[], object], path: Path, line: int | None, match: str | None) -> DataError:
    """Run ``call``, expecting a DataError for ``path`` at ``line`` whose message matches."""
    with pytest.raises(DataError, match=match) as info:
        call()
    err = info.value
    assert err.path == str(path)
    assert err.line == line
    where = f"{path}:{line}: " if line is not None else f"{path}: "
    assert str(err).startswith(where)
    return err


def write(path: Path, lines: list[str], *, newline: str = "\n") -> Path:
    path.write_bytes(newline.join(lines).encode() + newline.encode())
    return path


# -- synthetic rows ----------------------------------------------------------------------


def criteo_fields(label: str = "0", ints: list[str] | None = None,
                  cats: list[str] | None = None) -> list[str]:
    ints = ints if ints is not None else [str(i) for i in range(13)]
    cats = cats if cats is not None else [f"{i:08x}" for i in range(26)]
    return [label, *ints, *cats]


def criteo_line(label: str = "0", ints: list[str] | None = None, cats: list[str] | None = None) -> str:
    return "\t".join(criteo_fields(label, ints, cats))


AVAZU_ROW = ("1000009418151094273,0,14102100,1005,0,1fbe01fe,f3845767,28905ebd,ecad2386,"
             "7801e8d9,07d7df22,a99f214a,ddd2926e,44956a24,1,2,15706,320,50,1722,0,35,-1,79")


def ipinyou_fields(**changes: str) -> list[str]:
    row = dict.fromkeys(IPINYOU_COLUMNS, "x")
    row.update(timestamp="20130606124417888", logtype="1", region="1", city="2", adexchange="1",
               slotwidth="300", slotheight="250", slotprice="0", bidprice="300", payprice="77",
               advertiser="1458", usertag="10006,10063", url="null")
    row.update(changes)
    return [row[name] for name in IPINYOU_COLUMNS]


def ipinyou_line(**changes: str) -> str:
    return "\t".join(ipinyou_fields(**changes))


TD_HEADER = ",".join(TALKINGDATA_COLUMNS)
TD_ROWS = ["87540,12,1,13,497,2017-11-07 09:30:38,,0",
           "105560,25,1,17,259,2017-11-07 13:40:27,2017-11-07 13:41:00,1"]


# -- dataset folders ---------------------------------------------------------------------


@pytest.fixture
def empty_shared_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """ADPLATFORM_SHARED_DATA pointed at an empty folder for the test's duration."""
    root = tmp_path / "shared"
    root.mkdir()
    monkeypatch.setenv("ADPLATFORM_SHARED_DATA", str(root))
    get_settings.cache_clear()
    yield root
    get_settings.cache_clear()


def test_require_names_the_absent_folder_and_the_variable(empty_shared_data: Path) -> None:
    assert not available("criteo_dac_sample")
    with pytest.raises(DatasetUnavailable) as info:
        require("criteo_dac_sample")
    message = str(info.value)
    assert message.startswith(f"{empty_shared_data / 'criteo_dac_sample'} absent; set ADPLATFORM_SHARED_DATA")
    assert isinstance(info.value, DataError)


def test_require_names_a_missing_file_inside_a_present_folder(empty_shared_data: Path) -> None:
    folder = empty_shared_data / "avazu_ctr_sample"
    folder.mkdir()
    assert not available("avazu_ctr_sample")
    with pytest.raises(DatasetUnavailable, match="deepctr/avazu_sample.txt absent"):
        require("avazu_ctr_sample")
    (folder / "deepctr").mkdir()
    write(folder / "deepctr" / "avazu_sample.txt", [",".join(AVAZU_COLUMNS), AVAZU_ROW])
    assert available("avazu_ctr_sample")
    assert require("avazu_ctr_sample") == folder
    assert len(load_avazu_sample()) == 1


def test_unknown_dataset_name_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown dataset"):
        available("no_such_sample")  # type: ignore[arg-type]


def test_public_api_is_exported() -> None:
    for name in loaders.__all__:
        assert hasattr(loaders, name), name
    assert set(loaders.dataset_names()) == set(loaders.datasets.REQUIRED_FILES)


# -- real samples ------------------------------------------------------------------------


@realdata
def test_criteo_canonical_sample() -> None:
    need("criteo_dac_sample")
    frame = load_criteo_sample()
    assert len(frame) == 8_000
    assert list(frame.columns) == [*CRITEO_COLUMNS, "split"]
    sizes = frame.groupby("split", observed=True).size().to_dict()
    assert sizes == {"train": 7_200, "dev": 409, "test": 391}
    positives = frame.groupby("split", observed=True)["label"].sum().to_dict()
    assert positives == {"train": 1_549, "dev": 93, "test": 86}  # 21.5 %, 22.7 %, 22.0 %
    assert frame["label"].dtype == np.int8
    assert all(frame[f"I{i}"].dtype == "Int64" for i in range(1, 14))
    assert all(frame[f"C{i}"].dtype == STRING_DTYPE for i in range(1, 27))
    assert frame["I1"].isna().sum() == 8_000 - 4_388
    assert frame["C1"].str.fullmatch(r"[0-9a-f]{8}").all()
    train = load_criteo_sample("train")
    pd.testing.assert_frame_equal(train, frame[frame["split"] == "train"].drop(columns="split"))


@realdata
def test_criteo_deepctr_copy_reads_into_the_same_schema() -> None:
    folder = need("criteo_dac_sample")
    canonical = read_criteo(folder / "lapis_hong_wide_resdnn" / "dev.tsv")
    deepctr = read_criteo(folder / "deepctr" / "criteo_sample.txt")  # CSV, header, "260.0"
    assert len(deepctr) == 200
    assert int(deepctr["label"].sum()) == 49
    assert (deepctr.dtypes == canonical.dtypes).all()
    assert deepctr["I3"].iat[0] == 260


@realdata
def test_avazu_sample_with_and_without_header(tmp_path: Path) -> None:
    folder = need("avazu_ctr_sample")
    frame = load_avazu_sample()
    assert len(frame) == 100
    assert list(frame.columns) == list(AVAZU_COLUMNS)
    assert int(frame["click"].sum()) == 20
    assert frame["id"].dtype == np.uint64
    assert frame["id"].iat[1] == 10000169349117863715  # above the int64 range
    assert (frame["hour"] == pd.Timestamp("2014-10-21 00:00")).all()
    assert frame["site_id"].dtype == STRING_DTYPE
    assert frame["C15"].dtype == np.int32
    lines = (folder / "deepctr" / "avazu_sample.txt").read_text().splitlines()
    headerless = write(tmp_path / "raw.csv", lines[1:])
    pd.testing.assert_frame_equal(read_avazu(headerless), frame)


@realdata
def test_talkingdata_sample() -> None:
    need("talkingdata_adtracking")
    frame = load_talkingdata_sample()
    assert len(frame) == 100_000
    assert list(frame.columns) == list(TALKINGDATA_COLUMNS)  # "..ip" read as "ip"
    assert int(frame["is_attributed"].sum()) == 227
    assert frame["ip"].nunique() == 34_857
    assert frame["click_time"].min() == pd.Timestamp("2017-11-06 16:00:00")
    assert frame["click_time"].max() == pd.Timestamp("2017-11-09 15:59:51")
    assert (frame["attributed_time"].notna() == (frame["is_attributed"] == 1)).all()
    assert dict(frame.dtypes.astype(str)) == {
        "ip": "int32", "app": "int32", "device": "int32", "os": "int32", "channel": "int32",
        "click_time": "datetime64[ns]", "attributed_time": "datetime64[ns]",
        "is_attributed": "int8"}


@realdata
def test_ipinyou_season2_logs() -> None:
    folder = need("ipinyou_season2_userCTR")
    imp = load_ipinyou_season2("imp")
    old = load_ipinyou_season2("old_imp")
    clk = load_ipinyou_season2("clk")
    assert (len(imp), len(old), len(clk)) == (42_000, 42_000, 9_978)
    assert list(imp.columns) == list(IPINYOU_COLUMNS)
    assert imp["timestamp"].dt.date.value_counts().eq(6_000).all()
    assert (imp["logtype"] == 1).all() and (clk["logtype"] == 2).all()
    both = pd.concat([imp, old])
    assert set(both["advertiser"]) == {1458, 3358, 3386, 3427, 3476}
    assert both["payprice"].mean() == pytest.approx(87.67, abs=0.01)
    assert int((both["payprice"] > both["bidprice"]).sum()) == 2_273
    assert imp["payprice"].dtype == np.int32
    assert imp["usertag"].dtype == STRING_DTYPE
    assert imp["urlid"].isna().all()  # "null" throughout
    # The known 23-field conversion row: an error by default, NA usertag when allowed.
    conv_file = folder / "trainingData" / "conv.20130606.txt"
    error_at(lambda: load_ipinyou_season2("conv"), conv_file, 15, "allow_missing_usertag")
    conv = load_ipinyou_season2("conv", allow_missing_usertag=True)
    assert len(conv) == 494
    assert (conv["logtype"] == 2).all()  # conversions relabelled as clicks upstream
    assert pd.isna(conv["usertag"].iat[14])


@realdata
def test_ipinyou_season3_logs() -> None:
    need("ipinyou_season3_adv2821")
    imp = load_ipinyou_season3("imp")
    clk = load_ipinyou_season3("clk")  # CRLF line ends
    assert (len(imp), len(clk)) == (10_000, 442)
    assert set(imp["bidprice"]) == {277, 294}
    assert imp["payprice"].between(1, 294).all()
    assert (imp["slotprice"] == 0).mean() == pytest.approx(0.39, abs=0.005)
    assert set(imp["adexchange"]) == {1, 2, 3, 4}
    assert set(imp["slotvisibility"].dropna()) >= {"FirstView"}
    assert clk["usertag"].isna().all()
    assert not clk["advertiser"].ne(2821).any()
    assert not any(clk[c].str.contains("\r").any() for c in ("usertag", "keypage", "slotformat")
                   if clk[c].notna().any())


@realdata
def test_drsa_bid_landscape() -> None:
    need("ipinyou_2259_bid_landscape_drsa")
    featindex = load_drsa_featindex()
    assert len(featindex) == 97_420
    cases: list[tuple[DrsaSplit, int, int, float]] = [("train", 8_355, 5, 0.344), ("test", 4_171, 0, 0.239)]
    for split, rows, clicks, win_rate in cases:
        data = load_drsa_sample(split)
        assert len(data) == rows
        assert int(data.click.sum()) == clicks
        assert data.win_rate == pytest.approx(win_rate, abs=0.001)
        assert (data.observed == (data.market_price < data.bid)).all()
        assert data.market_price.dtype == np.int32 and data.bid.dtype == np.int32
        assert data.features.width() == 16
        assert data.features.index_matrix().shape == (rows, 16)
        assert data.features.indices.max() < len(featindex)
        censored = data.observed_market_price()
        assert np.isnan(censored[~data.observed]).all()
        assert (censored[data.observed] == data.market_price[data.observed]).all()
    train = load_drsa_sample("train")
    assert int(train.click[train.observed].sum()) == 0  # every click sits on a lost row


@realdata
def test_drsa_logs() -> None:
    need("ipinyou_2259_bid_landscape_drsa")
    train, test = load_drsa_log_sample("train"), load_drsa_log_sample("test")
    assert (len(train), len(test)) == (8_355, 4_171)
    assert list(train.columns) == list(test.columns) == ["click", "weekday", "hour", *IPINYOU_COLUMNS]
    assert (train["advertiser"] == 2259).all()
    assert int(train["click"].sum()) == 5


@realdata
def test_ipinyou_fm_ctr_files() -> None:
    need("ipinyou_adv2997_fm_deepctr")
    featindex = load_ipinyou_fm_featindex()
    assert len(featindex) == 133_465
    assert featindex["field"].nunique() == 16
    cases: list[tuple[FmSplit, int, int]] = [("train", 26_773, 255), ("test", 21_150, 50)]
    for split, rows, clicks in cases:
        data = load_ipinyou_fm_sample(split)
        assert len(data) == rows
        assert int(data.label.sum()) == clicks
        assert data.label.dtype == np.int8
        assert data.features.width() == 16
        assert (data.features.values == 1).all()
        assert data.features.to_csr(len(featindex)).shape == (rows, len(featindex))


@realdata
def test_text_pass_agrees_with_typed_pass_on_real_files(monkeypatch: pytest.MonkeyPatch) -> None:
    folder = need("ipinyou_season3_adv2821")
    path = folder / "training3rd" / "clk.20131021.adv2821.txt"
    typed = read_ipinyou_log(path)
    force_text_pass(monkeypatch)
    pd.testing.assert_frame_equal(read_ipinyou_log(path), typed)


def force_text_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> pd.DataFrame:
        raise ValueError("typed parse disabled by the test")

    monkeypatch.setattr(loaders._tabular, "_read_typed", fail)


# -- malformed files: criteo -------------------------------------------------------------


def test_criteo_wrong_field_count(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.tsv", [criteo_line(), criteo_line(), "\t".join(criteo_fields()[:-1])])
    error_at(lambda: read_criteo(path), path, 3, "expected 40 tab-separated fields, found 39")


@pytest.mark.parametrize(("label", "match"), [("x", "non-number 'x'"), ("2", "out of range"),
                                              ("", "missing"), ("0.5", "non-integer")])
def test_criteo_bad_label(tmp_path: Path, label: str, match: str) -> None:
    path = write(tmp_path / "bad.tsv", [criteo_line(), criteo_line(label=label)])
    error_at(lambda: read_criteo(path), path, 2, rf"column 'label'.*{match}")


def test_criteo_non_numeric_int_feature_reports_the_earliest_line(tmp_path: Path) -> None:
    ints = [str(i) for i in range(13)]
    bad_i5 = ints[:4] + ["abc"] + ints[5:]
    rows = [criteo_line(), criteo_line(), criteo_line(ints=bad_i5), criteo_line(label="7")]
    path = write(tmp_path / "bad.tsv", rows)
    error_at(lambda: read_criteo(path), path, 3, "column 'I5'.*'abc'")


def test_criteo_blank_line_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.tsv", [criteo_line(), "", criteo_line()])
    error_at(lambda: read_criteo(path), path, 2, "blank line")


def test_criteo_header_variant_counts_the_header_line(tmp_path: Path) -> None:
    rows = [",".join(CRITEO_COLUMNS), ",".join(criteo_fields()),
            ",".join(criteo_fields(label="1", ints=["1.0"] * 13)), ",".join(criteo_fields(label="y"))]
    path = write(tmp_path / "bad.csv", rows)
    error_at(lambda: read_criteo(path), path, 4, "column 'label'")
    ok = read_criteo(path, nrows=2)
    assert ok["label"].tolist() == [0, 1]
    assert ok["I1"].tolist() == [0, 1]


def test_criteo_missing_values_and_empty_file(tmp_path: Path) -> None:
    ints = [""] * 13
    cats = [""] * 26
    path = write(tmp_path / "gaps.tsv", [criteo_line(ints=ints, cats=cats), criteo_line(label="1")])
    frame = read_criteo(path)
    assert frame["I1"].isna().tolist() == [True, False]
    assert frame["C26"].isna().tolist() == [True, False]
    empty = tmp_path / "empty.tsv"
    empty.write_bytes(b"")
    out = read_criteo(empty)
    assert len(out) == 0 and list(out.columns) == list(CRITEO_COLUMNS)
    assert out["I1"].dtype == "Int64" and out["label"].dtype == np.int8


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.tsv"
    path.write_bytes((criteo_line() + "\n").encode() * 2 + b"1\t\xff\n")
    error_at(lambda: read_criteo(path), path, 3, "not valid UTF-8")


criteo_int = st.one_of(st.just(""), st.integers(-(2**40), 2**40).map(str))
criteo_cat = st.one_of(st.just(""), st.integers(0, 2**32 - 1).map(lambda n: f"{n:08x}"))
criteo_rows = st.lists(st.tuples(st.sampled_from(["0", "1"]), st.lists(criteo_int, min_size=13, max_size=13),
                                 st.lists(criteo_cat, min_size=26, max_size=26)), min_size=1, max_size=12)


@settings(max_examples=25, deadline=None, database=None)
@given(rows=criteo_rows, data=st.data())
def test_criteo_round_trip_and_error_line(tmp_path_factory: pytest.TempPathFactory,
                                          rows: list[tuple[str, list[str], list[str]]],
                                          data: st.DataObject) -> None:
    folder = tmp_path_factory.mktemp("criteo")
    lines = ["\t".join([label, *ints, *cats]) for label, ints, cats in rows]
    frame = read_criteo(write(folder / "ok.tsv", lines))
    assert frame["label"].tolist() == [int(label) for label, _, _ in rows]
    for i in range(13):
        expected = [pd.NA if ints[i] == "" else int(ints[i]) for _, ints, _ in rows]
        assert frame[f"I{i + 1}"].astype(object).where(frame[f"I{i + 1}"].notna(), pd.NA).tolist() == expected
    bad_row = data.draw(st.integers(0, len(lines) - 1))
    corrupt = data.draw(st.sampled_from(["drop_field", "bad_label", "bad_int"]))
    fields = lines[bad_row].split("\t")
    if corrupt == "drop_field":
        fields = fields[:-1]
    elif corrupt == "bad_label":
        fields[0] = "yes"
    else:
        fields[1 + data.draw(st.integers(0, 12))] = "1x"
    lines[bad_row] = "\t".join(fields)
    bad = write(folder / "bad.tsv", lines)
    error_at(lambda: read_criteo(bad), bad, bad_row + 1, None)


def test_typed_and_text_passes_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    criteo = write(tmp_path / "c.tsv", [criteo_line(), criteo_line(label="1", ints=[""] * 13)])
    avazu = write(tmp_path / "a.csv", [AVAZU_ROW, AVAZU_ROW.replace("1000009418151094273", "18446744073709551615")])
    ipinyou = write(tmp_path / "i.txt", [ipinyou_line(), ipinyou_line(adexchange="null", usertag="")])
    talking = write(tmp_path / "t.csv", [TD_HEADER, *TD_ROWS])
    readers: list[tuple[Callable[[Path], object], Path]] = [
        (read_criteo, criteo), (read_avazu, avazu), (read_ipinyou_log, ipinyou), (read_talkingdata, talking)]
    typed = [reader(path) for reader, path in readers]
    force_text_pass(monkeypatch)
    for (reader, path), expected in zip(readers, typed, strict=True):
        pd.testing.assert_frame_equal(reader(path), expected)  # type: ignore[arg-type]


# -- malformed files: avazu, talkingdata -------------------------------------------------


def test_avazu_short_row_after_header(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.csv", [",".join(AVAZU_COLUMNS), AVAZU_ROW, AVAZU_ROW.rsplit(",", 1)[0]])
    error_at(lambda: read_avazu(path), path, 3, "expected 24 comma-separated fields, found 23")


@pytest.mark.parametrize(("old", "new", "match"), [
    ("14102100", "14102124", "column 'hour'"),            # hour 24
    ("14102100", "1410210", "column 'hour'"),             # 7 digits
    ("1000009418151094273", "18446744073709551616", "column 'id'"),  # > uint64
    ("1000009418151094273", "-1", "column 'id'"),
    (",0,14102100", ",3,14102100", "column 'click'"),
])
def test_avazu_bad_values(tmp_path: Path, old: str, new: str, match: str) -> None:
    path = write(tmp_path / "bad.csv", [AVAZU_ROW, AVAZU_ROW.replace(old, new)])
    error_at(lambda: read_avazu(path), path, 2, match)


def test_avazu_foreign_header_is_line_1(tmp_path: Path) -> None:
    path = write(tmp_path / "test.csv", ["id,hour,C1", "1,14102100,1005"])
    error_at(lambda: read_avazu(path), path, 1, "unexpected header")


def test_talkingdata_headers_and_consistency(tmp_path: Path) -> None:
    quirky = write(tmp_path / "q.csv", ["..ip" + TD_HEADER[2:], *TD_ROWS])
    plain = write(tmp_path / "p.csv", TD_ROWS)
    frame = read_talkingdata(quirky)
    pd.testing.assert_frame_equal(read_talkingdata(plain), frame)
    assert frame["attributed_time"].iat[1] == pd.Timestamp("2017-11-07 13:41:00")
    unattributed = write(tmp_path / "u.csv", [TD_HEADER, TD_ROWS[0], TD_ROWS[1].replace("2017-11-07 13:41:00", "")])
    error_at(lambda: read_talkingdata(unattributed), unattributed, 3, "is_attributed=1 but attributed_time is empty")
    bad_time = write(tmp_path / "b.csv", [TD_HEADER, TD_ROWS[0].replace("09:30:38", "09:30")])
    error_at(lambda: read_talkingdata(bad_time), bad_time, 2, "column 'click_time'")


# -- malformed files: ipinyou ------------------------------------------------------------


def test_ipinyou_missing_usertag_needs_the_flag(tmp_path: Path) -> None:
    path = write(tmp_path / "conv.txt", [ipinyou_line(), "\t".join(ipinyou_fields()[:-1])])
    error_at(lambda: read_ipinyou_log(path), path, 2, "found 23 fields.*allow_missing_usertag")
    frame = read_ipinyou_log(path, allow_missing_usertag=True)
    assert frame["usertag"].isna().tolist() == [False, True]
    short = write(tmp_path / "short.txt", [ipinyou_line(), "\t".join(ipinyou_fields()[:-2])])
    error_at(lambda: read_ipinyou_log(short, allow_missing_usertag=True), short, 2,
             "expected 23 or 24 tab-separated fields, found 22")


@pytest.mark.parametrize(("change", "match"), [
    ({"timestamp": "20131306124417888"}, "column 'timestamp'"),   # month 13
    ({"timestamp": "2013060612441788"}, "column 'timestamp'"),    # 16 digits
    ({"timestamp": "20130606126017888"}, "column 'timestamp'"),   # minute 60
    ({"payprice": "abc"}, "column 'payprice'"),
    ({"payprice": "-5"}, "column 'payprice'.*out of range"),
    ({"logtype": "4"}, "column 'logtype'"),
    ({"adexchange": "x"}, "column 'adexchange'"),
])
def test_ipinyou_bad_values(tmp_path: Path, change: dict[str, str], match: str) -> None:
    path = write(tmp_path / "imp.txt", [ipinyou_line(), ipinyou_line(), ipinyou_line(**change)])
    error_at(lambda: read_ipinyou_log(path), path, 3, match)


def test_ipinyou_crlf_and_nulls(tmp_path: Path) -> None:
    path = write(tmp_path / "clk.txt", [ipinyou_line(usertag="null", adexchange="null"), ipinyou_line()],
                 newline="\r\n")
    frame = read_ipinyou_log(path)
    assert frame["usertag"].isna().tolist() == [True, False]
    assert frame["usertag"].iat[1] == "10006,10063"
    assert frame["adexchange"].isna().tolist() == [True, False]
    assert frame["url"].isna().all()
    assert frame["timestamp"].iat[0] == pd.Timestamp("2013-06-06 12:44:17.888")


# -- malformed files: sparse formats -----------------------------------------------------


def test_drsa_reads_and_checks_the_bid_file(tmp_path: Path) -> None:
    yzbx = write(tmp_path / "t.yzbx.txt", ["0 66 48 3:1 6:1", "1 20 29 4:1 17:1", "0 30 30 5:1 9:1"])
    bids = write(tmp_path / "t.bid.txt", ["48 0", "29 1", "30 0"])
    data = read_drsa(yzbx, bids)
    assert data.observed.tolist() == [False, True, False]  # a tie (z == b) loses
    assert data.features.index_lists()[1].tolist() == [4, 17]
    assert np.isnan(data.observed_market_price()[[0, 2]]).all()
    wrong_win = write(tmp_path / "w.bid.txt", ["48 0", "29 1", "30 1"])
    error_at(lambda: read_drsa(yzbx, wrong_win), wrong_win, 3, "win must equal z < b")
    wrong_bid = write(tmp_path / "b.bid.txt", ["48 0", "28 1", "30 0"])
    error_at(lambda: read_drsa(yzbx, wrong_bid), wrong_bid, 2, "b=28")
    short = write(tmp_path / "s.bid.txt", ["48 0", "29 1"])
    error_at(lambda: read_drsa(yzbx, short), short, 3, "2 rows")


@pytest.mark.parametrize(("line", "match"), [
    ("0 66 3:1 6:1", "expected an integer"),   # two leading fields, the third is a pair
    ("0 66 48 3:1 6", "expected index:value, found '6'"),
    ("0 66 48 3:1 6:x", "expected index:value"),
    ("2 66 48 3:1", "field 'y'"),
    ("0 -1 48 3:1", "field 'z'"),
])
def test_drsa_malformed_rows(tmp_path: Path, line: str, match: str) -> None:
    path = write(tmp_path / "t.yzbx.txt", ["0 66 48 3:1 6:1", line])
    error_at(lambda: read_drsa(path), path, 2, match)


def test_libfm_rows_and_errors(tmp_path: Path) -> None:
    path = write(tmp_path / "ok.fm.txt", ["0 1:1 6:1 31:1", "1 2:0.5 7:1", "0"])
    data = read_libfm(path)
    assert data.label.tolist() == [0, 1, 0]
    assert data.features.width() is None
    assert data.features.row(1)[0].tolist() == [2, 7]
    assert data.features.row(1)[1].tolist() == [0.5, 1.0]
    assert data.features.to_csr().toarray()[1, 2] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="different numbers"):
        data.features.index_matrix()
    for bad, match in (("a 1:1", "field 'label'"), ("2 1:1", "field 'label'"), ("0 1:1:1", "index:value"),
                       ("", "blank line")):
        broken = write(tmp_path / "bad.fm.txt", ["0 1:1", "1 2:1", bad, "0 3:1"])
        error_at(lambda p=broken: read_libfm(p), broken, 3, match)  # type: ignore[misc]


def test_featindex_errors(tmp_path: Path) -> None:
    ok = write(tmp_path / "f.txt", ["weekday:other\t0", "IP:1.2.3.*\t1", "slotprice:101+\t2"])
    frame = read_featindex(ok)
    assert frame["field"].tolist() == ["weekday", "IP", "slotprice"]
    assert frame["value"].tolist() == ["other", "1.2.3.*", "101+"]
    no_colon = write(tmp_path / "n.txt", ["weekday:other\t0", "weekday\t1"])
    error_at(lambda: read_featindex(no_colon), no_colon, 2, "expected field:value")
    repeated = write(tmp_path / "r.txt", ["a:1\t0", "a:2\t1", "a:3\t1"])
    error_at(lambda: read_featindex(repeated), repeated, 3, "repeated index")
