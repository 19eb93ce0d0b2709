"""Put a trained Omniglot model into metalab's model zoo (src/metalab/zoo/, docs/zoo.md).

    python benchmarks/zoo.py add protonet_5w1s [--name protonet-omniglot-5w1s]
    python benchmarks/zoo.py list

`add CELL` reads the cell's figure from benchmarks/results/omniglot/<cell>.json (written by
`python benchmarks/omniglot.py train`), finds the run that trained it in
benchmarks/out/omniglot/<trained_by>/, and copies its checkpoint.pt (with its optimizer state: an
unfinished run resumes from the zoo) into the zoo with one index entry for every cell that model
serves (e.g. protonet_5w1s and protonet_20w1s), each with its figure, test settings, budget,
config file, training command and validation curve (from the results file, else from the run's
metrics.jsonl). A checkpoint over 2 MiB, or a figure measured at another iteration than the
checkpoint's, is refused. Commit src/metalab/zoo/ afterwards.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from metalab import zoo
from metalab.checkpoint import CheckpointError
from metalab.config import ConfigError, load_config
from metalab.curves import run_curve
from metalab.experiment import read_run_config

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs" / "omniglot"
OUT = ROOT / "benchmarks" / "out" / "omniglot"
RESULTS = ROOT / "benchmarks" / "results" / "omniglot"


def _record(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(
            f"no results file {path}: train the cell first (python benchmarks/omniglot.py train)"
        )
    return json.loads(path.read_text())


def cell_records(cell: str, results: Path = RESULTS) -> list[dict]:
    """The cell's figure record and those of every other cell its model serves (the same
    `trained_by`), the cell's own first, each with its `config` file and its `eval_steps`."""
    first = _record(results / f"{cell}.json")
    siblings = [
        r
        for r in (json.loads(p.read_text()) for p in sorted(results.glob("*.json")))
        if r.get("trained_by") == first["trained_by"] and r.get("cell") != cell
    ]
    records = []
    for r in [first, *siblings]:
        config = load_config(CONFIGS / f"{r['cell']}.yaml").resolved()
        # omniglot.py meta-tests each cell with the first of its resolved eval_steps
        records.append(
            {**r, "config": f"configs/omniglot/{r['cell']}.yaml", "eval_steps": config.eval_steps[:1]}
        )
    return records


def cmd_add(args) -> None:
    records = cell_records(args.cell, Path(args.results))
    trained_by = records[0]["trained_by"]
    run_dir = Path(args.out) / trained_by
    for r in records:  # results files written before they carried their curve: read it from the run
        if "curve" not in r:
            r["curve"] = [p for p in run_curve(run_dir) if p["iteration"] <= r["iterations"]]
    # The run's threads key (its --threads); a results file's "threads" is the process's count after it.
    threads = read_run_config(run_dir).get("threads") or records[0].get("threads")
    command = args.command or (
        f"python benchmarks/omniglot.py train configs/omniglot/{trained_by}.yaml"
        + (f" --threads {threads}" if threads else "")
    )
    names = [
        f"{r['algorithm']}-omniglot-{r['ways']}w{r['shots']}s"
        + ("-nontransductive" if r.get("transductive") is False else "")
        + "".join(f"-{part.replace(' ', '')}" for part in filter(None, r.get("variant", "").split(", ")))
        for r in records
    ]
    if args.name:
        # The first cell takes the given name; a sibling cell named after it (its config stem is the
        # first's plus a suffix, as fomaml_5w1s_random_authors_model_1query) takes the name plus that
        # suffix, so a chosen name never leaves a sibling on a default that another model holds.
        names[0] = args.name
        for i, r in enumerate(records[1:], 1):
            if r["cell"].startswith(records[0]["cell"] + "_"):
                names[i] = args.name + "-" + r["cell"][len(records[0]["cell"]) + 1 :].replace("_", "-")
    written = zoo.add(run_dir, records, names, file=f"{trained_by}.pt", command=command)
    for entry in written:
        f = entry["figure"]
        state = "finished" if entry["finished"] else "resumable"
        print(
            f"zoo:{entry['name']}: {f['accuracy']:.2f} ± {f['ci95']:.2f}% ({f['test_episodes']} episodes), "
            f"iteration {entry['iterations']:,} of {entry['planned_iterations']:,} ({state}), "
            f"{entry['file']} {entry['bytes'] / 2**20:.2f} MiB"
        )
    print(f"index: {zoo.zoo_dir() / 'index.json'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", required=True)
    a = sub.add_parser("add", help="copy a trained cell's checkpoint into the zoo with its figures")
    a.add_argument("cell", help="a config stem of configs/omniglot/, e.g. protonet_5w1s")
    a.add_argument("--name", help="the cell's zoo name (default: ALGORITHM-omniglot-NwKs)")
    a.add_argument(
        "--command", help="the command that trained it (default: omniglot.py train with its threads)"
    )
    a.add_argument(
        "--out", default=str(OUT), help="the folder of run folders (default: benchmarks/out/omniglot)"
    )
    a.add_argument("--results", default=str(RESULTS), help="the folder of the cells' results files")
    sub.add_parser("list", help="the zoo's models")
    args = p.parse_args(argv)
    try:
        if args.action == "add":
            cmd_add(args)
        else:
            print(zoo.format_models(zoo.list_models()))
    except (ConfigError, CheckpointError, OSError, ValueError) as e:
        print(f"zoo: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
