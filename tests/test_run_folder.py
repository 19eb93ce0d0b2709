"""Run folders: one writer at a time, temporary files, file modes, a full disk, split.json, the final
lines of a run and of `metalab runs`, and the command-line checks that go with them."""

import errno
import io
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import REPO, classification_csv, run
from metalab import checkpoint as ckpt_module
from metalab import run_folder
from metalab.builders import build_source
from metalab.checkpoint import load_checkpoint
from metalab.config import Config
from metalab.evaluate import evaluate
from metalab.experiment import figure_cell, meta_test
from metalab.train import final_lines, train

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

SINE = ["--meta-batch", "2", "--val-every", "0", "--threads", "1", "--quiet", "--no-eval"]


def no_log(_):
    pass


# ---------------------------------------------------------------------------------------------
# One writer at a time
# ---------------------------------------------------------------------------------------------


def start_writer(run_dir: Path, *args) -> subprocess.Popen:
    """`metalab train --run-dir RUN_DIR ARGS...` in a process of its own (sine MAML, one thread)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    log = open(run_dir.parent / f"{run_dir.name}.stderr", "w")
    return subprocess.Popen(
        [sys.executable, "-m", "metalab.cli", "train", "--run-dir", str(run_dir), *SINE, *map(str, args)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )


def holder_pid(run_dir: Path) -> int | None:
    try:
        return json.loads((run_dir / run_folder.LOCK).read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the writer exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def snapshot(folder: Path) -> dict:
    """Every file directly in `folder`: its bytes, modification time and mode."""
    return {
        p.name: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_mode)
        for p in folder.iterdir()
        if p.is_file()
    }


def dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(done.stdout)


def test_a_second_writer_is_refused_at_once_and_touches_nothing(tmp_path, capsys):
    run_dir = tmp_path / "a"
    # Writes nothing after its start: no checkpoint, no metrics line, until the millionth iteration.
    proc = start_writer(run_dir, "--iterations", 1_000_000, "--checkpoint-every", 0, "--log-every", 1_000_000)
    try:
        wait_for(
            lambda: holder_pid(run_dir) == proc.pid and (run_dir / "metrics.jsonl").exists(),
            proc,
            "the writer's start",
        )
        # The live writer's own atomic write in progress: not the second writer's to remove.
        (run_dir / ".checkpoint.pt.inflight.tmp").write_bytes(b"half a checkpoint")
        before = snapshot(run_dir)
        for extra in ([], ["--resume"], ["--algorithm", "fomaml", "--iterations", "3"]):
            code, out, err = run(capsys, "train", "--run-dir", run_dir, *extra, "--quiet", "--no-eval")
            assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
            host = re.escape(socket.gethostname())
            assert re.search(
                rf"{re.escape(str(run_dir))} is in use by pid {proc.pid} on {host}, started \d\d:\d\d; "
                r"wait for it to finish or choose another --run-dir",
                err,
            ), err
        assert snapshot(run_dir) == before
        # Whether the folder is held is the kernel's answer, never the lock file's text: a dead pid
        # written over it leaves the live writer's lock held.
        gone = dead_pid()
        (run_dir / ".lock").write_text(json.dumps({"pid": gone, "host": "elsewhere", "started": 0}))
        code, _, err = run(capsys, "train", "--run-dir", run_dir, "--resume", "--quiet")
        assert code == 2 and f"in use by pid {gone} on elsewhere, started 1970-01-01" in err, err
        (run_dir / ".lock").write_text("")
        code, _, err = run(capsys, "train", "--run-dir", run_dir, "--resume", "--quiet")
        assert code == 2 and "in use by another process (it has not written its pid yet)" in err, err
        assert proc.poll() is None  # still training
    finally:
        proc.kill()
        proc.wait()


def test_a_writer_killed_with_kill_9_leaves_a_lock_the_next_resume_takes_over(tmp_path, capsys):
    run_dir = tmp_path / "b"
    proc = start_writer(run_dir, "--iterations", 1_000_000, "--checkpoint-every", 3, "--log-every", 3)
    try:
        wait_for(
            lambda: holder_pid(run_dir) == proc.pid and (run_dir / "checkpoint.pt").exists(),
            proc,
            "its first checkpoint",
        )
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert holder_pid(run_dir) == proc.pid  # its text stays; the kernel released its lock
    # Temporary files of interrupted atomic writes, and a file of the user's that only looks alike.
    stale = [run_dir / ".checkpoint.pt.x1y2z3w4.tmp", run_dir / ".metrics.jsonl.abcdefgh.tmp"]
    for path in stale:
        path.write_bytes(b"torn")
    mine = run_dir / "notes.tmp"
    mine.write_text("keep me")
    saved = load_checkpoint(run_dir / "checkpoint.pt")["iteration"]
    code, out, err = run(
        capsys,
        "train",
        "--run-dir",
        run_dir,
        "--resume",
        "--config",
        run_dir / "config.yaml",
        "--iterations",
        saved + 2,
        "--quiet",
        "--no-eval",
    )
    assert code == 0, err
    assert f"resuming {run_dir} at iteration {saved}" in out
    assert int(re.search(r"removed (\d+) temporary file\(s\)", out).group(1)) >= len(stale)
    assert not any(p.exists() for p in stale) and mine.read_text() == "keep me"
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp") and p != mine]
    assert load_checkpoint(run_dir / "checkpoint.pt")["iteration"] == saved + 2
    assert holder_pid(run_dir) == os.getpid()


def test_lock_mechanics_in_one_process(tmp_path, capsys):
    folder = tmp_path / "c"
    folder.mkdir()
    # A lock file naming a live process (this one's parent) does not make a free folder look held.
    (folder / ".lock").write_text(
        json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "started": 0})
    )
    lock = run_folder.acquire(folder)
    assert holder_pid(folder) == os.getpid()
    assert run_folder.acquire(folder) is lock  # the holding thread may take it again
    refused = []

    def other_thread():
        try:
            run_folder.acquire(folder)
        except run_folder.RunFolderBusy as e:
            refused.append(str(e))

    worker = threading.Thread(target=other_thread)
    worker.start()
    worker.join()
    assert refused and f"in use by pid {os.getpid()}" in refused[0]
    lock.release()
    lock.release()
    with run_folder.hold(folder):  # free again
        pass
    # A start refused for bad input leaves no folder behind.
    code, _, err = run(
        capsys,
        "train",
        "--benchmark",
        "folder",
        "--data-dir",
        tmp_path / "missing",
        "--run-dir",
        tmp_path / "new",
    )
    assert code == 2 and "missing" in err and not (tmp_path / "new").exists()


# ---------------------------------------------------------------------------------------------
# File modes and split.json (a CSV run)
# ---------------------------------------------------------------------------------------------


def csv_args(path, run_dir):
    return [
        "--benchmark",
        "csv",
        "--data-dir",
        path,
        "--csv-label",
        "label",
        "--algorithm",
        "protonet",
        "--ways",
        "3",
        "--shots",
        "1",
        "--queries",
        "2",
        "--val-classes",
        "3",
        "--test-classes",
        "3",
        "--meta-batch",
        "2",
        "--val-every",
        "0",
        "--test-tasks",
        "10",
        "--threads",
        "1",
        "--quiet",
        "--run-dir",
        run_dir,
    ]


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_run_files_follow_the_umask_and_split_json_records_the_classes(tmp_path, capsys, umask_027):
    data = classification_csv(tmp_path / "t.csv", classes=10, per_class=4)
    run_dir = tmp_path / "run"
    code, out, err = run(
        capsys, "train", *csv_args(data, run_dir), "--iterations", "4", "--checkpoint-every", "2"
    )
    assert code == 0, err
    names = ["checkpoint.pt", "config.yaml", "metrics.jsonl", "results.json", "split.json", ".lock"]
    assert {n: oct(mode(run_dir / n)) for n in names} == {n: oct(0o640) for n in names}

    record = json.loads((run_dir / "split.json").read_text())
    assert record["unit"] == "classes" and record["benchmark"] == "csv"
    splits = record["splits"]
    assert [splits[s]["count"] for s in ("train", "val", "test")] == [4, 3, 3]
    every = [n for s in ("train", "val", "test") for n in splits[s]["examples"]]
    assert sorted(every) == [f"species_{k}" for k in range(10)]  # disjoint, and all of them
    assert all(k == 4 for s in splits.values() for k in s["examples"].values())

    code, out, err = run(capsys, "runs", run_dir)
    assert code == 0, err
    test_names = ", ".join(splits["test"]["examples"])
    assert f"meta-test classes (3): {test_names}" in out and "meta-train classes (4): " in out
    assert re.search(r"test at iteration 4: \d+\.\d\d ± \d+\.\d\d%, 10 tasks", out), out
    assert not re.search(r"\(\d+ steps?\)", out)  # ProtoNets have no inner loop

    # A resumption keeps split.json, and a file's own mode (here made private) survives its rewrite.
    (run_dir / "checkpoint.pt").chmod(0o600)
    recorded = (run_dir / "split.json").stat().st_mtime_ns
    code, out, err = run(capsys, "train", *csv_args(data, run_dir), "--iterations", "6", "--resume")
    assert code == 0, err
    assert (run_dir / "split.json").stat().st_mtime_ns == recorded
    assert mode(run_dir / "checkpoint.pt") == 0o600 and mode(run_dir / "config.yaml") == 0o640

    # Data that no longer gives the recorded split is refused, naming what changed.
    with open(data, "a") as f:
        f.write("0.1,100,0.001,species_new\n" * 4)
    before = snapshot(run_dir)
    code, out, err = run(capsys, "train", *csv_args(data, run_dir), "--iterations", "8", "--resume")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"no longer gives the class split of {run_dir / 'split.json'}" in err and "added" in err
    after = snapshot(run_dir)
    assert {k: v for k, v in after.items() if k != ".lock"} == {
        k: v for k, v in before.items() if k != ".lock"
    }


def test_split_is_named_for_omniglot_and_absent_for_sine(tmp_path):
    assert run_folder.describe_split(tmp_path, {"benchmark": "omniglot", "split": "lake"}) == [
        "class split: Omniglot's 'lake' split (fixed by name; docs/omniglot.md)"
    ]
    train(Config(iterations=2, meta_batch=2, val_every=0), tmp_path, progress=False, log=no_log)
    assert not (tmp_path / "split.json").exists()
    assert run_folder.describe_split(tmp_path, {"benchmark": "sine"}) == []


# ---------------------------------------------------------------------------------------------
# A full disk
# ---------------------------------------------------------------------------------------------


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def torch_write_failed(obj, f, *args, **kwargs):
    f.write(b"PK\x03\x04 part of a zip")
    raise RuntimeError(
        "[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file data/3: "
        "file write failed"
    )


@pytest.mark.parametrize("failure", [enospc, torch_write_failed], ids=["oserror", "torch"])
def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(
    tmp_path, capsys, monkeypatch, failure
):
    real_save, calls = ckpt_module.torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        return (real_save if len(calls) == 1 else failure)(obj, f, *args, **kwargs)

    monkeypatch.setattr(ckpt_module.torch, "save", save)
    run_dir = tmp_path / "full"
    code, out, err = run(
        capsys, "train", "--run-dir", run_dir, "--iterations", "6", "--checkpoint-every", "2", *SINE
    )
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    reason = (
        "No space left on device" if failure is enospc else r"the write failed \(\[enforce fail at .*MiB free"
    )
    path = re.escape(str(run_dir / "checkpoint.pt"))
    assert re.search(
        rf"metalab: error: could not write {path}: {reason}.*; "
        r"the previous checkpoint \(iteration 2\) is intact$",
        err.strip(),
    ), err
    assert load_checkpoint(run_dir / "checkpoint.pt")["iteration"] == 2
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def test_a_full_disk_while_writing_best_pt_keeps_what_was_written(tmp_path, capsys, monkeypatch):
    real_save, calls = ckpt_module.torch.save, []

    def save(obj, f, *args, **kwargs):  # 1: checkpoint at 2, 2: best.pt at 4, 3: checkpoint at 4
        calls.append(1)
        return (real_save if len(calls) != 2 else enospc)(obj, f, *args, **kwargs)

    monkeypatch.setattr(ckpt_module.torch, "save", save)
    run_dir = tmp_path / "best"
    args = [
        "--iterations",
        "6",
        "--checkpoint-every",
        "2",
        *SINE,
        "--val-every",
        "4",
        "--set",
        "keep_best=true",
    ]
    code, _, err = run(capsys, "train", "--run-dir", run_dir, *args)
    assert code == 2 and err.strip() == (
        f"metalab: error: could not write {run_dir / 'best.pt'}: No space left on device; the previous "
        "checkpoint (iteration 2) is intact"
    ), err
    assert not (run_dir / "best.pt").exists() and not [
        p for p in run_dir.iterdir() if p.name.endswith(".tmp")
    ]
    assert load_checkpoint(run_dir / "checkpoint.pt")["iteration"] == 2


def test_a_full_disk_while_writing_the_config_or_the_metrics(tmp_path, capsys, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(ckpt_module.os, "fsync", enospc)
        code, _, err = run(capsys, "train", "--run-dir", tmp_path / "cfg", "--iterations", "2", *SINE)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.strip() == (
        f"metalab: error: could not write {tmp_path / 'cfg' / 'config.yaml'}: No space left on device; no "
        "checkpoint was written"
    )
    assert not list((tmp_path / "cfg").glob(".*.tmp"))
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here to stand for a full disk")
    run_dir = tmp_path / "metrics"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").symlink_to("/dev/full")  # every write to it: ENOSPC
    code, _, err = run(
        capsys,
        "train",
        "--run-dir",
        run_dir,
        "--iterations",
        "6",
        "--checkpoint-every",
        "2",
        "--log-every",
        "3",
        *SINE,
    )
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.strip() == (
        f"metalab: error: could not write {run_dir / 'metrics.jsonl'}: No space left on device; the previous "
        "checkpoint (iteration 2) is intact"
    )
    assert load_checkpoint(run_dir / "checkpoint.pt")["iteration"] == 2


# ---------------------------------------------------------------------------------------------
# Command-line integers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--nproc", "0"], "--nproc must be between 1 and"),
        (["train", "--nproc", "-2"], "--nproc must be between 1 and"),
        (["train", "--nproc", "100000"], "--nproc must be between 1 and"),
        (["train", "--threads", "-2"], "config key 'threads' must be >= 1, got -2"),
        (["train", "--inner-steps", "-1"], "config key 'inner_steps' must be >= 0, got -1"),
        (["eval", "missing.pt", "--tasks", "0"], "--tasks must be >= 1, got 0"),
        (["eval", "missing.pt", "--shots", "0"], "--shots must be >= 1, got 0"),
        (["eval", "missing.pt", "--queries", "-1"], "--queries must be >= 1, got -1"),
        (["eval", "missing.pt", "--ways", "0"], "--ways must be >= 1, got 0"),
        (["plot", "missing.pt", "--steps", "-1"], "--steps must be between 0 and 10,000, got [-1]"),
        (["serve", "missing.pt", "--episode-ttl", "nan"], "--episode-ttl must be a positive"),
    ],
)
def test_integer_flags_refuse_what_they_cannot_mean(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


# ---------------------------------------------------------------------------------------------
# predict and serve with --invert
# ---------------------------------------------------------------------------------------------


def tiny_image_folder(root: Path, classes=6, per_class=3) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        pattern = rng.integers(0, 256, (4, 4))
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(pattern + rng.normal(0, 10, (4, 4)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "L").resize((16, 16), Image.NEAREST).save(root / f"c{c}" / f"{i}.png")
    return root


def test_predict_and_serve_read_images_with_the_invert_asked_for(tmp_path, capsys):
    import metalab

    data = tiny_image_folder(tmp_path / "images")
    run_dir = tmp_path / "proto"
    code, _, err = run(
        capsys,
        *[
            "train",
            "--benchmark",
            "folder",
            "--data-dir",
            data,
            "--image-size",
            "16",
            "--algorithm",
            "protonet",
        ],
        *["--ways", "2", "--shots", "1", "--queries", "1", "--val-classes", "2", "--test-classes", "2"],
        *["--iterations", "2", "--kernels", "off", "--run-dir", run_dir],
        *SINE,
    )
    assert code == 0, err
    checkpoint = run_dir / "checkpoint.pt"
    support = tmp_path / "support"
    for c in ("c0", "c1"):
        (support / c).mkdir(parents=True)
        (support / c / "0.png").write_bytes((data / c / "0.png").read_bytes())
    queries = [data / "c0" / "1.png", data / "c1" / "2.png"]

    code, plain, err = run(capsys, "predict", checkpoint, "--support", support, *queries)
    assert code == 0 and err == "", err
    code, same, err = run(capsys, "predict", checkpoint, "--support", support, *queries, "--invert", "false")
    assert code == 0 and err == "" and same == plain, err
    code, inverted, err = run(
        capsys, "predict", checkpoint, "--support", support, *queries, "--invert", "true"
    )
    assert code == 0 and inverted != plain
    assert err.strip() == (
        f"warning: {checkpoint} was trained with invert: false (its images were read as they are); reading "
        "images with invert: true as asked"
    )
    code, _, err = run(capsys, "predict", checkpoint, "--support", support, *queries, "--invert", "maybe")
    assert code == 2 and err == "metalab: error: --invert must be true or false, got 'maybe'\n"

    with pytest.warns(UserWarning, match="was trained with invert: false"):
        api = metalab.predict(checkpoint, support, queries, invert=True)
    assert [p.label for p in api] == [line.split("|")[2].strip() for line in inverted.splitlines()[2:]]

    pytest.importorskip("fastapi", reason="metalab serve needs the serve extra")
    from metalab.serve import ServedModel

    said = []
    served = ServedModel(checkpoint, invert=True, warn=said.append)
    assert served.describe()["image"] == {
        "image_size": 16,
        "channels": 1,
        "invert": True,
        "trained_invert": False,
    }
    assert len(said) == 1 and "reading images with invert: true as asked" in said[0]
    assert ServedModel(checkpoint, warn=said.append).invert is False and len(said) == 1


# ---------------------------------------------------------------------------------------------
# What a run says at its end
# ---------------------------------------------------------------------------------------------


def test_final_lines_name_the_iteration_of_every_figure(tmp_path, capsys):
    c = Config(iterations=20, meta_batch=2, val_every=5, val_tasks=5, test_tasks=5, eval_steps=[1, 3])
    result = train(c, tmp_path / "cut", progress=False, stop_after=7, log=no_log)
    path = re.escape(str(tmp_path / "cut" / "checkpoint.pt"))
    assert re.fullmatch(
        rf"trained maml on sine for 7 of 20 iterations in \d+ s -> {path} "
        r"\(iteration 7\); last validation at iteration 5, before the checkpoint's: mse: .*",
        final_lines(result),
    ), final_lines(result)
    lines = []
    record = meta_test(result, log=lines.append)
    assert [line.split(":")[0] for line in lines] == ["test mse after 1 step", "test mse after 3 steps"]
    assert all(line.endswith("at iteration 7") for line in lines) and record["iterations"] == 7

    # Stopped by max_minutes: the validation quoted is named by its own iteration.
    code, out, err = run(
        capsys,
        *["train", "--run-dir", tmp_path / "timed", "--iterations", "100000", "--max-minutes", "0.01"],
        *[
            "--meta-batch",
            "2",
            "--val-every",
            "7",
            "--val-tasks",
            "5",
            "--test-tasks",
            "5",
            "--eval-steps",
            "1",
        ],
        *["--threads", "1", "--quiet"],
    )
    assert code == 0, err
    stopped = int(re.search(r"stopping at iteration (\d+) of 100000: max_minutes=0.01 reached", out).group(1))
    assert load_checkpoint(tmp_path / "timed" / "checkpoint.pt")["iteration"] == stopped
    assert f"for {stopped} of 100000 iterations" in out and f"(iteration {stopped})" in out
    validated = [
        r["iteration"]
        for r in map(json.loads, (tmp_path / "timed" / "metrics.jsonl").open())
        if "val_mse" in r
    ]
    if validated and validated[-1] == stopped:
        assert f"; validation at iteration {stopped}: mse" in out
    elif validated:
        assert f"; last validation at iteration {validated[-1]}, before the checkpoint's: mse" in out
    assert re.search(rf"test mse after 1 step: .* at iteration {stopped}$", out, re.M), out


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_meta_test_progress_shows_on_a_terminal_only(tmp_path, capsys, monkeypatch):
    result = train(Config(iterations=2, meta_batch=2, val_every=0), tmp_path, progress=False, log=no_log)
    source = build_source(result.config, "test")
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    evaluate(result.learner, source, 30, steps=2, progress=True)
    assert "meta-test, 2 steps" in terminal.getvalue() and "/30" in terminal.getvalue()
    for quiet in (dict(progress=False), dict()):
        terminal.seek(0)
        terminal.truncate()
        evaluate(result.learner, source, 30, steps=2, **quiet)
        assert terminal.getvalue() == ""
    code = run(capsys, "eval", tmp_path / "checkpoint.pt", "--tasks", "5", "--quiet")[0]
    assert code == 0 and terminal.getvalue() == ""
    monkeypatch.undo()
    io_bar = io.StringIO()  # not a terminal: no bar even when asked
    monkeypatch.setattr(sys, "stderr", io_bar)
    evaluate(result.learner, source, 30, steps=2, progress=True)
    assert io_bar.getvalue() == ""


def test_test_figures_say_after_how_many_inner_steps():
    accuracy = {"metric": "accuracy", "mean": 0.974, "ci95": 0.003, "steps": 5}
    assert figure_cell(accuracy) == "97.40 ± 0.30% (5 steps)"
    assert figure_cell({**accuracy, "steps": None}) == "97.40 ± 0.30%"
    mse = {"metric": "mse", "mean": 0.5, "ci95": 0.01, "steps": 1}
    assert (
        figure_cell(mse) == "0.500 ± 0.010 (1 step)"
        and figure_cell(mse, unit=True) == "0.500 ± 0.010 MSE (1 step)"
    )


def test_tensorboard_missing_is_said_once_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # its import fails
    said = []
    c = Config(iterations=1, meta_batch=2, val_every=0)
    for name in ("a", "b"):
        train(c, tmp_path / name, progress=False, log=said.append)
    notes = [line for line in said if "tensorboard is not installed" in line]
    assert len(notes) == 1 and "said once on this machine" in notes[0]
    for marker in (tmp_path / "cache" / "metalab" / "notices").iterdir():
        marker.unlink()
    train(c, tmp_path / "c", progress=False, log=said.append)
    assert len([line for line in said if "tensorboard is not installed" in line]) == 2
