"""Prompts encoded over their own tokens only: whether an open_clip text tower gives the same
embedding from the tokens up to each prompt's end-of-text token as from the whole context
(``text_truncation_is_exact``, decided from the tower's modules), and that shorter encoding
(``encode_text_truncated``), several times faster for short class names.
"""

from __future__ import annotations

import torch

__all__ = ["encode_text_truncated", "pool_positions", "text_truncation_is_exact"]


def pool_positions(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor | None:
    """The token index each prompt's embedding is taken from (``P`` int64), or None when the
    pooling does not take one token chosen from the tokens."""
    pool = getattr(model, "text_pool_type", None)
    if pool == "argmax":  # open_clip: the end-of-text token has the largest id
        return tokens.argmax(dim=-1)
    eos = getattr(model, "text_eos_id", None)
    if pool == "eos" and eos is not None:
        return (tokens == eos).int().argmax(dim=-1)
    return None


def text_truncation_is_exact(model: torch.nn.Module) -> bool:
    """Whether ``model.encode_text`` gives the same embedding from the tokens up to each
    prompt's pooled (end-of-text) token as from the whole context.

    True for an open_clip ``CLIP`` text tower run by ``CLIP.encode_text`` whose attention
    mask is causal (token ``i`` sees tokens ``0..i``), whose blocks mix tokens only through
    that masked attention, and whose pooling takes one token: ``argmax`` (end-of-text) or
    ``eos``. Decided from the model's modules, mask and pooling, not from its name; any other
    text tower (``CustomTextCLIP``, Hugging Face text towers, bidirectional or ``last``
    pooling) is encoded over the whole context.
    """
    try:
        from open_clip.model import CLIP
        from open_clip.transformer import (
            Attention,
            CustomResidualAttentionBlock,
            ResidualAttentionBlock,
            Transformer,
            text_global_pool,  # noqa: F401  (used by the truncated path)
        )
    except ImportError:
        return False
    if not isinstance(model, CLIP) or getattr(type(model), "encode_text", None) is not (
        CLIP.encode_text
    ):
        return False
    transformer = getattr(model, "transformer", None)
    blocks = getattr(transformer, "resblocks", None)
    if not isinstance(transformer, Transformer) or blocks is None or len(blocks) == 0:
        return False
    if type(transformer).forward is not Transformer.forward:
        return False
    attention_of = {ResidualAttentionBlock: torch.nn.MultiheadAttention}
    attention_of[CustomResidualAttentionBlock] = Attention
    for block in blocks:
        if attention_of.get(type(block)) is not type(getattr(block, "attn", None)):
            return False
    modules = (model, transformer, *blocks, *(b.attn for b in blocks))
    if any("forward" in vars(m) for m in modules):  # a forward replaced on the instance
        return False
    if not isinstance(getattr(model, "token_embedding", None), torch.nn.Embedding):
        return False
    if not isinstance(getattr(model, "ln_final", None), torch.nn.Module):
        return False
    n = _causal_context(model)
    if n is None:
        return False
    probe = torch.zeros(1, n, dtype=torch.long, device="cpu")  # tokens live on the CPU
    return pool_positions(model, probe) is not None


def _causal_context(model: torch.nn.Module) -> int | None:
    """The context length ``n`` of a model whose attention mask is the causal ``n x n`` mask
    of its ``n`` positional embeddings (``-inf`` above the diagonal, 0 elsewhere), or None."""
    pos = getattr(model, "positional_embedding", None)
    mask = getattr(model, "attn_mask", None)
    if not isinstance(pos, torch.Tensor) or pos.ndim != 2:
        return None
    if not isinstance(mask, torch.Tensor) or not mask.is_floating_point():
        return None
    n = pos.shape[0]
    if mask.shape != (n, n):
        return None
    causal = torch.full((n, n), float("-inf"), dtype=mask.dtype, device=mask.device).triu_(1)
    if not torch.equal(mask, causal):
        return None
    return n


def encode_text_truncated(
    model: torch.nn.Module, tokens: torch.Tensor, length: int | None = None
) -> torch.Tensor:
    """``model.encode_text(tokens)`` over the first ``L`` tokens only (``L``: the last pooled
    position of the batch, plus one), through open_clip's own modules.

    Only for a model where ``text_truncation_is_exact`` holds; there it equals
    ``model.encode_text(tokens)`` up to float rounding (about 2e-7 after L2 normalisation).

    Args:
        tokens: ``P x context`` int64 token ids from the model's tokenizer.
        length: ``L``, where the caller knows it (read from tokens on the CPU, so that no
            value is read back from the device).

    Returns:
        ``P x E`` unnormalised text embeddings in the text tower's dtype.
    """
    from open_clip.transformer import text_global_pool

    if length is None:
        positions = pool_positions(model, tokens)
        if positions is None:
            raise ValueError("the model's text pooling does not take one token: use encode_text")
        length = int(positions.max()) + 1
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(
        x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None)
    )
    projection = model.text_projection
    if projection is not None:
        x = projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
    return x
