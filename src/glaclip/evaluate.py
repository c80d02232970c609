"""Benchmark evaluation (placeholder until the evaluation loop lands)."""

from __future__ import annotations

import argparse


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True)


def run_eval(args: argparse.Namespace) -> int:
    raise ValueError("glaclip eval is not available yet")
