"""The golden fixtures (../shared/golden): case names, their settings, and the one tolerance rule.

Every comparison with a golden case goes through ``assert_matches_golden``. The rule is the
fixtures' own (golden/README.md, "Tolerance"): thresholds of the method (``A > tau``, the cut at
``min(rowmax, 0)``) flip on float32 round-off, and CPUs with different matrix kernels round
differently, so a faithful implementation may differ at a handful of tokens. Per case:

* at least 99.5 % of the logits within 1e-4 of the reference,
* every logit within 1e-2,
* the predicted labels equal on at least 99.9 % of the pixels.

Switching off any one component of the method keeps at most 17 % of the logits within 1e-4.
"""

from __future__ import annotations

import torch

PROXYCLIP_CASES = [
    "gla_default",
    "gla_wide",
    "kv_only",
    "proxyclip_baseline",
    "proxy_anchor_no_kv",
    "gla_iters0",
]
CLEARCLIP_CASES = [
    "clearclip_gla",
    "clearclip_gla_fixed_beta",
    "clearclip_gla_unaligned",
    "clearclip_kv_only",
    "clearclip_baseline",
    "clearclip_iters0",
]
GOLDEN_CASES = PROXYCLIP_CASES + CLEARCLIP_CASES

LOGIT_ATOL = 1e-4  # "close" for one logit
CLOSE_FRACTION = 0.995  # share of logits that must be close
LOGIT_MAX = 1e-2  # no logit may be further off than this
LABEL_FRACTION = 0.999  # share of pixels whose label must agree


def is_clearclip(params: dict) -> bool:
    """Whether a case was made with the ClearCLIP base (SPEC 12): no VFM."""
    return params.get("clip_type", "ProxyCLIP") == "ClearCLIP"


def settings_of(params: dict) -> dict:
    """A golden case's ``params`` as glaclip's flat settings (cases without ``clip_type`` are
    ProxyCLIP, without ``no_dyn_beta`` have a dynamic beta)."""
    return {
        "base": "clearclip" if is_clearclip(params) else "proxyclip",
        "dynamic_beta": not params.get("no_dyn_beta", False),
        "kv_extension": not params["no_kv"],
        "proxy_anchor": not params["no_proxy"],
        "dynamic_norm": not params["no_dyn"],
        "token_norm": not params["no_token_norm"],
        "proxy_iters": params["mini_iters"],
        "proxy_threshold": params["crit"],
        "beta_alpha": params["beta_alpha"],
        "gamma_alpha": params["gamma_alpha"],
        "prob_threshold": params["prob_thd"],
    }


def golden_agreement(
    logits: torch.Tensor, labels: torch.Tensor, case: dict
) -> tuple[float, float, float]:
    """``(fraction of logits within LOGIT_ATOL, largest difference, label agreement)``."""
    ref = case["logits"]
    assert logits.shape == ref.shape, f"logits {tuple(logits.shape)} vs {tuple(ref.shape)}"
    diff = (logits.float() - ref).abs()
    close = (diff < LOGIT_ATOL).float().mean().item()
    agree = (labels.long() == case["pred"].long()).float().mean().item()
    return close, diff.max().item(), agree


def assert_matches_golden(logits: torch.Tensor, labels: torch.Tensor, case: dict) -> None:
    """The tolerance rule of the golden fixtures (see the module docstring)."""
    close, worst, agree = golden_agreement(logits, labels, case)
    summary = f"{100 * close:.3f} % of logits within {LOGIT_ATOL:g}, max diff {worst:.2e}, "
    summary += f"labels equal on {100 * agree:.3f} %"
    assert close >= CLOSE_FRACTION, summary
    assert worst < LOGIT_MAX, summary
    assert agree >= LABEL_FRACTION, summary
