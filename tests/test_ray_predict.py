"""``depthmux mux predict --ray`` on Ray Data: the same predictions as the single-process command
(a RevMUX N = 2 checkpoint, whose outputs depend on the group a row lands in), bad rows as one line.
A local Ray bound to 127.0.0.1 with 2 CPUs, started once for the module (~15 s)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")

from depthmux.cli import main  # noqa: E402
from depthmux.errors import DepthmuxError  # noqa: E402
from depthmux.multiplexing import load_classifier  # noqa: E402
from depthmux.recipes.mux_predict import MuxPredictConfig, predict_file  # noqa: E402
from depthmux.recipes.ray_predict import RayPredictConfig, predict_with_ray  # noqa: E402

TEXTS = [f"sentence number {i} is {'good' if i % 3 else 'bad'} and {'long ' * (i % 5)}" for i in range(53)]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, tokenizer):
    from serve_fixtures import tiny_classifiers

    return tiny_classifiers(tmp_path_factory.mktemp("ckpt"), tokenizer)


@pytest.fixture(scope="module")
def local_ray():
    from depthmux.utils.ray_cluster import start_ray

    start_ray(None, 2)  # loopback only
    yield
    ray.shutdown()


def reference(ckpt, texts, batch):
    """What the single-process command computes: batches [kB, (k+1)B) of the file."""
    model = load_classifier(ckpt).eval()
    labels, probs = [], []
    for i in range(0, len(texts), batch):
        a, b = model.classify(texts[i : i + batch])
        labels += a
        probs += b
    return labels, probs


# slow: starting Ray costs about a minute here
@pytest.mark.slow
@pytest.mark.parametrize("actors", [1, 2], ids=["1-actor", "2-actors"])
def test_ray_data_equals_single_process(tmp_path, ckpts, local_ray, actors, capsys):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": list(range(len(TEXTS))), "text": TEXTS}), src, row_group_size=7)
    single = tmp_path / "single.parquet"
    predict_file(MuxPredictConfig(str(ckpts["n2"]), str(src), str(single), batch_size=6, chunk_rows=10), False)
    out = tmp_path / "out"
    main(["mux", "predict", str(ckpts["n2"]), "--input", str(src), "--out", str(out), "--batch-size", "6",
          "--ray", "--actors", str(actors), "--cpus-per-actor", "0.5", "--json"])  # fmt: skip
    assert json.loads(capsys.readouterr().out)["rows"] == len(TEXTS)
    if actors == 2:  # blocks of 2 batches: several blocks, files and actor calls
        out = tmp_path / "out-blocks"
        cfg = RayPredictConfig(str(ckpts["n2"]), str(src), str(out), batch_size=6, actors=2, cpus_per_actor=0.5)
        cfg.block_rows = 12
        predict_with_ray(cfg)
        assert len(list(out.iterdir())) == 5
    want, got = pq.read_table(single), pq.read_table(out)
    assert got.column_names == want.column_names and got.to_pylist() == want.to_pylist()  # bit for bit, in order
    labels, probs = reference(ckpts["n2"], TEXTS, 6)
    assert [r["predicted_label"] for r in got.to_pylist()] == labels
    # another batch size groups rows differently: a planted difference the comparison would catch
    assert reference(ckpts["n2"], TEXTS, 4)[1] != probs
    with pytest.raises(DepthmuxError, match="would take all 2 CPUs"):
        predict_with_ray(RayPredictConfig(str(ckpts["n2"]), str(src), str(tmp_path / "o2"), actors=2))


def test_ray_options_are_one_line_before_ray(tmp_path, ckpts, capsys):
    src = tmp_path / "in.csv"
    src.write_text("id,text\n1,fine text\n")
    with pytest.raises(DepthmuxError, match="--actors must be"):
        RayPredictConfig(str(ckpts["n2"]), str(src), str(tmp_path / "o3"), actors=0).validate()
    with pytest.raises(DepthmuxError, match="--cpus-per-actor must be"):
        RayPredictConfig(str(ckpts["n2"]), str(src), str(tmp_path / "o3"), cpus_per_actor=0).validate()
    (tmp_path / "x.jsonl").write_text('{"text": "a"}\n')
    with pytest.raises(DepthmuxError, match=r"reads \.parquet"):
        RayPredictConfig(str(ckpts["n2"]), str(tmp_path / "x.jsonl"), str(tmp_path / "o4")).validate()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(DepthmuxError, match="is not empty"):
        RayPredictConfig(str(ckpts["n2"]), str(src), str(tmp_path / "full")).validate()
    with pytest.raises(SystemExit) as e:  # the CLI: one line, exit 2, before Ray starts
        main(["mux", "predict", str(ckpts["n2"]), "--input", str(src), "--out", str(tmp_path / "o5"), "--ray",
              "--actors", "0"])  # fmt: skip
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: --actors must be") and len(err.splitlines()) == 1


@pytest.mark.slow
def test_ray_bad_row_is_one_line(tmp_path, ckpts, local_ray):
    src = tmp_path / "in.csv"
    src.write_text("id,text\n1,fine text\n2,\n3,more text\n")
    with pytest.raises(DepthmuxError, match="no text in column 'text'"):
        predict_with_ray(RayPredictConfig(str(ckpts["n2"]), str(src), str(tmp_path / "o1"), cpus_per_actor=0.5))
    assert not (tmp_path / "o1").exists()
    with pytest.raises(DepthmuxError, match=r"no column\(s\) \['body'\]"):
        predict_with_ray(RayPredictConfig(str(ckpts["n2"]), str(src), str(tmp_path / "o2"), ["body"]))
