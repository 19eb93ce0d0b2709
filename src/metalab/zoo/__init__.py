"""The model zoo: trained checkpoints that ship with metalab, loadable by name.

`zoo:NAME` is accepted wherever a checkpoint path is (`metalab eval`, `predict`, `serve`, `plot`,
`metalab.predict`, `learner_from_checkpoint`). The zoo is a folder holding `index.json` and the
checkpoint files it names: the package's own folder (`metalab/zoo/`), or `$METALAB_ZOO` where set.
Each index entry records the file, its sha256 and size, the config cell that trained it, the figure
of its row in docs/results.md (accuracy, 95% CI, test episodes and queries, inner steps), the
training budget (iterations, wall-clock and CPU seconds, threads, the command) and whether the
training is finished or still resumable: a finished model is stored with its weights only, an
unfinished one keeps its optimizer, schedule and random states, and `benchmarks/omniglot.py train`
continues it on any machine (`seed_run_folder`); a finished one can be trained further from its
weights alone, with fresh optimizer moments (`seed_from_weights`). An unfinished model whose whole
checkpoint is over the limit (`MAX_BYTES`) is stored with its optimizer's moments in bfloat16
(`optimizer_moments` in its entry), which a resumption casts back to float32. A finished model whose
float32 weights alone are over the limit (MANN's LSTM controller) is stored with its weights in
float16 (`weights` in its entry), which loading casts back to float32; its figure must then be
measured on those very weights (`round_weights`, `benchmarks/omniglot.py train --weights float16`),
and the records say so. A finished run trained with `keep_best` whose figure was measured on its
best.pt (the weights of its best validation figure) is stored with those weights, and its entry
names their iteration (`best_iteration`).

A model's entry also carries the test settings of its cell (`test_ways`, `test_shots`,
`test_queries`, `test_tasks`, `eval_steps`): the config a zoo checkpoint loads with holds them, so
`metalab eval zoo:NAME` meta-tests the row's very task (one checkpoint may serve several rows, e.g.
Prototypical Networks tested 5-way and 20-way).

Example:
    >>> from metalab.train import learner_from_checkpoint
    >>> learner, config, state = learner_from_checkpoint("zoo:protonet-omniglot-5w1s")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import FORMAT as CHECKPOINT_FORMAT
from ..checkpoint import CheckpointError, atomic_write_bytes, atomic_write_text, load_checkpoint

__all__ = [
    "PREFIX",
    "MAX_BYTES",
    "ZooError",
    "zoo_dir",
    "read_index",
    "list_models",
    "is_zoo_spec",
    "sha256",
    "lookup",
    "resolve",
    "add",
    "record_from_run",
    "format_models",
    "resumable_entry",
    "round_weights",
    "seed_run_folder",
    "seed_from_weights",
]

PREFIX = "zoo:"
MAX_BYTES = 2 * 2**20  # a Conv-4 checkpoint with its Adam state is about 1.4 MB
# What only a resumption reads: a finished model is stored without it (about a third of the size).
RESUME_ONLY = ("optimizer", "schedule", "scaler", "rng")
FORMAT = "metalab-zoo-1"
INDEX = "index.json"
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,79}$")
# The test settings of a row, applied to the checkpoint's config when it is loaded by name.
TEST_KEYS = (
    "test_ways",
    "test_shots",
    "test_queries",
    "test_tasks",
    "eval_steps",
    "transductive",
    "eval_inner_batch",
)


class ZooError(CheckpointError):
    """A zoo name that is not in the index, a zoo file that is missing, damaged or too large, or an
    index that cannot be read; the message says which (one line on the command line)."""


def zoo_dir() -> Path:
    """The zoo's folder: `$METALAB_ZOO` where set, else the package's own `metalab/zoo/`."""
    return Path(os.environ.get("METALAB_ZOO") or Path(__file__).resolve().parent)


def read_index(root: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The index's entries, name -> entry (empty where the folder has no index.json)."""
    path = Path(root or zoo_dir()) / INDEX
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise ZooError(f"the zoo index {path} cannot be read ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise ZooError(f"the zoo index {path} is not a metalab zoo index (no 'models' mapping)")
    for name, entry in data["models"].items():
        missing = [
            k for k in ("file", "sha256", "algorithm") if not isinstance(entry, dict) or k not in entry
        ]
        if missing:
            raise ZooError(f"the zoo index {path}: model {name!r} lacks {', '.join(missing)}")
    return data["models"]


def _write_index(root: Path, models: dict[str, dict[str, Any]]) -> None:
    text = json.dumps({"format": FORMAT, "models": dict(sorted(models.items()))}, indent=2) + "\n"
    atomic_write_text(root / INDEX, text)


def list_models(root: str | Path | None = None) -> list[dict[str, Any]]:
    """Every zoo model's entry, sorted by name, each with its `name`."""
    return [{"name": name, **entry} for name, entry in sorted(read_index(root).items())]


def is_zoo_spec(spec: Any) -> bool:
    return isinstance(spec, str) and spec.startswith(PREFIX)


def sha256(path: Path) -> str:
    """The file's sha256, as hex."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _entry(name: str, root: Path) -> dict[str, Any]:
    models = read_index(root)
    if name not in models:
        known = f"holds: {', '.join(sorted(models))}" if models else "holds no models"
        raise ZooError(f"unknown zoo model {name!r}; the zoo in {root} {known}")
    return models[name]


def lookup(spec: str | os.PathLike, root: str | Path | None = None) -> tuple[Path, dict[str, Any]]:
    """`spec` as a checkpoint file and the config keys its row tests with.

    A plain path comes back as it is, with no keys; `zoo:NAME` gives the zoo's file, checked
    against the sha256 in the index, and the row's test settings (`TEST_KEYS`).

    Raises:
        ZooError: an unknown name (the message lists the known ones), a missing file, or a file
            whose sha256 differs from the index's.
    """
    if not is_zoo_spec(spec):
        return Path(spec), {}
    root = Path(root or zoo_dir())
    name = str(spec)[len(PREFIX) :]
    entry = _entry(name, root)
    if not isinstance(entry["file"], str) or not NAME.match(entry["file"]):
        raise ZooError(f"zoo model {name!r}: its file {entry['file']!r} is not a file name in {root}")
    path = root / entry["file"]
    if not path.is_file():
        raise ZooError(f"zoo model {name!r}: its file {path} is missing")
    digest = sha256(path)
    if digest != entry["sha256"]:
        raise ZooError(
            f"zoo model {name!r}: {path} has sha256 {digest[:12]}..., the index records "
            f"{entry['sha256'][:12]}...: the file is damaged or was replaced (reinstall metalab, or add "
            "the model again)"
        )
    return path, {k: entry["test"][k] for k in TEST_KEYS if k in entry.get("test", {})}


def resolve(spec: str | os.PathLike, root: str | Path | None = None) -> Path:
    """The checkpoint file `spec` names: a path as it is, `zoo:NAME` the zoo's checked file."""
    return lookup(spec, root)[0]


def record_from_run(run_dir: str | Path) -> dict[str, Any]:
    """The figure record of a run folder meta-tested by `metalab train` (its results.json, first
    test line, and config.yaml), in the form `benchmarks/omniglot.py train` writes."""
    from ..experiment import read_results, read_run_config

    run_dir = Path(run_dir)
    results = read_results(run_dir)
    if not results or not results.get("test"):
        raise ZooError(f"{run_dir} has no results.json with a test figure: meta-test it first")
    config = read_run_config(run_dir)
    test = results["test"][0]
    if test.get("metric") != "accuracy":
        raise ZooError(f"{run_dir}: the zoo holds classifiers; its test figure is {test.get('metric')}")
    return {
        "cell": run_dir.name,
        "algorithm": results["algorithm"],
        "benchmark": results.get("benchmark"),
        "ways": results["ways"],
        "shots": results["shots"],
        "accuracy": round(100 * test["mean"], 2),
        "ci95": round(100 * test["ci95"], 2),
        "test_episodes": test["tasks"],
        "test_queries": config.get("test_queries") or config.get("queries"),
        "iterations": results["iterations"],
        "planned_iterations": config.get("iterations", results["iterations"]),
        # keep_best: the figure is of best.pt's weights, from this iteration
        **({"best_iteration": results["weights"]["iteration"]} if "weights" in results else {}),
        "train_seconds": results.get("train_seconds"),
        "trained_by": run_dir.name,
        "config": None,  # a run folder records its config, not the file or command it came from
        "command": None,
    }


def _test_settings(config, record: dict[str, Any]) -> dict[str, Any]:
    """The row's test keys from its record; the inner steps from the record's `eval_steps` where it
    has them (the cell's config), else from the checkpoint's config."""
    from ..config import config_from_dict

    c = config_from_dict(
        {"test_ways": record["ways"], "test_shots": record["shots"], "test_queries": record["test_queries"]},
        config,
    ).resolved(saved=True)
    steps = list(record["eval_steps"]) if "eval_steps" in record else c.eval_steps[:1]
    return {
        "test_ways": c.test_ways,
        "test_shots": c.test_shots,
        "test_queries": c.test_queries,
        "test_tasks": record["test_episodes"],
        "eval_steps": steps,
        **({"transductive": False} if record.get("transductive") is False else {}),
        **({"eval_inner_batch": record["eval_inner_batch"]} if "eval_inner_batch" in record else {}),
    }


def add(
    run_dir: str | Path,
    records: list[dict[str, Any]],
    names: list[str] | None = None,
    *,
    file: str | None = None,
    command: str | None = None,
    root: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Copy a run folder's checkpoint into the zoo, with one index entry per figure record.

    Args:
        run_dir: a run folder with its checkpoint.pt.
        records: the figures measured on that very checkpoint, in the form `benchmarks/omniglot.py
            train` writes them (benchmarks/results/omniglot/<cell>.json; `record_from_run` for a run
            of `metalab train`): one per row the model serves (e.g. 5-way and 20-way); a record
            may also name its row's `config` file, its `command` and its `eval_steps`, and carry
            its validation `curve`, and its `best_iteration` where it was measured on the run's
            best.pt (keep_best).
        names: each record's zoo name (default: `<algorithm>-<benchmark>-<ways>w<shots>s`).
        file: the file's name in the zoo (default: the first name + ".pt").
        command: the command that trained it (default: the record's `command`, else none).

    Returns:
        The entries written, each with its `name`.

    Raises:
        ZooError: the checkpoint is over `MAX_BYTES`, a record was measured at another iteration
            than the checkpoint's (or best.pt's) or on another algorithm, a figure of best.pt's
            weights is of an unfinished run, a name is malformed or already names a model in
            another file, or the zoo file also serves other entries that are not re-added with it.
        CheckpointError: the checkpoint is missing or corrupt.
    """
    from ..run import BEST, checkpoint_config

    root = Path(root or zoo_dir())
    source = Path(run_dir) / "checkpoint.pt"
    if not records:
        raise ZooError("no figure records to add: the zoo holds models with their measured figures")
    state = load_checkpoint(source, resuming=True)  # resumable: optimizer, schedule and RNG states too
    config = checkpoint_config(source, state)
    planned = records[0].get("planned_iterations", config.iterations)
    trained = state["iteration"]  # the run's iterations; the weights stored may be best.pt's
    finished = trained >= planned
    best = {r.get("best_iteration") for r in records}  # keep_best: figures of best.pt's weights
    if len(best) > 1:
        raise ZooError(
            f"the records were measured on the weights of different iterations ({sorted(best, key=str)})"
        )
    (best,) = best
    if best is not None:  # a finished run's best validation weights stand for it, weights only
        if not finished:
            raise ZooError(
                f"{source} is unfinished (iteration {trained} of {planned}) and its figure is of {BEST}'s "
                f"weights: a resumable model keeps its latest weights; meta-test those to add it"
            )
        source = Path(run_dir) / BEST
        state = load_checkpoint(source)
        if state["iteration"] != best:
            raise ZooError(
                f"the figure was measured on the weights of iteration {best}, {source} holds iteration "
                f"{state['iteration']}: meta-test the run again before adding it"
            )
    moments = None  # the precision of the optimizer's stored moments, where not the checkpoint's own
    weights = {r.get("weights", "float32") for r in records}  # the precision each figure was measured at
    if len(weights) > 1:
        raise ZooError(f"the records were measured on weights of different precisions ({sorted(weights)})")
    (weights,) = weights
    if weights not in ("float32", "float16"):
        raise ZooError(f"records measured on {weights} weights: the zoo stores float32 or float16")
    if weights == "float16" and not finished:
        raise ZooError(
            f"{source} is unfinished (iteration {trained} of {planned}): a resumable model keeps "
            "its float32 weights; only a finished one is stored in float16"
        )
    if finished:  # the weights and what evaluation reads, no resume state
        kept = {k: v for k, v in state.items() if k not in RESUME_ONLY}
        if weights == "float16":
            kept["learner"] = _in_dtype(kept["learner"], torch.float16)
        data = _saved(kept)
        if (
            len(data) > MAX_BYTES
            and weights == "float32"
            and len(_saved({**kept, "learner": _in_dtype(kept["learner"], torch.float16)})) <= MAX_BYTES
        ):
            raise ZooError(
                f"{source}'s weights are {len(data) / 2**20:.2f} MiB in float32, over the zoo's limit of "
                f"{MAX_BYTES / 2**20:.0f} MiB per model; in float16 they fit: meta-test the model with its "
                "weights rounded to float16 (benchmarks/omniglot.py train --weights float16, or "
                "zoo.round_weights) and add that figure"
            )
    else:  # resumable: the whole checkpoint, optimizer state included
        data = source.read_bytes()
        if len(data) > MAX_BYTES:  # e.g. Meta-SGD: its learned rates double the parameters, Adam doubles that
            data = _saved({**state, "optimizer": _moments_in_bfloat16(state["optimizer"])})
            moments = "bfloat16"
    size = len(data)
    if size > MAX_BYTES:
        raise ZooError(
            f"{source} is {size / 2**20:.2f} MiB"
            + ("" if finished else " with its optimizer state in bfloat16 (the run is unfinished)")
            + f", over the zoo's limit of {MAX_BYTES / 2**20:.0f} MiB per model"
        )
    names = names or [f"{r['algorithm']}-{config.benchmark}-{r['ways']}w{r['shots']}s" for r in records]
    if len(names) != len(records) or len(set(names)) != len(names):
        raise ZooError(f"give one distinct name per record; got {names} for {len(records)} record(s)")
    for name, r in zip(names, records):
        if not NAME.match(name):
            raise ZooError(f"zoo name {name!r} must be lower-case letters, digits, '.', '_' or '-'")
        if r.get("algorithm") != config.algorithm:
            raise ZooError(f"{name}: the record is of {r.get('algorithm')}, {source} of {config.algorithm}")
        if r.get("iterations") != trained:
            raise ZooError(
                f"{name}: its figure was measured at iteration {r.get('iterations')}, {run_dir} is at "
                f"iteration {trained}: meta-test the checkpoint again before adding it"
            )
    file = file or f"{names[0]}.pt"
    if not NAME.match(file) or not file.endswith(".pt"):
        raise ZooError(
            f"zoo file name {file!r} must be lower-case letters, digits, '.', '_' or '-' ending .pt"
        )
    models = read_index(root)
    taken = sorted(n for n in names if n in models and models[n]["file"] != file)
    if taken:
        raise ZooError(
            f"{', '.join(f'zoo:{n}' for n in taken)} already names another model (file "
            f"{models[taken[0]]['file']}, trained by {models[taken[0]].get('trained_by')}): choose another "
            "name, or remove that entry from the index first"
        )
    sharing = sorted(n for n, e in models.items() if e["file"] == file and n not in names)
    if sharing:
        raise ZooError(
            f"the zoo file {file} also serves {', '.join(sharing)}: add their figures of this checkpoint "
            "with it (or choose another file name)"
        )
    digest = hashlib.sha256(data).hexdigest()
    atomic_write_bytes(root / file, data)
    written = []
    for name, r in zip(names, records):
        trained_by = r.get("trained_by", Path(run_dir).name)
        entry = {
            "file": file,
            "sha256": digest,
            "bytes": size,
            "config": r.get("config"),
            "trained_by": trained_by,
            "algorithm": config.algorithm,
            "benchmark": config.benchmark,
            "ways": r["ways"],
            "shots": r["shots"],
            "figure": {
                "accuracy": r["accuracy"],
                "ci95": r["ci95"],
                "test_episodes": r["test_episodes"],
                "test_queries": r["test_queries"],
                "eval_inner_steps": None,
            },
            "test": _test_settings(config, r),
            "iterations": trained,
            "planned_iterations": planned,
            "finished": finished,
            **({"best_iteration": best} if best is not None else {}),
            **({"optimizer_moments": moments} if moments else {}),
            **({"weights": weights} if weights != "float32" else {}),
            "train_seconds": r.get("train_seconds", round(state.get("seconds", 0.0))),
            "train_cpu_seconds": r.get("train_cpu_seconds", round(state.get("cpu_seconds", 0.0))),
            "threads": config.threads or r.get("threads"),  # the run's own setting where it has one
            "command": command or r.get("command"),
            "date": r.get("date"),
            "machine": r.get("machine"),
            **({"device": r["device"]} if r.get("device") else {}),
        }
        steps = entry["test"]["eval_steps"]
        entry["figure"]["eval_inner_steps"] = steps[0] if steps else None
        if "curve" in r:
            entry["curve"] = r["curve"]
        models[name] = entry
        written.append({"name": name, **entry})
    _write_index(root, models)
    return written


def format_models(models: list[dict[str, Any]], root: str | Path | None = None) -> str:
    """The zoo as a table: name, task, figure, budget, state, size."""
    from ..experiment import format_table
    from ..run import best_note

    where = Path(root or zoo_dir())
    if not models:
        return f"the zoo in {where} holds no models"
    rows = []
    for m in models:
        f = m.get("figure", {})
        steps = f.get("eval_inner_steps")
        figure = (
            f"{f.get('accuracy', 0):.2f} ± {f.get('ci95', 0):.2f}% ({f.get('test_episodes', 0):,} episodes"
        )
        figure += f", {steps} steps)" if steps is not None else ")"
        cpu = m.get("train_cpu_seconds")
        rows.append(
            [
                PREFIX + m["name"],
                m["algorithm"],
                f"{m.get('ways')}-way {m.get('shots')}-shot",
                figure,
                f"{m.get('iterations', 0):,} of {m.get('planned_iterations', 0):,}"
                + best_note(m.get("best_iteration")),
                f"{(m.get('train_seconds') or 0) / 60:.0f} min"
                + (f", {cpu / 60:.0f} CPU-min" if cpu is not None else ""),
                "finished" if m.get("finished") else "resumable",
                f"{m.get('bytes', 0) / 2**20:.2f} MiB",
            ]
        )
    table = format_table(rows, ["model", "algorithm", "task", "accuracy (95% CI)", "iterations",
                                "training", "state", "size"])  # fmt: skip
    return f"{table}\n{len(models)} model(s) in {where}"


def _saved(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save({**state, "format": CHECKPOINT_FORMAT}, buffer)
    return buffer.getvalue()


def _in_dtype(tensors: dict[Any, Any], dtype: torch.dtype, *, scalars: bool = True) -> dict[Any, Any]:
    """A state dict with its floating-point tensors in `dtype` (integer buffers and other values as
    they are; 0-dimensional tensors too where `scalars` is false)."""
    return {
        k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() and (scalars or v.dim() > 0) else v
        for k, v in tensors.items()
    }


def round_weights(learner: torch.nn.Module, dtype: torch.dtype = torch.float16) -> torch.nn.Module:
    """Round `learner`'s floating-point weights and buffers to `dtype` and back, in place: the very
    weights a zoo model stored in that precision loads as, for measuring its figure on them."""
    with torch.no_grad():
        for t in learner.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.to(dtype).to(t.dtype))
    return learner


def _moments_in_bfloat16(optimizer_state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer's state with its per-parameter tensors (Adam's moments, SGD's momentum) in
    bfloat16: half the bytes, float32's exponent range (the second moments' tiny values survive),
    8 bits of mantissa. `torch.optim.Optimizer.load_state_dict` casts them back to the parameters'
    dtype, so a resumption continues from the same weights, iteration, schedule and random states
    with the moments rounded to bfloat16 once."""
    return {
        **optimizer_state,
        "state": {
            i: _in_dtype(values, torch.bfloat16, scalars=False)  # Adam's step count stays as it is
            for i, values in optimizer_state["state"].items()
        },
    }


def resumable_entry(config_name: str, root: str | Path | None = None) -> tuple[str, dict[str, Any]] | None:
    """The unfinished zoo model trained by the config named `config_name` (its file's stem), if any."""
    for name, entry in sorted(read_index(root).items()):
        if entry.get("trained_by") == config_name and not entry.get("finished", True):
            return name, entry
    return None


def _curve_lines(entry: dict[str, Any], upto: int | None = None) -> str:
    """A zoo entry's stored validation curve as metrics.jsonl lines, for a run folder it seeds; up to
    iteration `upto` (a model stored with its best validation weights continues from theirs)."""
    return "".join(
        json.dumps(point) + "\n"
        for point in entry.get("curve", [])
        if isinstance(point, dict) and (upto is None or point.get("iteration", 0) <= upto)
    )


def seed_run_folder(
    run_dir: str | Path, config, config_name: str, root: str | Path | None = None
) -> str | None:
    """Start an empty run folder from the zoo's unfinished model of this config, to resume it.

    Where `run_dir` has no checkpoint and the zoo holds an unfinished model trained by
    `config_name` whose config matches `config` (but for the keys a resumption may change), its
    checkpoint, config.yaml and a metrics.jsonl rebuilt from its stored validation curve are
    written there. Returns what was done, as a line to print (None: nothing to seed from).
    """
    import yaml

    from .. import run_folder
    from ..run import CHECKPOINT, METRICS, checkpoint_config, resume_conflicts

    run_dir = Path(run_dir)
    found = resumable_entry(config_name, root)
    if found is None or (run_dir / CHECKPOINT).exists():
        return None
    name, entry = found
    path, _ = lookup(PREFIX + name, root)
    state = load_checkpoint(path, resuming=True)
    saved_config = checkpoint_config(path, state)
    saved = saved_config.to_dict()
    # Keys unset here that the checkpoint holds come from the data (`Options.bind`), as in training.
    changed = resume_conflicts(saved_config, config.resolved(), state["iteration"], unset_from_data=True)
    if changed:
        return f"zoo:{name} was trained with another config (it differs in {', '.join(changed)}): not resumed"
    with run_folder.hold(run_dir):  # no other writer meanwhile (the checkpoint goes in last)
        if (run_dir / CHECKPOINT).exists():
            return None
        atomic_write_text(run_dir / METRICS, _curve_lines(entry))
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(saved, sort_keys=False))
        atomic_write_bytes(run_dir / CHECKPOINT, path.read_bytes())
    at = f"iteration {state['iteration']} of {entry.get('planned_iterations')}"
    if entry.get("optimizer_moments"):
        at += f", optimizer moments stored in {entry['optimizer_moments']}"
    return f"seeded {run_dir} from zoo:{name} ({at}); resuming it"


def seed_from_weights(
    run_dir: str | Path, config, config_name: str, root: str | Path | None = None
) -> str | None:
    """Start an empty run folder from the zoo's finished model of this config, to train it further.

    A finished model is stored with its weights only (MANN's in float16), so the checkpoint written
    here pairs them with the optimizer state and task sampler that a new run of `config` starts with
    (fresh moments, episodes drawn from the config's seed), its schedule advanced to the model's
    iteration, and a metrics.jsonl rebuilt from the stored validation curve; resuming the folder then
    trains on from that iteration to `config.iterations` (for a model stored with its best validation
    weights, from their iteration). Returns what was done, as a line to print
    (None: the folder has a checkpoint already).

    Raises:
        ZooError: the zoo holds no finished model of `config_name`, it was trained with another config,
            or `config.iterations` is not past its iteration.
    """
    from ..run import CHECKPOINT, METRICS, Run, checkpoint_config, resume_conflicts

    run_dir = Path(run_dir)
    if (run_dir / CHECKPOINT).exists():
        return None
    found = [
        (n, e)
        for n, e in sorted(read_index(root).items())
        if e.get("trained_by") == config_name and e.get("finished")
    ]
    if not found:
        raise ZooError(f"the zoo holds no finished model trained by {config_name}")
    name, entry = found[0]
    path, _ = lookup(PREFIX + name, root)
    state = load_checkpoint(path)
    changed = resume_conflicts(
        checkpoint_config(path, state), config.resolved(), state["iteration"], unset_from_data=True
    )
    if changed:
        raise ZooError(f"zoo:{name} was trained with another config (it differs in {', '.join(changed)})")
    if state["iteration"] >= config.iterations:
        raise ZooError(
            f"zoo:{name} has trained {state['iteration']} iterations and the config plans "
            f"{config.iterations}: set a larger budget to train it further"
        )
    run = Run.start(config, run_dir, resume=False, log=lambda _: None)
    try:
        run.learner.load_state_dict(state["learner"])  # float16 weights are cast into the float32 model
        run.schedule_at(state["iteration"])
        atomic_write_text(run_dir / METRICS, _curve_lines(entry, upto=state["iteration"]))
        run.save(state["iteration"], state.get("seconds", 0.0), state.get("cpu_seconds", 0.0))
    finally:
        run.close()
    return (
        f"seeded {run_dir} from zoo:{name}'s weights (iteration {state['iteration']}; optimizer moments "
        "and task sampling start afresh); resuming it"
    )
