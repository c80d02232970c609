"""Golden fixtures of the SCLIP and NACLIP bases and of PAMR: the authors' own code on a tiny
random CLIP (``tests/make_base_golden.py`` made them; ``tests/test_base_golden.py`` checks glaclip).

The fixtures in ``tests/golden_bases/`` hold no weights and no images: both are remade here from
seeds (torch's CPU generator is deterministic), and every case stores the SHA-256 of the weights
it was made with (``model_sha256``) and of its image (``image_sha256``), so that a machine that
remakes other values fails loudly. Per case (``<case>.pt``, ``torch.load(..., weights_only=True)``):
``class_lines`` (synonyms separated by ``; ``), ``settings`` (glaclip's flat settings, passed as
they are to ``Segmenter.from_modules``), ``params`` (``seed``, ``H``, ``W`` of the image,
``output_size``, ``model_seed``, the authors' constructor arguments under ``reference``, which
classes the area threshold dropped and how many pixels the probability threshold set to 0),
``text_features`` ``Q x E``, ``logits`` (the stitched ``Q x H x W`` logits at the input size,
before the final resize, PAMR and the softmax, on rows and columns ``2::4``), ``pred`` (the labels
at ``output_size``, uint8) and, where PAMR runs or the output size is not the input size,
``probs`` (``C x H0 x W0`` after the softmax and the maximum over synonyms, before the area
threshold, on ``2::4``). PAMR unit cases: ``params`` (``seed``, ``H``, ``W``, ``C``, ``steps``,
``dilations``), ``inputs_sha256`` and ``refined`` (``1 x C x H x W``, every value).

The tiny CLIP (``tiny_state_dict``): OpenAI's ``build_model`` infers the architecture from the
weights and sets 64-wide heads, so vision width 128 (2 heads), 3 layers, patch 16, image 224;
text width 64 (1 head), 2 layers, context 77, vocabulary 49408; embedding 32; QuickGELU. Every
value is exact in float16, because ``build_model`` rounds the weights of convolutions, linear
layers, attention projections, ``proj`` and ``text_projection`` to float16 before ``clip.load``
turns the model back to float32 on the CPU. Its scales keep attention and logits informative:
switching off one component fails the tolerance rule (``test_base_golden.py``).

What the authors' code does, read from it and confirmed by a separate implementation on
open_clip's model written from these notes, which meets every case with logits within 3.6e-7,
probabilities within 1.1e-6 and labels equal on at least 99.999 % of the pixels:

* Text: the two repositories' ``clip.tokenize`` equals ``open_clip.get_tokenizer('ViT-B-16')``
  token for token, and their 80 ``openai_imagenet_template`` equal open_clip's
  ``OPENAI_IMAGENET_TEMPLATES``. Per name: the 80 prompts, each embedding L2-normalised, the mean,
  L2-normalised. glaclip's ``TextEncoder`` gives the same to 1.2e-7.
* Windows: mmseg's slide inference (``n = max(H - crop + stride - 1, 0) // stride + 1``; window
  ``i`` starts at ``i * stride``, ends at ``min(start + crop, H)``, and then starts at
  ``max(end - crop, 0)``): a side under the crop gives a smaller window, nothing is upscaled or
  padded. A window's grid is ``(h // 16, w // 16)``: the patch convolution drops the last
  ``h % 16`` rows and ``w % 16`` columns, and the grid's logits are resized bilinearly
  (``align_corners=False``) over the whole window, dropped pixels included. Windows' logits are
  summed in pixel space and divided by the count. NACLIP's ``slide_crop=0`` runs the whole image as
  one window the same way (its Gaussian then spans the whole image's grid).
* Positional embedding, when the token count is not 197: ``F.interpolate(grid 14 x 14,
  scale_factor=((gh + 0.1) / 14, (gw + 0.1) / 14), mode='bicubic', align_corners=False)``. SCLIP
  leaves ``recompute_scale_factor`` at None, NACLIP sets it False: identical results (the given
  scale is used for the source coordinates). Resizing to the size ``(gh, gw)`` instead, or with
  ``recompute_scale_factor=True`` (the same thing), differs by up to 0.65 and fails
  ``sclip_small`` and ``naclip_whole``. Both axes are resampled, even a side of 14 tokens (scale
  14.1 / 14 is not the identity). A 224 x 224 window (197 tokens) keeps the native embedding.
* Per token, ``image_features / norm`` then ``@ text_features.T`` (the class token dropped).
* SCLIP's last block: ``y = ln_1(x)``; per head ``softmax(q q^T s) + softmax(k k^T s)``,
  ``s = 64 ** -0.5`` (the products are scaled after the matmul), over all 1 + S tokens, biases
  of the input projection included; ``x = x + out_proj(A v)``; ``x = x + mlp(ln_2(x))``;
  ``ln_post``; ``@ proj``.
* NACLIP's last block: per head ``softmax(k k^T s + Omega)``, q unused; ``reduced``: the block's
  output is ``out_proj(A v)`` alone (no residual, no MLP); ``vanilla``: both kept. ``Omega`` is 0
  in the class token's row and column; for patches at ``(a, b)`` and ``(c, d)`` of the window's
  grid it is ``window[a - c + gh - 1, b - d + gw - 1]`` where ``window = exp(-(u_i^2 + v_j^2))``,
  ``u = torch.linspace(-(gh - 1) * k, (gh - 1) * k, 2 gh - 1)`` (``v`` likewise with ``gw``),
  ``k = 1 / (std * sqrt(2))``, float32. The conv2d that builds it copies these values exactly.
  This is ``exp(-d^2 / (2 std^2))`` (patch units, 1 on the diagonal, no normalisation, no cut-off)
  up to 1.3e-7 (a few float32 ulps, not bit for bit); using the exact formula moves the logits
  by at most 1.6e-7.
* After stitching (both): bilinear resize (``align_corners=False``) to the output size; PAMR if
  on; ``softmax(logits * logit_scale)`` over queries; synonyms merge by max after the softmax.
  SCLIP's area threshold then: ``n_c`` = pixels whose argmax (over classes) is ``c``; class
  ``c >= 1`` is kept iff ``n_c > area_thd * sum_{c' >= 1} n_c'`` (class 0 always kept; the
  denominator leaves out class 0's pixels: ``sclip_voc21`` fails with all pixels in it); a
  dropped class's probabilities become 0. Then argmax, and pixels whose maximum probability,
  taken **after** the area threshold, is under ``prob_thd`` get 0 (``sclip_voc21`` fails
  with the maximum taken before). NACLIP divides its returned probabilities by their sum after
  the labels are made: no effect on the labels.
* PAMR (the two ``pamr.py`` give identical outputs): on the resized raw logits (before the
  scale and softmax) at the output size, with the normalised input image resized bilinearly
  (``align_corners=False``) to that size. Inside: the logits are resized to the image with
  ``align_corners=True`` (the identity at equal sizes). Per image channel, the standard
  deviation (unbiased, ``N - 1``) over the ``9 * len(dilations)`` values of the 3 x 3
  neighbourhoods at each dilation (centre included, once per dilation), replicate padding;
  affinity to the 8 neighbours per dilation (centre excluded), ``-|x - x_n| / (1e-8 + 0.1 *
  std)``, averaged over the 3 channels, softmax over the ``8 * len(dilations)`` neighbours;
  each step replaces the logits by the affinity-weighted sum of their 8 * len(dilations)
  neighbours (replicate padding, centre excluded). A population standard deviation moves the
  output by 2-5e-2; zero padding by 0.7-1.7.
* NACLIP's constructor defaults to PAMR on (10 steps, (8, 16)); its ``predict`` skips PAMR
  silently when it raises a RuntimeError (out of memory).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path

import torch

from tests.golden import SUBGRID_START, SUBGRID_STEP, remake_image

REPO = Path(__file__).resolve().parents[1]
BASES_DIR = REPO / "tests" / "golden_bases"

MODEL_SEED = 2024
EMBED_DIM = 32
VISION_CFG = {"image_size": 224, "layers": 3, "width": 128, "patch_size": 16, "head_width": 64}
TEXT_CFG = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2}
# attention input projections: std gain / sqrt(width); the vision one sets how peaked q q^T and
# k k^T are, hence how much NACLIP's Gaussian (at most +1 on a logit) matters
VISION_IN_PROJ_GAIN = 1.0
TEXT_IN_PROJ_GAIN = 1.5

SCLIP_CASES = ["sclip_voc21", "sclip_small", "sclip_pamr"]
NACLIP_CASES = ["naclip_reduced", "naclip_vanilla", "naclip_whole", "naclip_pamr"]
BASE_CASES = SCLIP_CASES + NACLIP_CASES
PAMR_CASES = ["pamr_8_16", "pamr_1_2"]

PROB_ATOL = 1e-4  # probabilities: the logits' rule (tests/golden.py)
PAMR_ATOL = 1e-5  # PAMR unit cases: every value

__all__ = [
    "BASES_DIR",
    "BASE_CASES",
    "CASE_SPECS",
    "MODEL_SEED",
    "NACLIP_CASES",
    "PAMR_ATOL",
    "PAMR_CASES",
    "PAMR_SPECS",
    "PROB_ATOL",
    "SCLIP_CASES",
    "SUBGRID_START",
    "SUBGRID_STEP",
    "build_tiny_clip",
    "load_base_case",
    "probs_agreement",
    "query_names",
    "remake_image",
    "remake_pamr_inputs",
    "state_sha256",
    "tensor_sha256",
    "tiny_state_dict",
]


def _std(key: str, shape: torch.Size) -> tuple[float, float]:
    """``(mean, std)`` of the random values of one tensor of the tiny CLIP."""
    fan_in = shape[-1] if len(shape) > 1 else 1
    if key == "logit_scale":
        return 4.6052, 0.0
    if key.endswith("conv1.weight"):
        return 0.0, 3.0 / (shape[1] * shape[2] * shape[3]) ** 0.5
    if ".ln_" in key or key.startswith(("ln_", "visual.ln_")):
        return (1.0, 0.1) if key.endswith("weight") else (0.0, 0.1)
    if key.endswith("positional_embedding") or key.endswith("class_embedding"):
        return 0.0, 1.0
    if key == "token_embedding.weight":
        return 0.0, 1.0
    if key.endswith("proj") or key == "text_projection":  # visual.proj, text_projection
        return 0.0, shape[0] ** -0.5
    if key.endswith("in_proj_weight"):
        gain = VISION_IN_PROJ_GAIN if key.startswith("visual.") else TEXT_IN_PROJ_GAIN
        return 0.0, gain * fan_in**-0.5
    if key.endswith("bias"):
        return 0.0, 0.1
    return 0.0, fan_in**-0.5  # out_proj, c_fc, c_proj


def _model_skeleton():
    import open_clip

    with torch.random.fork_rng(devices=[]):  # open_clip's own init draws from the global RNG
        return open_clip.model.CLIP(
            embed_dim=EMBED_DIM, vision_cfg=VISION_CFG, text_cfg=TEXT_CFG, quick_gelu=True
        )


def tiny_state_dict(seed: int = MODEL_SEED) -> OrderedDict[str, torch.Tensor]:
    """The tiny CLIP's weights from ``seed``: float32 values that are exact in float16, drawn
    key by key in sorted order from one CPU generator (the same keys and shapes serve open_clip's
    ``CLIP`` and OpenAI's ``build_model``)."""
    shapes = {k: v.shape for k, v in _model_skeleton().state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    out = OrderedDict()
    for key in sorted(shapes):
        mean, std = _std(key, shapes[key])
        value = mean + std * torch.randn(shapes[key], generator=g)
        out[key] = value.half().float()
    return OrderedDict((k, out[k]) for k in shapes)


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the keys, shapes, dtypes and bytes of a state dict (sorted keys)."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def build_tiny_clip(seed: int = MODEL_SEED):
    """``(open_clip CLIP in eval mode, its state dict)`` of the tiny model."""
    model = _model_skeleton()
    state = tiny_state_dict(seed)
    model.load_state_dict(state)
    return model.eval(), state


# ----------------------------------------------------------------------------- the cases
VOC_LIKE = [
    "sky; wall; tree; grass; road; water",
    "aeroplane; airplane",
    "bicycle",
    "bird",
    "boat; ship",
    "cat; kitten",
    "person; man",
]
SHORT = ["background", "cat", "dog; puppy", "car", "tree; bush", "person"]


def _sclip(**kw) -> dict:
    base = {
        "base": "sclip",
        "kv_extension": False,
        "crop": 224,
        "stride": 112,
        "whole_image": False,
        "logit_scale": 40.0,
        "prob_threshold": 0.0,
        "background_index": 0,
        "area_threshold": 0.0,
        "pamr_steps": 0,
        "pamr_dilations": (8, 16),
    }
    return {**base, **kw}


def _naclip(**kw) -> dict:
    return _sclip(**{"base": "naclip", "gaussian_std": 5.0, "naclip_arch": "reduced", **kw})


def _image(seed: int, h: int, w: int, out: tuple[int, int] | None = None) -> dict:
    return {"seed": seed, "H": h, "W": w, "output_size": out or (h, w), "model_seed": MODEL_SEED}


CASE_SPECS = {
    "sclip_voc21": {
        "class_lines": VOC_LIKE,
        "settings": _sclip(logit_scale=65.0, prob_threshold=0.1, area_threshold=0.1),
        "params": _image(20, 240, 360, (270, 400)),
    },
    "sclip_small": {
        "class_lines": SHORT,
        "settings": _sclip(),
        "params": _image(12, 205, 330),
    },
    "sclip_pamr": {
        "class_lines": SHORT,
        "settings": _sclip(pamr_steps=10, pamr_dilations=(8, 16)),
        "params": _image(13, 224, 336),
    },
    "naclip_reduced": {
        "class_lines": VOC_LIKE,
        "settings": _naclip(prob_threshold=0.1),
        "params": _image(21, 240, 360),
    },
    "naclip_vanilla": {
        "class_lines": SHORT,
        "settings": _naclip(gaussian_std=3.0, naclip_arch="vanilla"),
        "params": _image(22, 240, 336),
    },
    "naclip_whole": {
        "class_lines": SHORT,
        "settings": _naclip(whole_image=True),
        "params": _image(23, 260, 410),
    },
    "naclip_pamr": {
        "class_lines": VOC_LIKE,
        "settings": _naclip(prob_threshold=0.1, pamr_steps=10, pamr_dilations=(8, 16)),
        "params": _image(24, 224, 336, (256, 384)),
    },
}

PAMR_SPECS = {
    "pamr_8_16": {"seed": 31, "H": 60, "W": 80, "C": 4, "steps": 10, "dilations": (8, 16)},
    "pamr_1_2": {"seed": 32, "H": 60, "W": 80, "C": 4, "steps": 3, "dilations": (1, 2)},
}


def remake_pamr_inputs(params: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """A PAMR unit case's ``(image 1 x 3 x H x W, logits 1 x C x H x W)`` from its settings."""
    image = remake_image(params)
    g = torch.Generator().manual_seed(params["seed"] + 2)
    noise = torch.randn(1, params["C"], params["H"], params["W"], generator=g)
    return image, torch.nn.functional.avg_pool2d(noise, 5, 1, 2) * 2


def tensor_sha256(*tensors: torch.Tensor) -> str:
    """SHA-256 over the shapes and float32 bytes of some tensors."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().float().contiguous()
        h.update(f"{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def load_base_case(case: str, directory: Path = BASES_DIR) -> dict:
    """One SCLIP / NACLIP case with its ``image`` remade (``1 x 3 x H x W``)."""
    g = torch.load(Path(directory) / f"{case}.pt", weights_only=True)
    g["image"] = remake_image(g["params"])
    return g


def query_names(class_lines: list[str]) -> list[str]:
    """The query names of class lines in glaclip's syntax, in order."""
    return [name for line in class_lines for name in line.split("; ")]


def probs_agreement(scores: torch.Tensor, case: dict) -> tuple[float, float]:
    """``(fraction of probabilities within PROB_ATOL, largest difference)`` on the case's
    subgrid, for ``C x H0 x W0`` class probabilities."""
    s, t = case["subgrid"]["start"], case["subgrid"]["step"]
    ours = scores.detach().cpu().float()[:, s::t, s::t]
    ref = case["probs"]
    assert ours.shape == ref.shape, f"probabilities {tuple(ours.shape)} vs {tuple(ref.shape)}"
    diff = (ours - ref).abs()
    return (diff < PROB_ATOL).float().mean().item(), diff.max().item()
