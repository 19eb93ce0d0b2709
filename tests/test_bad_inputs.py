"""The bad-input corpus: hundreds of bad files, folders, configs and flags given to `metalab`
(tests/bad_input_cases.py lists them), each run in this process through `metalab.cli.main`.

Every case must end with exit status 2 and one line on stderr, `metalab: error: <what is wrong>`,
holding the case's expected words, and no traceback. Malformed flags that argparse itself refuses
print its usage lines first and then its one `metalab <command>: error: ...` line: such cases
(`usage=True`) count as one case each, with that last line as their error line. Every case runs
beside copies of finished run folders (a sine-wave MAML run, and image checkpoints), and their
files must be byte for byte the same afterwards: a refused command loses nobody's checkpoint,
metrics or config. The pytest summary line "bad-input corpus: N cases (by category: ...)" counts them.
"""

import hashlib
import re
import shutil
import subprocess
import sys

import bad_input_cases
import pytest
import torch
from bad_input_cases import CASES, OMNI_LAYOUT, Env, image_folder, png, write

from metalab.cli import main
from metalab.data.omniglot import archive as omniglot_archive

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def invoke(capsys, argv):
    """`metalab ARGV...` in this process: (exit status, stdout, stderr); argparse's exits included."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """Finished runs, made once: a sine-wave MAML run of 3 iterations (a checkpoint each
    iteration, a metrics line each), and a Prototypical Networks and a 2-way MAML run of 2
    iterations on a folder of 6 image classes; plus a support folder and query images."""
    root = tmp_path_factory.mktemp("corpus")
    folder = image_folder(root / "images")
    tail = ["--val-every", "0", "--quiet", "--no-eval", "--log-every", "1"]
    runs = {
        "sine": ["--iterations", "3", "--meta-batch", "2", "--checkpoint-every", "1"],
        "protonet": ["--benchmark", "folder", "--data-dir", folder, "--algorithm", "protonet"],
        "maml": ["--benchmark", "folder", "--data-dir", folder, "--algorithm", "maml", "--inner-steps", "1"],
    }
    image = ["--ways", "2", "--shots", "1", "--queries", "1", "--iterations", "2", "--meta-batch", "1"]
    image += ["--kernels", "off"]
    threads = torch.get_num_threads()
    for name, flags in runs.items():
        extra = image if name != "sine" else []
        code = main([str(a) for a in ["train", *flags, *extra, *tail, "--run-dir", root / name]])
        assert code == 0, name
    torch.set_num_threads(threads)
    image_folder(root / "support", classes=2, per_class=2)
    for i in range(3):
        write(root / "queries" / f"q{i}.png", png((12, 12), 40 * i))
    return root


@pytest.fixture
def env(trained, tmp_path, monkeypatch):
    """A case's folder with its own copies of the runs; guards against a bad input that is not
    refused (training past its first step, a server, a download) and Omniglot's official counts
    patched to the tiny archives of the corpus."""
    for name in ("sine", "protonet", "maml"):
        shutil.copytree(trained / name, tmp_path / name)
    e = Env(
        tmp=tmp_path,
        run=tmp_path / "sine",
        img=tmp_path / "protonet" / "checkpoint.pt",
        maml_img=tmp_path / "maml" / "checkpoint.pt",
        folder=trained / "images",
        support=trained / "support",
        queries=trained / "queries",
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("METALAB_ZOO", str(tmp_path / "zoo"))
    for name, layout in OMNI_LAYOUT.items():
        characters = sum(len(c) for c in layout.values())
        spec = omniglot_archive.ARCHIVES[name]._replace(
            alphabets=len(layout), characters=characters, images=20 * characters
        )
        monkeypatch.setitem(omniglot_archive.ARCHIVES, name, spec)

    from metalab import run as run_module
    from metalab.data import store

    step, steps = run_module.Run.step, []

    def one_step_at_most(self, iteration):
        steps.append(iteration)
        assert len(steps) == 1, "training went on: the bad input was not refused"
        return step(self, iteration)

    def refuse(*args, **kwargs):
        raise AssertionError("reached a server or the network: the bad input was not refused")

    monkeypatch.setattr(run_module.Run, "step", one_step_at_most)
    monkeypatch.setattr(store, "_urlopen", refuse)
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", refuse)
    threads = torch.get_num_threads()
    yield e
    torch.set_num_threads(threads)


def snapshot(e: Env) -> dict[str, str]:
    """sha256 of every file in the case's run folders but the lock file (a writer that takes the lock
    and then refuses its input records itself there; run_folder.py)."""
    return {
        str(p.relative_to(e.tmp)): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in (e.run, e.img.parent, e.maml_img.parent)
        if folder.is_dir()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


ERROR = re.compile(r"^metalab(?: [a-z]+)*: error: \S")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, env, capsys):
    if case.setup is not None:
        case.setup(env)
    before = snapshot(env)
    code, out, err = invoke(capsys, env.fill(case.argv))
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert code == 2, (code, err[-2000:])
    if case.usage:
        assert lines[0].startswith("usage: metalab"), err
        assert all(line.startswith(" ") for line in lines[1:-1]), err
        assert ERROR.match(lines[-1]), err
    else:
        assert len(lines) == 1 and lines[0].startswith("metalab: error: ") and ERROR.match(lines[0]), err
    assert env.fill([case.match])[0] in lines[-1] and len(lines[-1]) < 1000, lines[-1]
    assert snapshot(env) == before, "a refused command changed a run folder"
    assert not (env.tmp / "ran").exists(), "a checkpoint ran code"


def test_the_corpus_is_large_and_its_ids_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 230
    categories = {c.category for c in CASES}
    assert categories >= {"checkpoint", "archive", "folder", "csv", "config", "flags", "run-folder"}
    commands = {c.argv[0] for c in CASES if c.argv}
    assert commands >= {
        "train",
        "eval",
        "predict",
        "sweep",
        "runs",
        "report",
        "plot",
        "data",
        "info",
        "serve",
    }


@pytest.mark.parametrize(
    "argv,match",
    [
        (["eval", "missing.pt"], "checkpoint not found: missing.pt"),
        (["train", "--shots", "-3"], "config key 'shots' must be >= 1, got -3"),
        (["runs", "{run}/config.yaml"], "not a folder"),
    ],
    ids=["eval-missing", "train-negative-shots", "runs-root-a-file"],
)
def test_bad_input_in_a_fresh_process(trained, tmp_path, argv, match):
    """The console entry point: the same one line and exit status 2 from a real process."""
    argv = [a.replace("{run}", str(trained / "sine")) for a in argv]
    done = subprocess.run(
        [sys.executable, "-m", "metalab.cli", *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("metalab: error: ") and match in lines[0]


def test_an_unexpected_exception_is_reported_as_a_bug_with_its_traceback(capsys, monkeypatch, tmp_path):
    """Only the recognised errors become one line; anything else is a bug: its traceback, then a
    line saying so, and exit status 1."""
    from metalab import commands

    def broken(args):
        raise KeyError("a slip in the code")

    monkeypatch.setattr(commands, "cmd_runs", broken)
    code, _, err = invoke(capsys, ["runs", str(tmp_path)])
    lines = err.strip().splitlines()
    assert code == 1
    assert lines[0] == "Traceback (most recent call last):" and "KeyError: 'a slip in the code'" in err
    assert lines[-1] == "metalab: internal error (a bug; please report it with the traceback above)"


def test_corpus_summary_line():
    """The line tests/conftest.py adds to pytest's terminal summary."""
    line = bad_input_cases.summary({CASES[0].id: "passed", CASES[1].id: "failed"})
    assert line.startswith(f"bad-input corpus: {len(CASES)} cases (by category: checkpoint ")
    assert line.endswith("; this pytest run ran 2: 1 passed, 1 failed")
