"""The golden fixtures: where they are, case names, their settings, and the one tolerance rule.

Two forms of the same fixtures (the reference implementation's outputs on tiny random models):

* the **compact set** in ``tests/golden/``, shipped with the repository: the tiny models and, per
  case, the class lines, settings, text features, full labels and the logits on a regular
  subgrid (``subgrid = {"start", "step"}``: rows and columns ``start::step``); the input image
  is remade from the settings (``remake_image``). ``tests/make_compact_golden.py`` makes it.
* the **full set** (67 MB: every logit, and the image), where it is present:
  ``$GLACLIP_GOLDEN``, or ``../shared/golden`` beside the repository.

The tests always run the compact set, and the full set too when it is present (and check
that the compact set was made from it).

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

import os
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
COMPACT_DIR = REPO / "tests" / "golden"
REFERENCE_CLASSES_DIR = REPO / "tests" / "data" / "reference_classes"
SHARED = REPO.parent / "shared"
SUBGRID_START, SUBGRID_STEP = 2, 4  # compact logits: rows and columns 2, 6, 10, ...

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


def full_golden_dir() -> Path | None:
    """The full fixtures: ``$GLACLIP_GOLDEN`` (which must then hold them), else
    ``../shared/golden`` when it exists, else None."""
    if os.environ.get("GLACLIP_GOLDEN"):
        path = Path(os.environ["GLACLIP_GOLDEN"])
        if not (path / "models.pt").is_file():
            raise FileNotFoundError(f"GLACLIP_GOLDEN={path} holds no golden fixtures (models.pt)")
        return path
    path = SHARED / "golden"
    return path if (path / "models.pt").is_file() else None


def golden_sets() -> dict[str, Path]:
    """``{"compact": tests/golden, "full": ...}``: the sets the golden tests run on."""
    sets = {"compact": COMPACT_DIR}
    full = full_golden_dir()
    if full is not None:
        sets["full"] = full
    return sets


def remake_image(params: dict) -> torch.Tensor:
    """A case's input image (``1 x 3 x H x W`` float32, already resized and normalised) from
    its settings, as the fixtures were made (golden/README.md)."""
    g = torch.Generator().manual_seed(params["seed"] + 1)
    noise = torch.randn(1, 3, params["H"], params["W"], generator=g)
    return torch.nn.functional.avg_pool2d(noise, 9, 1, 4) * 3


def load_case(directory: Path, case: str) -> dict:
    """One case of either set, with its ``image`` (remade where the file has none)."""
    g = torch.load(Path(directory) / f"{case}.pt", weights_only=True)
    if "image" not in g:
        g["image"] = remake_image(g["params"])
    return g


def build_golden_modules(state: dict):
    """``(clip_model, vfm_model, tokenizer)`` from ``models.pt``'s state, built exactly as the
    golden README says (eval mode)."""
    import open_clip
    import timm

    clip = open_clip.model.CLIP(
        embed_dim=state["clip_embed_dim"],
        vision_cfg=state["clip_vision_cfg"],
        text_cfg=state["clip_text_cfg"],
        quick_gelu=state["quick_gelu"],
    )
    clip.load_state_dict(state["clip_state_dict"])
    vfm = timm.create_model(
        state["vfm_timm_name"], pretrained=False, num_classes=0, **state["vfm_kwargs"]
    )
    vfm.load_state_dict(state["vfm_state_dict"])
    return clip.eval(), vfm.eval(), open_clip.get_tokenizer("ViT-B-16")


def reference_logits(logits: torch.Tensor, case: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ours, the reference's)`` at the pixels the case holds logits for: every pixel, or
    the compact set's subgrid."""
    grid = case.get("subgrid")
    if grid is not None:
        s, t = grid["start"], grid["step"]
        logits = logits[..., s::t, s::t]
    return logits, case["logits"]


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
    logits, ref = reference_logits(logits.cpu(), case)
    assert logits.shape == ref.shape, f"logits {tuple(logits.shape)} vs {tuple(ref.shape)}"
    diff = (logits.float() - ref).abs()
    close = (diff < LOGIT_ATOL).float().mean().item()
    agree = (labels.cpu().long() == case["pred"].long()).float().mean().item()
    return close, diff.max().item(), agree


def assert_matches_golden(logits: torch.Tensor, labels: torch.Tensor, case: dict) -> None:
    """The tolerance rule of the golden fixtures (see the module docstring)."""
    close, worst, agree = golden_agreement(logits, labels, case)
    summary = f"{100 * close:.3f} % of logits within {LOGIT_ATOL:g}, max diff {worst:.2e}, "
    summary += f"labels equal on {100 * agree:.3f} %"
    assert close >= CLOSE_FRACTION, summary
    assert worst < LOGIT_MAX, summary
    assert agree >= LABEL_FRACTION, summary
