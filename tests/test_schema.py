"""Artifacts: validated on write, checked on read, atomic, readable by polars and datasets."""
from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.errors import SchemaError
from pipeline.schema import TASKS, describe, read_table, write_table
from pipeline.task import Task


def test_tasks_round_trip_and_open_in_polars_and_datasets(splits, tmp_path):
    import datasets
    import polars as pl

    path = tmp_path / "train.parquet"
    rows = [t.to_row() for t in splits["train"][:30]]
    write_table(rows, path, TASKS)
    back = [Task.from_row(r) for r in read_table(path, TASKS).to_pylist()]
    assert back == splits["train"][:30]
    df = pl.read_parquet(path)
    assert df.height == 30 and df["gold"].struct.field("facts").list.len().min() >= 1
    ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
    assert ds[0]["task_id"] == rows[0]["task_id"]
    assert "I1 (one tool)" in describe(path)
    assert [p.name for p in tmp_path.iterdir()] == ["train.parquet"], "no temporary files left behind"


def test_bad_records_name_file_record_and_field(tmp_path, splits):
    rows = [t.to_row() for t in splits["train"][:3]]
    rows[2]["level"] = None
    with pytest.raises(SchemaError, match=r"x.parquet: record 2 field 'level' must not be null"):
        write_table(rows, tmp_path / "x.parquet", TASKS)
    rows[2]["level"] = "I1"
    del rows[1]["query"]
    with pytest.raises(SchemaError, match=r"record 1 lacks field\(s\) \['query'\]"):
        write_table(rows, tmp_path / "x.parquet", TASKS)
    rows = [t.to_row() for t in splits["train"][:3]]
    rows[1]["tools"] = 5
    with pytest.raises(SchemaError, match=r"record 1 field 'tools'"):
        write_table(rows, tmp_path / "x.parquet", TASKS)
    assert not (tmp_path / "x.parquet").exists()


def test_reader_names_the_missing_column(tmp_path):
    import pyarrow.parquet as pq

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"task_id": ["a"]}), path)
    with pytest.raises(SchemaError, match=r"t.parquet: column\(s\) \['split', "):
        read_table(path, TASKS)
    with pytest.raises(SchemaError, match="no such file"):
        read_table(tmp_path / "nope.parquet", TASKS)


def test_a_failed_write_keeps_the_old_file(tmp_path, splits):
    path = tmp_path / "t.parquet"
    write_table([splits["train"][0].to_row()], path, TASKS)
    before = path.read_bytes()
    bad = splits["train"][1].to_row() | {"split": None}
    with pytest.raises(SchemaError):
        write_table([bad], path, TASKS)
    assert path.read_bytes() == before
