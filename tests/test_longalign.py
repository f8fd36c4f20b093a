"""LongAlign metadata as a dataset: parquet shards (local, or from a fake Hub dataset repo), the caption fallback
keys, the source filter, images hard-linked from an image root, missing and unreadable images counted, and
the build refused under min_coverage; the workflow's download and unzip rules fetch an archive once."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from t2i.data.build import build_dataset
from t2i.data.longalign import CoverageError


def _jpeg(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buf, format="JPEG")
    return buf.getvalue()


def _metadata(folder: Path) -> None:
    """Two shards of COCO rows 0-7 under coco2017/train2017/ (captions under `caption`, `text`, or as a list;
    row 6 has none) and one SAM row."""
    (folder / "sub").mkdir(parents=True)
    pq.write_table(pa.table({
        "path": [f"coco2017/train2017/{i:012d}.jpg" for i in range(4)],
        "caption": ["A long caption. With two sentences.", None, "Third.", "Fourth one."],
        "text": [None, "From the text column.", None, None],
        "source": ["coco", "COCO", "coco", "coco"]}), folder / "part-0.parquet")
    pq.write_table(pa.table({
        "path": [f"coco2017/train2017/{i:012d}.jpg" for i in (4, 5)] + ["sam/1.jpg"]
                + [f"coco2017/train2017/{i:012d}.jpg" for i in (6, 7)],
        "captions": [["first of a list", "second of a list"], ["cap five"], ["sam caption"], None, ["seven"]],
        "source": ["coco", "coco", "sam", "coco", "coco"]}), folder / "sub" / "part-1.parquet")


def _images(root: Path) -> None:
    (root / "coco2017" / "train2017").mkdir(parents=True)
    for i in (0, 1, 2, 4, 5):
        (root / "coco2017" / "train2017" / f"{i:012d}.jpg").write_bytes(_jpeg((40 * i, 0, 0)))
    (root / "coco2017" / "train2017" / "000000000005.jpg").write_bytes(b"not a jpeg")  # corrupt; 3 and 7 missing


def _cfg(**over) -> dict:
    return {"kind": "longalign", "metadata": "", "revision": None, "source_filter": "coco", "caption_column": None,
            "image_root": None, "images_url": None, "images_sha256": None, "images_folder": None,
            "min_coverage": 0.99, "max_images": None, "num_test": 1, "seed": 0, **over}


def test_rows_are_filtered_captioned_and_missing_images_counted(tmp_path):
    _metadata(tmp_path / "meta")
    _images(tmp_path / "root")
    with pytest.raises(CoverageError, match=r"only 4 of 7 LongAlign images .* 2 missing .*000000000003.jpg.* "
                                            r"1 unreadable .*000000000005.jpg"):
        build_dataset(_cfg(metadata=str(tmp_path / "meta"), image_root=str(tmp_path / "root")), tmp_path / "out")
    assert not (tmp_path / "out" / "SHA256SUMS").exists()

    out = build_dataset(_cfg(metadata=str(tmp_path / "meta"), image_root=str(tmp_path / "root"), min_coverage=0.5),
                        tmp_path / "out")
    rows = [json.loads(line) for line in open(out / "annotations.jsonl")]
    assert [r["path"].rsplit("/", 1)[1] for r in rows] == [f"{i:012d}.jpg" for i in (0, 1, 2, 4)]
    captions = {r["path"][-6:-4]: r["long_caption"] for r in rows}
    assert captions["00"] == "A long caption. With two sentences." and captions["01"] == "From the text column."
    assert captions["04"] in ("first of a list", "second of a list")
    assert [r["split"] for r in rows].count("test") == 1
    long = [json.loads(line) for line in open(out / "prompts" / "long.jsonl")]
    assert len(long) == 1 and long[0]["prompt"] == next(r["caption"] for r in rows if r["split"] == "test")
    first = out / "images" / rows[0]["file"]
    assert first.read_bytes() == (tmp_path / "root" / rows[0]["path"]).read_bytes()
    coverage = json.loads((out / "provenance.json").read_text())["coverage"]
    assert coverage["kept"] == 4 and coverage["missing"] == 2 and coverage["unreadable"] == 1
    assert coverage["no_caption"] == 1 and coverage["rows"] == 8  # the SAM row is filtered out

    again = build_dataset(_cfg(metadata=str(tmp_path / "meta"), image_root=str(tmp_path / "root"), min_coverage=0.5),
                          tmp_path / "again")
    assert (again / "annotations.jsonl").read_bytes() == (out / "annotations.jsonl").read_bytes()  # seeded
    every = build_dataset(_cfg(metadata=str(tmp_path / "meta"), image_root=str(tmp_path / "root"),
                               source_filter="*", min_coverage=0.5), tmp_path / "all")
    assert json.loads((every / "provenance.json").read_text())["coverage"]["rows"] == 9


def test_metadata_from_a_hub_dataset_repo(tmp_path, monkeypatch):
    from http_server import LoopbackServer, serve_hf_repo

    _metadata(tmp_path / "meta")
    _images(tmp_path / "root")
    with LoopbackServer() as srv:
        serve_hf_repo(srv, "luping-liu/LongAlign", tmp_path / "meta", repo_type="dataset")
        monkeypatch.setenv("HF_ENDPOINT", srv.base_url)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        out = build_dataset(_cfg(metadata="luping-liu/LongAlign", image_root=str(tmp_path / "root"),
                                 min_coverage=0.5), tmp_path / "out")
    assert len((out / "annotations.jsonl").read_text().splitlines()) == 4


def test_an_archive_unzips_whole_or_not_at_all(tmp_path):
    from t2i.data.build import unzip_into

    good, evil = tmp_path / "good.zip", tmp_path / "evil.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("train2017/a.jpg", _jpeg((1, 2, 3)))
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("train2017/b.jpg", _jpeg((1, 2, 3)))
        zf.writestr("../outside.jpg", b"x")
    unzip_into(good, tmp_path / "out" / "coco2017")
    assert (tmp_path / "out" / "coco2017" / "train2017" / "a.jpg").is_file()
    with pytest.raises(ValueError, match="'../outside.jpg' would be written outside the folder"):
        unzip_into(evil, tmp_path / "out" / "other")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["coco2017"]
    assert not (tmp_path / "outside.jpg").exists()


@pytest.mark.slow
def test_the_workflow_downloads_and_unzips_an_archive_once_for_two_datasets(tmp_path):
    from http_server import LoopbackServer
    from workflow_harness import snakemake, tiny_config, write_config

    _metadata(tmp_path / "meta")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(8):
            zf.writestr(f"train2017/{i:012d}.jpg", _jpeg((30 * i, 90, 0)))
    config = tiny_config()
    with LoopbackServer() as srv:
        srv.add("/zips/train2017.zip", buf.getvalue())
        for name in ("la_a", "la_b"):
            config["datasets"][name] = _cfg(metadata=str(tmp_path / "meta"), images_url=srv.url("/zips/train2017.zip"),
                                            images_folder="coco2017", seed=1 if name == "la_b" else 0)
        write_config(tmp_path, config)
        snakemake(tmp_path, "results/datasets/la_a/SHA256SUMS", "results/datasets/la_b/SHA256SUMS", "--cores", "1",
                  "--configfile", str(tmp_path / "config.yaml"))
        assert len(srv.requests_for("/zips/train2017.zip")) == 1
    for name in ("la_a", "la_b"):
        rows = (tmp_path / "results" / "datasets" / name / "annotations.jsonl").read_text().splitlines()
        assert len(rows) == 7  # the SAM row filtered out, row 6 has no caption, no image missing
    assert (tmp_path / "results" / "downloads" / "unzipped" / "coco2017" / "train2017").is_dir()
