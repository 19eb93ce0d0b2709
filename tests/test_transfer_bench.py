"""benchmarks/transfer.py on tiny synthetic CIFAR-shaped data: every stage runs, records its
figures, resumes without redoing finished runs, and its helpers do what the benchmark relies on."""

import gzip
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("transfer_bench", ROOT / "benchmarks" / "transfer.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["transfer_bench"] = module
    spec.loader.exec_module(module)
    return module


def tiny_args(tmp_path):
    return [
        "--synthetic", "24", "--threads", "1", "--out", str(tmp_path / "out"),
        "--results", str(tmp_path / "r.json"), "--tables", str(tmp_path / "t.md"),
        "--plot", str(tmp_path / "p.png"), "--widths", "4,4,8,8", "--batch", "16",
        "--pretrain-epochs", "1", "--scratch-epochs", "1", "--finetune-epochs", "1",
        "--full-per-class", "24", "--ns", "1,5,all", "--draws", "1:2", "--small-steps", "1:2,5:2",
        "--feature-steps", "3", "--finetune-classifier-epochs", "1", "--episodes", "10",
        "--queries", "2", "--protonet-iterations", "2", "--maml-iterations", "1", "--maml-tasks", "1",
    ]  # fmt: skip


def test_every_stage_records_its_figures_and_a_rerun_skips_them(bench, tmp_path):
    assert bench.main(tiny_args(tmp_path)) == 0
    results = json.loads((tmp_path / "r.json").read_text())
    for method in ("scratch", "finetune", "linear", "cosine"):
        assert set(results[method]) == {"n=1/draw=0", "n=1/draw=1", "n=5/draw=0", "n=all/draw=0"}
        for entry in results[method].values():
            assert 0.0 <= entry["accuracy"] <= 1.0 and entry["seconds"] > 0
    assert results["finetune"]["n=all/draw=0"]["images"] == 5 * 24
    assert results["meta_training"]["protonet"]["iterations"] == 2
    names = {"protonet", "maml", "pretrained+prototype", "pretrained+linear", "pretrained+cosine"}
    assert set(results["episodes"]) == {f"{m}/{k}shot" for m in names for k in (1, 5)}
    assert all(e["tasks"] == 10 for e in results["episodes"].values())
    cross = {"pretrained+prototype", "pretrained+linear", "pretrained+cosine", "protonet"}
    assert set(results["crossdomain"]) == {f"{m}/{k}shot" for m in cross for k in (1, 5)}
    assert (tmp_path / "p.png").stat().st_size > 1000
    assert "| all (5,000) |" in (tmp_path / "t.md").read_text()
    # A second run finds every figure recorded and the weights saved: nothing is trained again.
    before = (tmp_path / "r.json").read_text()
    bench.main(tiny_args(tmp_path) + ["--stage", "finetune"])
    assert json.loads((tmp_path / "r.json").read_text())["finetune"] == json.loads(before)["finetune"]


def test_timing_stage_measures_every_candidate(bench, tmp_path):
    args = ["--stage", "timing", "--threads", "1", "--batch", "2", "--timing-steps", "1"]
    assert bench.main(args + ["--results", str(tmp_path / "r.json")]) == 0
    timing = json.loads((tmp_path / "r.json").read_text())["timing"]
    assert len(timing) == 10 and all(e["images_per_second"] > 0 for e in timing.values())


def test_crop_flip_moves_and_mirrors_pixels_without_inventing_any(bench):
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.int64).reshape(2, 3, 8, 8).to(torch.uint8)
    out = bench.crop_flip(x[None].expand(50, -1, -1, -1, -1), torch.Generator().manual_seed(0), pad=2)
    assert out.shape == (50, 2, 3, 8, 8) and out.dtype == torch.uint8
    allowed = set(x.flatten().tolist()) | {0}
    assert set(out.flatten().tolist()) <= allowed
    assert (out == x).flatten(2).all(-1).float().mean().item() < 0.5  # most draws moved or mirrored
    # Without padding the only change left is the flip: each image comes out as it is or mirrored.
    out = bench.crop_flip(x[None].expand(50, -1, -1, -1, -1), torch.Generator().manual_seed(0), pad=0)
    kept = (out == x).flatten(2).all(-1)
    mirrored = (out == x.flip(-1)).flatten(2).all(-1)
    assert (kept | mirrored).all() and kept.any() and mirrored.any()


def test_split_episodes_take_support_and_queries_from_their_own_pools(bench):
    train = bench.Split(torch.full((50, 3, 4, 4), 1, dtype=torch.uint8), torch.arange(5).repeat(10))
    test = bench.Split(torch.full((20, 3, 4, 4), 2, dtype=torch.uint8), torch.arange(5).repeat(4))
    batch = bench.SplitEpisodes(train, test, 5, 3, 4, seed=0).sample(6)
    assert batch.support_x.shape == (6, 15, 3, 4, 4) and batch.query_x.shape == (6, 20, 3, 4, 4)
    assert (batch.support_x == 1).all() and (batch.query_x == 2).all()
    assert batch.support_y.tolist()[0] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    with pytest.raises(ValueError, match="fewer than"):
        bench.SplitEpisodes(train, test, 5, 3, 5, seed=0)


def test_subsets_draw_n_distinct_images_per_class(bench):
    split = bench.Split(torch.arange(100).to(torch.uint8), torch.arange(5).repeat(20))
    part = bench.subset(split, 3, seed=1)
    assert torch.bincount(part.y).tolist() == [3] * 5
    assert len(set(part.x.tolist())) == 15
    assert (split.y[part.x.long()] == part.y).all()
    assert not torch.equal(part.x, bench.subset(split, 3, seed=2).x)


def test_fashion_mnist_images_become_32x32_rgb(bench, tmp_path):
    x = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8)
    y = torch.tensor([3, 0, 9, 5])
    out = bench.grey28_to_rgb32(x)
    assert out.shape == (4, 3, 32, 32) and out.dtype == torch.uint8
    assert torch.equal(out[:, 0], out[:, 2])

    def idx(magic: int, dims: tuple[int, ...], data: torch.Tensor) -> bytes:
        header = b"".join(d.to_bytes(4, "big") for d in (magic, *dims))
        return gzip.compress(header + data.to(torch.uint8).numpy().tobytes())

    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(idx(2051, (4, 28, 28), x))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(idx(2049, (4,), y))
    split = bench.load_fmnist(str(tmp_path))
    assert torch.equal(split.x, out) and torch.equal(split.y, y) and split.y.dtype == torch.long
