"""The `metalab` command: train | eval | predict | serve | plot | data | sweep | runs | report | info | zoo.

Bad input (an unknown algorithm or config key, a negative shot count, a missing or corrupt
checkpoint, a missing data folder) ends with one line on stderr and exit status 2, not a traceback;
so does a training run that diverges. Set METALAB_DEBUG=1 to see the traceback. Any other exception
is a bug: its traceback is printed, then a line saying so, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import traceback
import warnings

from .algorithms.spec import OptionError, algorithm_names, load_plugins, option_keys, specs
from .checkpoint import CheckpointError
from .config import GROUPS, Config, ConfigError, load_config
from .distributed import DistributedError

__all__ = ["main", "parser", "config_flags", "config_keys"]

_EXAMPLES = """examples:
  metalab train --nproc 2                         # two processes, the meta-batch split between them
  metalab sweep configs/sine/maml.yaml --set inner_lr=0.005,0.01 --set shots=5,10 --set iterations=200
  metalab runs                                    # past runs and their test figures
  metalab report runs/* --out report              # curves, tables and figures as PNG + HTML
  metalab train                                   # MAML on sine waves, the built-in default
  metalab train --algorithm metasgd --iterations 2000
  metalab train --config configs/sine/maml.yaml --set inner_lr=0.02
  metalab train --run-dir runs/sine --resume      # continue an interrupted run
  metalab eval runs/sine/checkpoint.pt --steps 1 5 10 --shots 5
  metalab plot runs/sine/checkpoint.pt --baseline runs/pre/checkpoint.pt --out sine.png
  metalab train --benchmark folder --data-dir my_images --algorithm siamese --shots 1 --queries 5
  metalab predict runs/a/checkpoint.pt --support support/ queries/ --csv predictions.csv
  metalab eval runs/a/checkpoint.pt --device cuda  # any device, whatever the run was trained on
  metalab eval runs/mamlpp/top/*.pt  # the ensemble of a keep_top run's best validation models
  metalab info                                    # versions, devices, kernels: for a bug report
  metalab zoo                                     # trained models: metalab predict zoo:NAME ...
"""
_DEVICE_HELP = "auto | cpu | cuda | cuda:N | mps (default: the checkpoint's device key; docs/gpu.md)"
_INVERT_HELP = (
    "read images as 255 - pixel (true) or as they are (false), whatever the checkpoint was trained with "
    "(default: the checkpoint's invert; a warning names it when they differ)"
)


def _allowed(meta: dict, default) -> str:
    if isinstance(default, bool):
        return "true | false"
    if meta.get("choices") is not None:
        return " | ".join(map(str, meta["choices"]))
    if meta.get("allowed"):
        return meta["allowed"]
    if meta.get("minimum") is not None:
        upper = f" and <= {meta['maximum']:,}" if meta.get("maximum") is not None else ""
        return f">= {meta['minimum']}{upper}"
    return ""


def _flag_help(help_text: str, meta: dict, default) -> str:
    allowed = _allowed(meta, default)
    shown = "none" if default is None else default
    return f"{help_text} [{allowed + '; ' if allowed else ''}default: {shown}]"


def config_flags() -> list[tuple[str, str, list[tuple[str, str, object, bool]]]]:
    """The config keys as `--help` shows them: (group title, description, [(key, help, default, is_list)])."""
    defaults = Config()
    generic = {f.name: f for f in dataclasses.fields(Config) if f.name != "options"}
    groups = []
    titles = {
        "tasks": "the tasks",
        "data": "the data",
        "model": "the model",
        "training": "meta-training",
        "evaluation": "evaluation",
    }
    for group in GROUPS:
        rows = []
        for name, f in generic.items():
            if f.metadata["group"] == group:
                default, meta = getattr(defaults, name), dict(f.metadata)
                if name == "algorithm":
                    meta["choices"] = algorithm_names()
                rows.append(
                    (name, _flag_help(meta["help"], meta, default), default, isinstance(default, list))
                )
        groups.append((f"config keys: {titles[group]}", "", rows))
    rows = []
    for name, owners in option_keys().items():
        parts = []
        for spec in owners:
            f = next(g for g in dataclasses.fields(spec.options) if g.name == name)
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            parts.append(
                (_flag_help(f.metadata["help"], f.metadata, default), spec.name, isinstance(default, list))
            )
        texts: dict[str, list[str]] = {}
        for text, algorithm, _ in parts:
            texts.setdefault(text, []).append(algorithm)
        help_text = "; ".join(f"{', '.join(algorithms)}: {text}" for text, algorithms in texts.items())
        rows.append((name, help_text, None, parts[0][2]))
    algorithms = "; ".join(f"{s.name} ({s.family})" for s in specs())
    groups.append(
        (
            "config keys of the algorithms (each applies to the algorithms named)",
            f"algorithms: {algorithms}",
            rows,
        )
    )
    return groups


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    for title, description, rows in config_flags():
        g = p.add_argument_group(title, description or None)
        for name, help_text, _, is_list in rows:
            g.add_argument(
                "--" + name.replace("_", "-"),
                dest=f"cfg_{name}",
                metavar=name.upper(),
                nargs="+" if is_list else None,
                help=help_text.replace("%", "%%"),
            )


def config_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(Config) if f.name != "options"] + list(option_keys())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="metalab",
        description=(
            "Meta-learning on PyTorch: meta-train on many small tasks, adapt to a new one from a "
            "few examples."
        ),
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser(
        "train",
        help="meta-train (no arguments: MAML on sine waves)",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument(
        "--config", help="a YAML config file (keys as below; `extends: OTHER.yaml` starts from another file)"
    )
    t.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)"
    )
    t.add_argument(
        "--run-dir",
        help=(
            "where to write config.yaml, metrics.jsonl, checkpoint.pt (default: "
            "runs/<benchmark>-<algorithm>-<time>)"
        ),
    )
    t.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its checkpoint")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--no-eval", action="store_true", help="skip the final meta-test")
    t.add_argument(
        "--nproc",
        type=int,
        help="train with N processes on this machine (calls torchrun; see README for several machines)",
    )
    _add_config_flags(t)

    e = sub.add_parser("eval", help="meta-test a checkpoint: mean accuracy / MSE with a 95%% CI")
    e.add_argument(
        "checkpoint",
        nargs="+",
        help="a checkpoint.pt, or zoo:NAME (a model of the zoo: metalab zoo); several: their ensemble "
        "(class probabilities averaged; e.g. RUN/top/*.pt of a keep_top run)",
    )
    e.add_argument("--tasks", type=int, help="number of test tasks (default: the config's test_tasks)")
    e.add_argument(
        "--steps", type=int, nargs="+", help="inner steps to report (default: the config's eval_steps)"
    )
    e.add_argument(
        "--ways",
        type=int,
        help="N at test time (default: the config's test_ways; fixed-head learners can't change it)",
    )
    e.add_argument("--shots", type=int, help="K at test time (default: the config's test_shots)")
    e.add_argument("--queries", type=int, help="queries at test time")
    e.add_argument("--data-dir", help="data folder, if it moved since training")
    e.add_argument("--json", help="also write the results to this JSON file")
    e.add_argument("--device", help=_DEVICE_HELP)
    e.add_argument("--quiet", action="store_true", help="no progress bar (none is shown off a terminal)")

    pr = sub.add_parser(
        "predict", help="adapt a checkpoint to a support folder of your classes and label query images"
    )
    pr.add_argument(
        "checkpoint",
        help="a checkpoint trained on an image benchmark (omniglot, folder, cifar_fs, mini_imagenet, ...), "
        "or zoo:NAME (metalab zoo)",
    )
    pr.add_argument("queries", nargs="+", help="query images or folders of them (searched recursively)")
    pr.add_argument("--support", required=True, help="folder of your classes: SUPPORT/<class>/<a few images>")
    pr.add_argument(
        "--csv",
        help="write the predictions to this CSV file (query, prediction, one probability column per class)",
    )
    pr.add_argument(
        "--steps",
        type=int,
        help="inner steps for gradient-based learners (default: the checkpoint's eval_inner_steps)",
    )
    pr.add_argument("--device", help=_DEVICE_HELP)
    pr.add_argument("--invert", metavar="true|false", help=_INVERT_HELP)

    sv = sub.add_parser(
        "serve", help="serve a checkpoint over HTTP: a JSON API and a page to draw classes and queries"
    )
    sv.add_argument(
        "checkpoint",
        nargs="?",
        help="a checkpoint trained on an image benchmark (omniglot, folder, cifar_fs, mini_imagenet, ...), "
        "or zoo:NAME (metalab zoo)",
    )
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    sv.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    sv.add_argument("--max-episodes", type=int, default=256, help="episodes kept in memory (default: 256)")
    sv.add_argument(
        "--episode-ttl", type=float, default=3600, help="seconds an unused episode is kept (default: 3600)"
    )
    sv.add_argument("--invert", metavar="true|false", help=_INVERT_HELP)

    sw = sub.add_parser(
        "sweep", help="train and meta-test a grid of configs, one run folder each, and print a table"
    )
    sw.add_argument("config", help="the base YAML config")
    sw.add_argument(
        "--set",
        action="append",
        default=[],
        required=True,
        metavar="KEY=V1,V2,...",
        help="an axis of the grid (repeatable)",
    )
    sw.add_argument("--runs", default="runs", help="folder to put the run folders in (default: runs)")
    sw.add_argument("--progress", action="store_true", help="show progress bars")

    rl = sub.add_parser("runs", help="list run folders with their iterations and final test figures")
    rl.add_argument("root", nargs="?", default="runs")

    rp = sub.add_parser(
        "report", help="learning curves, accuracy vs shots/ways, sine figure and results table for runs"
    )
    rp.add_argument("runs", nargs="+", help="run folders, or results files holding a validation curve")
    rp.add_argument("--out", default="report", help="folder for the PNGs, report.md and report.html")
    rp.add_argument("--device", help="where the sine figure's learners adapt: " + _DEVICE_HELP)

    pl = sub.add_parser(
        "plot",
        help="figure 2 of Finn et al. 2017: a sine task before and after adaptation (RL: navigation "
        "trajectories and learning curves)",
    )
    pl.add_argument("checkpoint", help="a sine-wave or RL checkpoint (e.g. MAML)")
    pl.add_argument("--baseline", help="a second checkpoint to draw beside it (e.g. the pretrained baseline)")
    pl.add_argument("--out", default="sine.png", help="PNG to write")
    pl.add_argument("--shots", type=int, default=5)
    pl.add_argument("--steps", type=int, nargs="+", help="inner steps to draw (default: 1 10; RL: 3)")
    pl.add_argument("--seed", type=int, default=0, help="which held-out task to draw")
    pl.add_argument("--device", help=_DEVICE_HELP)

    _add_data_parser(sub)
    _add_zoo_parser(sub)

    i = sub.add_parser(
        "info", help="versions, devices, CPU kernels, threads, algorithms: what a bug report needs"
    )
    i.add_argument(
        "--build-kernels",
        action="store_true",
        help="build the Conv-4 CPU kernels if needed (~30 s) and say so",
    )
    return p


def _add_data_parser(sub) -> None:
    """`metalab data list` and `metalab data download NAME` (the catalogue: `metalab.data.catalog`)."""
    from .data.catalog import CATALOG, DOWNLOADS

    d = sub.add_parser("data", help="list, check and download data sets")
    actions = d.add_subparsers(dest="action", required=True, metavar="{list,download}")
    ls = actions.add_parser(
        "list", help="every data set: source, checksums, class split, and whether --data-dir holds it"
    )
    ls.add_argument("--data-dir", help="a folder to look in (and in its subfolder of each data set's name)")
    fetched = "\n".join(f"  {name:<15} {what}" for name, (_, _, what) in DOWNLOADS.items())
    manual = "\n".join(
        f"  {name:<15} no public URL: put {' or '.join(info.files)} in --data-dir"
        for name, info in CATALOG.items()
        if info.download is None
    )
    dl = actions.add_parser(
        "download",
        help="fetch a data set's official files, md5-checked",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fetch a data set's official files into --data-dir. Each is checked against its "
        "published md5 and renamed into place only if it matches; a wrong one is refused and removed. "
        "cifar_fs and fc100 read cifar100's file.",
        epilog=f"downloads:\n{fetched}\n{manual}\n`metalab data list` gives every data set's checksums "
        "and split.",
    )
    dl.add_argument("dataset", choices=sorted({*DOWNLOADS, *CATALOG}), metavar="NAME", help="the data set")
    dl.add_argument("--data-dir", required=True, help="folder to download into")


def _add_zoo_parser(sub) -> None:
    """`metalab zoo [list]` and `metalab zoo add RUN_DIR` (the zoo: `metalab.zoo`, docs/zoo.md)."""
    z = sub.add_parser("zoo", help="trained models that ship with metalab, loadable as zoo:NAME")
    actions = z.add_subparsers(dest="action", metavar="{list,add}")
    actions.add_parser("list", help="every zoo model with its figure and budget (the default)")
    add = actions.add_parser(
        "add",
        help="copy a meta-tested run's checkpoint (at most 2 MiB) into the zoo: $METALAB_ZOO, else the "
        "package's own folder",
    )
    add.add_argument("run_dir", help="a run folder with its checkpoint.pt")
    add.add_argument(
        "--results",
        nargs="+",
        help="figure records of this checkpoint as benchmarks/omniglot.py writes them "
        "(default: the run's own results.json)",
    )
    add.add_argument("--name", nargs="+", help="a zoo name per record (default: ALGORITHM-BENCHMARK-NwKs)")


def _preload_plugins(argv: list[str]) -> None:
    """Import the plugins named by `--plugins` or by the `--config` file first, so that their
    algorithms' keys are flags of `metalab train` and their names are known."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--plugins", nargs="+", default=[])
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    plugins = list(known.plugins)
    if known.config:
        try:
            plugins += load_config(known.config).plugins
        except ConfigError:
            pass  # reported with the right message when the config is read for real
    load_plugins(plugins)


def main(argv: list[str] | None = None) -> int:
    """Run `metalab ARGV...`; the exit status: 0 done, 2 bad input (one line on stderr), 1 a bug
    (its traceback, then a line saying so), 130 interrupted. Malformed flags exit through argparse
    (status 2, its usage and one error line)."""
    argv = sys.argv[1:] if argv is None else argv
    with warnings.catch_warnings():
        # An image beyond Pillow's size limit is refused by the loaders rather than decoded after a
        # warning: a command's bad input ends with one line.
        from PIL.Image import DecompressionBombWarning

        warnings.simplefilter("error", DecompressionBombWarning)
        return _run(argv)


def _run(argv: list[str]) -> int:
    try:
        _preload_plugins(argv)
        # No command at all means the built-in default job: `metalab train`.
        args = parser().parse_args(argv or ["train"])
        from . import commands  # the subcommands import this module's key list

        if args.command == "train":
            return commands.cmd_train(args, argv)
        handlers = {
            "eval": commands.cmd_eval,
            "predict": commands.cmd_predict,
            "plot": commands.cmd_plot,
            "data": commands.cmd_data,
            "sweep": commands.cmd_sweep,
            "runs": commands.cmd_runs,
            "report": commands.cmd_report,
            "serve": commands.cmd_serve,
            "info": commands.cmd_info,
            "zoo": commands.cmd_zoo,
        }
        return handlers[args.command](args)
    except (ConfigError, CheckpointError, OptionError, FileNotFoundError, ValueError, DistributedError) as e:
        if os.environ.get("METALAB_DEBUG"):
            raise
        print(f"metalab: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("metalab: interrupted (the last checkpoint is intact; continue with --resume)", file=sys.stderr)
        return 130
    except Exception:  # not a recognised error: a bug, reported as one with its traceback
        traceback.print_exc()
        print(INTERNAL_ERROR, file=sys.stderr)
        return 1


INTERNAL_ERROR = "metalab: internal error (a bug; please report it with the traceback above)"


def _one_line(error: BaseException) -> str:
    """The error's message on one line (a message quoting a file's lines is joined up)."""
    return " ".join(str(error).split()) or type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
