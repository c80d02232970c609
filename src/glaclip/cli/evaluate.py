"""``glaclip eval``: one benchmark, or every one found (``--dataset all``: Table 1)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from glaclip.cli import options
from glaclip.cli.common import in_flags, locks
from glaclip.cli.options import model_identity, settings_from_args
from glaclip.cli.prepare import print_data_check

if TYPE_CHECKING:
    from glaclip.evaluation.table import Benchmark, Report
    from glaclip.model.distributed import DistInfo


def run_eval_command(args: argparse.Namespace) -> int:
    """``glaclip eval``: one benchmark (``evaluate``), or every one (``--dataset all``)."""
    from glaclip.evaluation.run import plan_eval, run_eval
    from glaclip.model.distributed import process_group

    if args.check:
        return 0 if print_data_check(args) else 1
    if args.out is None:
        raise ValueError("--out is required: the folder for the results (or pass --check)")
    if args.dataset == "all":
        return _run_eval_all(args)
    plan = plan_eval(
        args.dataset,
        args.data_root,
        args.out,
        settings_from_args(args),
        model_identity(args),
        class_file=args.class_file,
        limit=args.limit,
        reduce_zero_label=args.reduce_zero_label,
        save_predictions=args.save_predictions,
        restart=args.restart,
        overwrite=args.overwrite,
    )
    with locks(_eval_folders(args)), process_group(args.device) as (info, args.device):
        segmenter = options.build_segmenter(args, plan.settings)
        results, path = run_eval(plan, segmenter, info, progress=not args.no_progress)
    if info.is_main:
        _print_result(plan.task.dataset, results, path)
    return 0


def _eval_folders(args: argparse.Namespace) -> list[tuple[Path, str]]:
    folders = [(Path(args.out), "--out")]
    if args.save_predictions:
        folders.append((Path(args.save_predictions), "--save-predictions"))
    return folders


def _print_result(name: str, results: dict, path: Path) -> None:
    from glaclip.evaluation.reports import format_percent, outside_note

    print(
        f"{name}: mIoU {format_percent(results['mIoU'])}, "
        f"aAcc {format_percent(results['aAcc'])}, BER {format_percent(results['BER'])} "
        f"on {results['num_images']} images ({results['resumed_images']} resumed); "
        f"wrote {path}",
        file=sys.stderr,
    )
    outside = results["label_pixels_outside_classes"]
    if outside:
        note = outside_note(outside, len(results["per_class"]))
        print(f"glaclip: warning: {name}: {note}", file=sys.stderr)


def _run_eval_all(args: argparse.Namespace) -> int:
    """``--dataset all``: every benchmark under --data-root, then table1.json/md (``table``)."""
    from glaclip.evaluation.table import plan_table, run_table
    from glaclip.model.distributed import dist_info_from_env, process_group

    _refuse_one_benchmark_flags(args)
    plan = plan_table(
        args.data_root,
        args.out,
        settings_from_args(args),
        model_identity(args),
        limit=args.limit,
        save_predictions=args.save_predictions,
        restart=args.restart,
        overwrite=args.overwrite,
    )
    if dist_info_from_env().is_main:  # what is there, and how long it will take
        print_data_check(args)
    with locks(_eval_folders(args)), process_group(args.device) as (info, args.device):
        for bench in plan.benchmarks:
            if bench.status == "failed" and info.is_main:
                print(
                    f"glaclip: error: {bench.preset.title}: {in_flags(bench.reason)}",
                    file=sys.stderr,
                )
        table, md_path = run_table(
            plan,
            lambda settings: options.build_segmenter(args, settings),
            info,
            progress=not args.no_progress,
            report=_benchmark_report(plan.out, info),
        )
    if info.is_main:
        _print_table(table, md_path)
    return 1 if table["failed"] else 0


def _refuse_one_benchmark_flags(args: argparse.Namespace) -> None:
    """``--class-file`` and ``--[no-]reduce-zero-label`` have no meaning with ``--dataset all``."""
    for flag_name, value in (
        ("--class-file", args.class_file),
        ("--[no-]reduce-zero-label", args.reduce_zero_label),
    ):
        if value is not None:
            raise ValueError(
                f"{flag_name} belongs to one benchmark: use it with --dataset NAME (with "
                "--dataset all, each benchmark uses its preset's class file and labels)"
            )


def _benchmark_report(out: Path, info: DistInfo) -> Report:
    """What a ``--dataset all`` run says after each benchmark (rank 0 alone)."""
    from glaclip.evaluation.reports import results_stem

    def report(bench: Benchmark, results: dict | None, error: Exception | None) -> None:
        name = bench.preset.name
        if error is not None:  # every rank has it (the others' messages in OtherRankFailed)
            if info.is_main:
                print(
                    f"glaclip: error: {bench.preset.title}: {in_flags(str(error))}",
                    file=sys.stderr,
                )
        elif info.is_main and results is not None:
            stem = results_stem(results.get("limit"))
            _print_result(name, results, out / name / f"{stem}.json")

    return report


def _print_table(table: dict[str, Any], md_path: Path | None) -> None:
    from glaclip.evaluation.reports import format_percent

    avg = table["average"]
    print(
        f"Table 1: average mIoU {format_percent(avg['mIoU'])} over {avg['benchmarks']} "
        f"benchmark(s); {len(table['not_run'])} not found, {len(table['failed'])} failed; "
        f"wrote {md_path}",
        file=sys.stderr,
    )
