"""The `metalab` subcommands: each takes the parsed arguments and returns the exit status."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

from .cli import config_keys
from .config import Config, ConfigError, config_from_dict, load_config, parse_override, parse_value
from .config_checks import check_steps
from .experiment import default_run_dir, list_runs, meta_test, run_details, runs_table, sweep
from .paths import PathError, check_output_file, check_output_folder


def _train_config(args) -> Config:
    config = load_config(args.config) if args.config else Config()
    values = {}
    for name in config_keys():
        raw = getattr(args, f"cfg_{name}")
        if raw is not None:
            values[name] = [parse_value(v) for v in raw] if isinstance(raw, list) else parse_value(raw)
    for text in args.set:
        key, value = parse_override(text)
        values[key] = value
    return config_from_dict(values, config).resolved()


def cmd_train(args, argv=None) -> int:
    from . import distributed, run_folder
    from .train import final_lines, train

    check_nproc(args.nproc)
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
        run_dir = args.run_dir or default_run_dir(config)
        if not args.run_dir:
            argv += ["--run-dir", str(run_dir)]
        run_folder.check_free(run_dir)  # refused here in one line, before any process starts
        return distributed.launch(args.nproc, argv)
    run_dir = check_output_folder(args.run_dir or default_run_dir(config), "--run-dir")
    # One process writes: the lock is held from training through results.json (under torchrun, rank
    # 0 takes it in Run.start, and again here for the final meta-test).
    with contextlib.nullcontext() if distributed.launched_by_torchrun() else run_folder.hold(run_dir):
        result = train(config, run_dir, resume=args.resume, progress=not args.quiet)
        if not distributed.is_main():
            return 0
        print(final_lines(result))
        if not args.no_eval:
            with run_folder.hold(run_dir):
                meta_test(result, progress=not args.quiet)
    return 0


def check_nproc(nproc: int | None) -> None:
    """`--nproc` must be >= 1 and at most 8 processes per core of this machine."""
    if nproc is None:
        return
    cores = os.cpu_count() or 1
    if not 1 <= nproc <= 8 * cores:
        raise ConfigError(
            f"--nproc must be between 1 and {8 * cores} (8 per core of this machine's {cores}), got {nproc}"
        )


def cmd_sweep(args) -> int:
    check_output_folder(args.runs, "--runs")
    table = sweep(load_config(args.config), args.set, args.runs, progress=args.progress)
    print(table)
    return 0


def cmd_runs(args) -> int:
    root = Path(args.root or "runs")
    if root.exists() and not root.is_dir():
        raise PathError(f"{root} is a file, not a folder of runs")
    if args.root is not None and not root.exists():
        raise PathError(f"no such folder: {root}")
    runs = list_runs(root)
    if not runs:
        print(f"no runs under {root}")
        return 0
    print(runs_table(runs))
    if len(runs) == 1 and runs[0].path == root:  # one run folder: its split and figures
        details = run_details(runs[0])
        if details:
            print(details)
    return 0


def cmd_report(args) -> int:
    from .devices import check_device_name, resolve_device
    from .report import write_report

    check_output_folder(args.out, "--out")
    if args.device is not None:  # before any figure is drawn
        resolve_device(check_device_name(args.device))
    page = write_report(args.runs, args.out, device=args.device)
    print(f"wrote {page} and {Path(args.out) / 'report.md'}")
    return 0


def cmd_eval(args) -> int:
    from .builders import build_source, load_dataset
    from .devices import place_dataset
    from .evaluate import evaluate
    from .threads import threads_for
    from .train import learner_on_device

    for flag in ("ways", "shots", "queries", "tasks"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise ConfigError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.json:
        check_output_file(args.json, "--json")
    if len(args.checkpoint) > 1:
        from .ensemble import ensemble_from_checkpoints

        learner, configs, states = ensemble_from_checkpoints(args.checkpoint, args.device)
        c = configs[0]
        iterations = ", ".join(f"{p} ({s['iteration']:,})" for p, s in zip(args.checkpoint, states))
        name = f"ensemble of {len(states)}: {iterations}"
        state = {"iteration": None}
        # Inner steps: the first member with an inner loop says how many (the others ignore them).
        looped = [m_c for m, m_c in zip(learner.members, configs) if m.inner_loop]
        default_steps = looped[0].resolved().eval_steps if looped else []
        algorithm = "+".join(dict.fromkeys(m_c.algorithm for m_c in configs))
    else:
        learner, c, state = learner_on_device(args.checkpoint[0], args.device)
        name, default_steps, algorithm = f"{args.checkpoint[0]}", None, None
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
    check_steps(args.steps, name="--steps", inner_loop=learner.inner_loop, algorithm=c.algorithm)
    steps_list = (args.steps or default_steps or c.eval_steps) if learner.inner_loop else [None]
    dataset = place_dataset(load_dataset(c), device)
    cell = f"{c.test_ways}-way {c.test_shots}-shot" if c.benchmark != "sine" else f"K={c.test_shots}"
    if learner.kind == "rl":
        cell = f"{c.test_shots} trajectories per task and inner step"
    at = "" if state["iteration"] is None else f", iteration {state['iteration']}"
    print(f"{name}: {algorithm or c.algorithm} on {c.benchmark}{at}, {cell}")
    results = []
    with threads_for(c.threads, learner):
        for steps in steps_list:
            source = build_source(c, "test", dataset, device=device)
            r = evaluate(learner, source, tasks, steps=steps, progress=not args.quiet)
            results.append(r.to_dict())
            print("test " + str(r))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps(
                {
                    "checkpoint": [str(p) for p in args.checkpoint]
                    if len(args.checkpoint) > 1
                    else str(args.checkpoint[0]),
                    "shots": c.test_shots,
                    "results": results,
                },
                indent=2,
            )
        )
    return 0


def cmd_predict(args) -> int:
    from .predict import format_predictions, predict, write_predictions_csv

    if args.csv:
        check_output_file(args.csv, "--csv")
    predictions = predict(
        args.checkpoint,
        args.support,
        args.queries,
        steps=args.steps,
        device=args.device,
        invert=_true_false("--invert", args.invert),
        warn=_warn,
    )
    if args.csv:
        write_predictions_csv(predictions, args.csv)
        print(f"wrote {len(predictions)} predictions to {args.csv}")
    else:
        print(format_predictions(predictions))
    return 0


def _true_false(flag: str, text: str | None) -> bool | None:
    if text is None:
        return None
    if text.lower() not in ("true", "false"):
        raise ConfigError(f"{flag} must be true or false, got {text!r}")
    return text.lower() == "true"


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


SERVE_NEEDS_CHECKPOINT = (
    "metalab serve needs a checkpoint trained on images: a model of the zoo (metalab zoo lists them; "
    "metalab serve zoo:NAME) or one you train, e.g. "
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
    if args.max_episodes < 1:
        raise ConfigError(f"--max-episodes must be >= 1, got {args.max_episodes}")
    if not 0 < args.episode_ttl < float("inf"):  # (a NaN is not > 0 either)
        raise ConfigError(f"--episode-ttl must be a positive number of seconds, got {args.episode_ttl}")
    from .serve import Limits, serve

    serve(
        args.checkpoint,
        args.host,
        args.port,
        Limits(max_episodes=args.max_episodes, episode_ttl=args.episode_ttl),
        invert=_true_false("--invert", args.invert),
        warn=_warn,
    )
    return 0


def cmd_plot(args) -> int:
    from .config import RL_BENCHMARKS
    from .plots import SINE_TEST_SEED, sine_adaptation_figure
    from .train import learner_on_device

    check_output_file(args.out, "--out")
    check_steps(args.steps, name="--steps")
    if not 0 <= args.seed < 2**63 - SINE_TEST_SEED:
        raise ConfigError(f"--seed must be between 0 and 2**63 - {SINE_TEST_SEED:,}, got {args.seed}")
    learners, run_dirs, benchmarks = {}, {}, set()
    for path in [args.checkpoint] + ([args.baseline] if args.baseline else []):
        learner, c, _ = learner_on_device(path, args.device)
        if c.benchmark in RL_BENCHMARKS:  # trajectories before and after adaptation, learning curves
            label = c.algorithm if c.benchmark == "navigation" else f"{c.algorithm} ({c.benchmark})"
            label = label if label not in learners else f"{label} ({Path(path).parent.name})"
            learners[label], run_dirs[label] = learner, Path(path).parent
            benchmarks.add(c.benchmark.split("_")[0])
            continue
        if c.benchmark != "sine":
            raise ConfigError(f"plot draws sine-wave tasks; {path} was trained on {c.benchmark}")
        label = type(learner).__name__  # MAML, Pretrained, MetaSGD, ...
        learners[label if label not in learners else c.algorithm] = learner
    if run_dirs:
        from .rl.plots import rl_figure

        if len(learners) != len(run_dirs) or len(benchmarks) > 1:
            raise ConfigError("plot draws an RL checkpoint beside another of the same environment only")
        rl_figure(learners, run_dirs, args.out, steps=max(args.steps or [3]), seed=args.seed)
        print(f"wrote {args.out}")
        return 0
    if args.shots < 1:
        raise ConfigError(f"--shots must be >= 1, got {args.shots}")
    sine_adaptation_figure(learners, args.out, shots=args.shots, steps=args.steps or [1, 10], seed=args.seed)
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
    check_output_folder(args.data_dir, "--data-dir")
    path = catalog.download(args.dataset, args.data_dir)
    print(f"{args.dataset} ready in {path}")
    return 0


def cmd_zoo(args) -> int:
    from . import zoo

    if args.action != "add":
        print(zoo.format_models(zoo.list_models()))
        return 0
    results = args.results or []
    records = [_json_record(p) for p in results] if results else [zoo.record_from_run(args.run_dir)]
    for entry in zoo.add(args.run_dir, records, args.name):
        size = f"{entry['bytes'] / 2**20:.2f} MiB"
        print(f"added zoo:{entry['name']} ({entry['file']}, {size}) to {zoo.zoo_dir()}")
    return 0


def _json_record(path: str) -> dict:
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PathError(f"results file not found: {path}") from None
    except (ValueError, OSError) as e:
        raise ConfigError(f"results file {path} cannot be read as JSON ({e})") from None
    needed = ("algorithm", "ways", "shots", "accuracy", "ci95", "test_episodes", "test_queries", "iterations")
    missing = [k for k in needed if not isinstance(record, dict) or k not in record]
    if missing:
        raise ConfigError(f"results file {path} lacks {', '.join(missing)}")
    return record
