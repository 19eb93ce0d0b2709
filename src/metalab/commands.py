"""The `metalab` subcommands: each takes the parsed arguments and returns the exit status."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .algorithms.optimization.options import MAX_INNER_STEPS
from .cli import config_keys
from .config import Config, ConfigError, config_from_dict, load_config, parse_override
from .experiment import default_run_dir, list_runs, meta_test, runs_table, sweep


def _yaml(text: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _train_config(args) -> Config:
    config = load_config(args.config) if args.config else Config()
    values = {}
    for name in config_keys():
        raw = getattr(args, f"cfg_{name}")
        if raw is not None:
            values[name] = [_yaml(v) for v in raw] if isinstance(raw, list) else _yaml(raw)
    for text in args.set:
        key, value = parse_override(text)
        values[key] = value
    return config_from_dict(values, config).resolved()


def cmd_train(args, argv=None) -> int:
    from . import distributed
    from .train import train

    if args.resume and not args.run_dir:
        raise ConfigError("--resume needs --run-dir, the folder of the run to continue")
    if (
        args.resume
        and not args.config
        and not any(getattr(args, f"cfg_{k}") is not None for k in config_keys())
        and not args.set
    ):
        # Resuming with no config given means: the run's own config.
        config = load_config(Path(args.run_dir) / "config.yaml").resolved(saved=True)
    else:
        config = _train_config(args)
    if args.nproc and args.nproc > 1 and not distributed.launched_by_torchrun():
        # Re-run this very command under torchrun; every rank gets the same run folder.
        argv = list(sys.argv[1:] if argv is None else argv)
        for i, token in enumerate(argv):  # the ranks must not launch again
            if token == "--nproc":
                del argv[i : i + 2]
                break
            if token.startswith("--nproc="):
                del argv[i]
                break
        if not args.run_dir:
            argv += ["--run-dir", str(default_run_dir(config))]
        return distributed.launch(args.nproc, argv)
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(config)
    result = train(config, run_dir, resume=args.resume, progress=not args.quiet)
    if not distributed.is_main():
        return 0
    c = result.config
    summary = (
        f"trained {c.algorithm} on {c.benchmark} for {result.iteration} iterations "
        f"in {result.seconds:.0f} s -> {run_dir}/checkpoint.pt"
    )
    if result.last_val is not None:
        summary += f"; last validation {result.last_val}"
    print(summary)
    if not args.no_eval:
        meta_test(result)
    return 0


def cmd_sweep(args) -> int:
    table = sweep(load_config(args.config), args.set, args.runs, progress=args.progress)
    print(table)
    return 0


def cmd_runs(args) -> int:
    runs = list_runs(args.root)
    if not runs:
        print(f"no runs under {args.root}")
        return 0
    print(runs_table(runs))
    return 0


def cmd_report(args) -> int:
    from .report import write_report

    page = write_report(args.runs, args.out, device=args.device)
    print(f"wrote {page} and {Path(args.out) / 'report.md'}")
    return 0


def cmd_eval(args) -> int:
    from .builders import build_source, load_dataset
    from .devices import place_dataset
    from .evaluate import evaluate
    from .train import learner_on_device

    learner, c, state = learner_on_device(args.checkpoint, args.device)
    device = next(learner.parameters()).device
    overrides = {
        k: v
        for k, v in {
            "test_ways": args.ways,
            "test_shots": args.shots,
            "test_queries": args.queries,
            "data_dir": args.data_dir,
        }.items()
        if v is not None
    }
    c = config_from_dict(overrides, c).resolved()
    tasks = args.tasks if args.tasks is not None else c.test_tasks
    if tasks < 1:
        raise ConfigError(f"--tasks must be >= 1, got {tasks}")
    if args.steps and not learner.inner_loop:
        raise ConfigError(f"--steps applies to learners with an inner loop; {c.algorithm} has none")
    steps_list = (args.steps or c.eval_steps) if learner.inner_loop else [None]
    if any(s is not None and not 0 <= s <= MAX_INNER_STEPS for s in steps_list):
        raise ConfigError(f"--steps must be between 0 and {MAX_INNER_STEPS:,}, got {steps_list}")
    dataset = place_dataset(load_dataset(c), device)
    cell = f"{c.test_ways}-way {c.test_shots}-shot" if c.benchmark != "sine" else f"K={c.test_shots}"
    print(f"{args.checkpoint}: {c.algorithm} on {c.benchmark}, iteration {state['iteration']}, {cell}")
    results = []
    for steps in steps_list:
        r = evaluate(learner, build_source(c, "test", dataset, device=device), tasks, steps=steps)
        results.append(r.to_dict())
        print("test " + str(r))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"checkpoint": str(args.checkpoint), "shots": c.test_shots, "results": results}, indent=2
            )
        )
    return 0


def cmd_predict(args) -> int:
    from .predict import format_predictions, predict, write_predictions_csv

    predictions = predict(args.checkpoint, args.support, args.queries, steps=args.steps, device=args.device)
    if args.csv:
        write_predictions_csv(predictions, args.csv)
        print(f"wrote {len(predictions)} predictions to {args.csv}")
    else:
        print(format_predictions(predictions))
    return 0


SERVE_NEEDS_CHECKPOINT = (
    "metalab serve needs a checkpoint trained on images (there is no model zoo yet); train one, e.g. "
    "metalab train --config configs/omniglot/protonet_5w1s.yaml --data-dir ../shared/data/omniglot "
    "--run-dir runs/protonet, then: metalab serve runs/protonet/checkpoint.pt"
)


def cmd_serve(args) -> int:
    import importlib.util

    if args.checkpoint is None:
        raise ConfigError(SERVE_NEEDS_CHECKPOINT)
    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f"metalab serve needs {' and '.join(missing)}, not installed: pip install 'metalab[serve]'"
        )
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {args.port}")
    if args.max_episodes < 1 or args.episode_ttl <= 0:
        raise ConfigError("--max-episodes must be >= 1 and --episode-ttl > 0")
    from .serve import Limits, serve

    serve(
        args.checkpoint,
        args.host,
        args.port,
        Limits(max_episodes=args.max_episodes, episode_ttl=args.episode_ttl),
    )
    return 0


def cmd_plot(args) -> int:
    from .plots import sine_adaptation_figure
    from .train import learner_on_device

    learners = {}
    for path in [args.checkpoint] + ([args.baseline] if args.baseline else []):
        learner, c, _ = learner_on_device(path, args.device)
        if c.benchmark != "sine":
            raise ConfigError(f"plot draws sine-wave tasks; {path} was trained on {c.benchmark}")
        label = type(learner).__name__  # MAML, Pretrained, MetaSGD, ...
        learners[label if label not in learners else c.algorithm] = learner
    if args.shots < 1:
        raise ConfigError(f"--shots must be >= 1, got {args.shots}")
    sine_adaptation_figure(learners, args.out, shots=args.shots, steps=args.steps, seed=args.seed)
    print(f"wrote {args.out}")
    return 0


def cmd_info(args) -> int:
    from .info import format_info, system_info

    print(format_info(system_info(build_kernels=args.build_kernels)))
    return 0


def cmd_data(args) -> int:
    from .data import catalog

    if args.action == "list":
        print(catalog.format_catalog(args.data_dir))
        return 0
    path = catalog.download(args.dataset, args.data_dir)
    print(f"{args.dataset} ready in {path}")
    return 0
