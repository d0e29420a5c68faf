"""SegFormer (Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with
Transformers", NeurIPS 2021): the Mix Transformer encoder MiT-B0..B5 and the all-MLP decoder, with
the parameter names of Hugging Face ``SegformerForSemanticSegmentation`` checkpoints on the Hub
(transformers 4 layout), so ``nvidia/segformer-b0-finetuned-*`` and ``nvidia/mit-b0`` files load
with no missing keys.

Encoder (four stages ``i``; widths ``C_i``, depths, heads, reduction ratios ``R_i`` per variant):

* overlapping patch embedding ``segformer.encoder.patch_embeddings.{i}``: a ``proj`` conv (kernel
  7 stride 4, then kernel 3 stride 2; padding kernel // 2) and a ``layer_norm`` over the tokens;
* ``segformer.encoder.block.{i}.{j}``: ``x += Attn(LN_1(x))``, ``x += MixFFN(LN_2(x))``. Efficient
  self-attention: ``softmax(Q K^T / sqrt(d)) V`` per head, with ``K, V`` computed from the tokens
  reduced by an ``R_i x R_i`` stride-``R_i`` conv ``attention.self.sr`` and ``attention.self.layer_norm``
  (absent where ``R_i = 1``); ``attention.self.query/key/value``, ``attention.output.dense``.
  MixFFN: ``mlp.dense2(GELU(mlp.dwconv.dwconv(mlp.dense1(x))))`` with a 3x3 depthwise conv on the
  token grid (``mlp_ratio`` 4). Stochastic depth (``drop_path``, default 0.1, linear over the blocks)
  acts only in training;
* ``segformer.encoder.layer_norm.{i}`` closes each stage; its map (stride 4, 8, 16, 32) is a level.

Decoder ``decode_head``: each level through ``linear_c.{i}.proj`` (a Linear to ``D`` = 256 for B0/B1,
768 otherwise), bilinearly resized (``align_corners=False``) to stride 4, concatenated from the
deepest level to the shallowest, ``linear_fuse`` (1x1 conv, no bias) + ``batch_norm`` + ReLU, dropout
(0.1) and the ``classifier`` 1x1 conv. The model upsamples its stride-4 logits to the input size.

LayerNorms use eps 1e-5 and GELU is exact, as the Hub models. Other layouts of the same weights are
renamed by :func:`to_hub_names` (see there): transformers 5, the original SegFormer release
(``patch_embed1``, ``block1``, ``attn.kv``), and mmsegmentation's ``MixVisionTransformer`` encoder
(``backbone.layers.*``).
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import EdgedaError

# variant: (widths, depths, decoder width); heads (1, 2, 5, 8), reduction (8, 4, 2, 1) for all.
MIT = {
    "b0": ((32, 64, 160, 256), (2, 2, 2, 2), 256),
    "b1": ((64, 128, 320, 512), (2, 2, 2, 2), 256),
    "b2": ((64, 128, 320, 512), (3, 4, 6, 3), 768),
    "b3": ((64, 128, 320, 512), (3, 4, 18, 3), 768),
    "b4": ((64, 128, 320, 512), (3, 8, 27, 3), 768),
    "b5": ((64, 128, 320, 512), (3, 6, 40, 3), 768),
}
HEADS, REDUCTION, PATCH, STRIDE, MLP_RATIO = (1, 2, 5, 8), (8, 4, 2, 1), (7, 3, 3, 3), (4, 2, 2, 2), 4


def _tokens_to_map(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth (Huang et al. 2016): zero a sample's residual branch with probability ``p``, scale by ``1 / (1 - p)``."""
    if p == 0.0 or not training:
        return x
    keep = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(1 - p)
    return x * keep / (1 - p)


class PatchEmbedding(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(cin, cout, k, stride, k // 2)
        self.layer_norm = nn.LayerNorm(cout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[2], x.shape[3]
        return self.layer_norm(x.flatten(2).transpose(1, 2)), h, w


class EfficientSelfAttention(nn.Module):
    """Multi-head attention whose keys and values come from an ``R x R``-reduced token grid."""

    def __init__(self, c: int, heads: int, reduction: int):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = nn.Linear(c, c), nn.Linear(c, c), nn.Linear(c, c)
        self.reduction = reduction
        if reduction > 1:
            self.sr = nn.Conv2d(c, c, reduction, reduction)
            self.layer_norm = nn.LayerNorm(c)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # (N, L, C) -> (N, heads, L, C / heads)
        return x.reshape(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        q = self._split(self.query(x))
        kv = x
        if self.reduction > 1:
            kv = self.layer_norm(self.sr(_tokens_to_map(x, h, w)).flatten(2).transpose(1, 2))
        k, v = self._split(self.key(kv)), self._split(self.value(kv))
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        out = (attn @ v).transpose(1, 2)
        return out.reshape(out.shape[0], out.shape[1], -1)


class SelfOutput(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.dense = nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x)


class Attention(nn.Module):
    def __init__(self, c: int, heads: int, reduction: int):
        super().__init__()
        self.self = EfficientSelfAttention(c, heads, reduction)
        self.output = SelfOutput(c)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.output(self.self(x, h, w))


class DepthwiseConv(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.dwconv = nn.Conv2d(c, c, 3, 1, 1, groups=c)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.dwconv(_tokens_to_map(x, h, w)).flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    def __init__(self, c: int, hidden: int):
        super().__init__()
        self.dense1 = nn.Linear(c, hidden)
        self.dwconv = DepthwiseConv(hidden)
        self.dense2 = nn.Linear(hidden, c)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.dense2(F.gelu(self.dwconv(self.dense1(x), h, w)))


class Block(nn.Module):
    def __init__(self, c: int, heads: int, reduction: int, drop_path: float):
        super().__init__()
        self.layer_norm_1 = nn.LayerNorm(c)
        self.attention = Attention(c, heads, reduction)
        self.layer_norm_2 = nn.LayerNorm(c)
        self.mlp = MixFFN(c, c * MLP_RATIO)
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + drop_path(self.attention(self.layer_norm_1(x), h, w), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.layer_norm_2(x), h, w), self.drop_path, self.training)


class MixTransformer(nn.Module):
    """The MiT encoder (``segformer.encoder``): patch embeddings, blocks and a LayerNorm per stage."""

    def __init__(self, widths, depths, channels: int = 3, drop_path: float = 0.1):
        super().__init__()
        total = sum(depths)
        rates = [drop_path * i / max(total - 1, 1) for i in range(total)]
        self.patch_embeddings = nn.ModuleList(
            PatchEmbedding(channels if i == 0 else widths[i - 1], widths[i], PATCH[i], STRIDE[i]) for i in range(4))
        blocks, start = [], 0
        for i in range(4):
            blocks.append(nn.ModuleList(Block(widths[i], HEADS[i], REDUCTION[i], rates[start + j]) for j in range(depths[i])))
            start += depths[i]
        self.block = nn.ModuleList(blocks)
        self.layer_norm = nn.ModuleList(nn.LayerNorm(c) for c in widths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        levels = []
        for embed, blocks, norm in zip(self.patch_embeddings, self.block, self.layer_norm):
            x, h, w = embed(x)
            for block in blocks:
                x = block(x, h, w)
            x = _tokens_to_map(norm(x), h, w)
            levels.append(x)
        return levels


class SegformerEncoder(nn.Module):
    """``segformer``: wraps the MiT as ``encoder`` (the Hub names) and follows the dense encoder
    contract: levels ``stage1`` .. ``stage4`` (strides 4, 8, 16, 32) and ``out`` (= ``stage4``)."""

    def __init__(self, variant: str = "b0", channels: int = 3, drop_path: float = 0.1):
        super().__init__()
        if variant not in MIT:
            raise EdgedaError(f"unknown SegFormer variant {variant!r}; valid: {', '.join(MIT)}")
        if isinstance(drop_path, bool) or not isinstance(drop_path, (int, float)) or not 0 <= drop_path < 1:
            raise EdgedaError(f"segformer drop_path must be in [0, 1), not {drop_path!r}")
        widths, depths, _ = MIT[variant]
        self.encoder = MixTransformer(widths, depths, channels, float(drop_path))
        self.feature_info = {f"stage{i + 1}": {"channels": c, "stride": 4 * 2 ** i} for i, c in enumerate(widths)}
        self.feature_info["out"] = dict(self.feature_info["stage4"])
        self.out_channels = widths[-1]
        _init_transformer(self)

    def forward_intermediates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        levels = self.encoder(x)
        out = {f"stage{i + 1}": t for i, t in enumerate(levels)}
        out["out"] = levels[-1]
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)[-1]


class MLPProjection(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.proj = nn.Linear(cin, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, h, w) -> (N, D, h, w)
        return self.proj(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(x.shape[0], -1, x.shape[2], x.shape[3])


class SegformerDecodeHead(nn.Module):
    """The all-MLP decoder ``decode_head`` (see the module docstring); takes the encoder's levels."""

    def __init__(self, widths, num_outputs: int, dim: int, dropout: float = 0.1):
        super().__init__()
        self.linear_c = nn.ModuleList(MLPProjection(c, dim) for c in widths)
        self.linear_fuse = nn.Conv2d(len(widths) * dim, dim, 1, bias=False)
        self.batch_norm = nn.BatchNorm2d(dim)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(dim, num_outputs, 1)
        _init_transformer(self)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        levels = [feats[f"stage{i + 1}"] for i in range(len(self.linear_c))]
        size = levels[0].shape[-2:]
        maps = [F.interpolate(mlp(t), size=size, mode="bilinear", align_corners=False) for mlp, t in zip(self.linear_c, levels)]
        x = F.relu(self.batch_norm(self.linear_fuse(torch.cat(maps[::-1], dim=1))))
        return self.classifier(self.dropout(x))


def _init_transformer(module: nn.Module) -> None:
    """The Hub models' initialisation: linears and convs N(0, 0.02) with zero bias, norms ones/zeros."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def decoder_width(variant: str) -> int:
    return MIT[variant][2]


def widths_of(variant: str) -> tuple[int, ...]:
    return MIT[variant][0]


# ------------------------------------------------------------------------------ other layouts

_ENC = "segformer.encoder."
# transformers 5 -> Hub (transformers 4) names, applied in order to each key.
_TRANSFORMERS5 = (
    (r"^segformer\.stages\.(\d+)\.patch_embeddings\.", _ENC + r"patch_embeddings.\1."),
    (r"^segformer\.stages\.(\d+)\.blocks\.", _ENC + r"block.\1."),
    (r"^segformer\.stages\.(\d+)\.layer_norm\.", _ENC + r"layer_norm.\1."),
    (r"\.attention\.q_proj\.", ".attention.self.query."),
    (r"\.attention\.k_proj\.", ".attention.self.key."),
    (r"\.attention\.v_proj\.", ".attention.self.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.attention\.sequence_reduction\.sequence_reduction\.", ".attention.self.sr."),
    (r"\.attention\.sequence_reduction\.layer_norm\.", ".attention.self.layer_norm."),
    (r"\.mlp\.fc1\.", ".mlp.dense1."),
    (r"\.mlp\.fc2\.", ".mlp.dense2."),
    (r"\.layernorm_before\.", ".layer_norm_1."),
    (r"\.layernorm_after\.", ".layer_norm_2."),
    (r"^decode_head\.linear_projections\.", "decode_head.linear_c."),
)


def _minus_one(m: re.Match) -> str:
    return str(int(m.group(1)) - 1)


def _original_key(key: str) -> str | None:
    """The original SegFormer release's name (NVlabs, ``backbone.`` optional) -> the Hub name (None: not that layout).
    ``kv`` (keys and values stacked) is split by the caller."""
    k = re.sub(r"^(backbone\.)?", "", key) if not key.startswith("decode_head.") else key
    rules = (
        (r"^patch_embed(\d)\.proj\.", lambda m: f"{_ENC}patch_embeddings.{_minus_one(m)}.proj."),
        (r"^patch_embed(\d)\.norm\.", lambda m: f"{_ENC}patch_embeddings.{_minus_one(m)}.layer_norm."),
        (r"^block(\d)\.", lambda m: f"{_ENC}block.{_minus_one(m)}."),
        (r"^norm(\d)\.", lambda m: f"{_ENC}layer_norm.{_minus_one(m)}."),
        (r"^decode_head\.linear_c(\d)\.", lambda m: f"decode_head.linear_c.{_minus_one(m)}."),
    )
    for pattern, repl in rules:
        new = re.sub(pattern, repl, k)
        if new != k:
            k = new
            break
    else:
        fixed = {"decode_head.linear_fuse.conv.": "decode_head.linear_fuse.", "decode_head.linear_fuse.bn.": "decode_head.batch_norm.",
                 "decode_head.linear_pred.": "decode_head.classifier."}
        for old, new in fixed.items():
            if k.startswith(old):
                return new + k[len(old):]
        return None
    for old, new in ((".norm1.", ".layer_norm_1."), (".norm2.", ".layer_norm_2."), (".attn.q.", ".attention.self.query."),
                     (".attn.kv.", ".attention.self.kv."), (".attn.proj.", ".attention.output.dense."),
                     (".attn.sr.", ".attention.self.sr."), (".attn.norm.", ".attention.self.layer_norm."),
                     (".mlp.fc1.", ".mlp.dense1."), (".mlp.fc2.", ".mlp.dense2.")):
        k = k.replace(old, new)
    return k


def _mmseg1_key(key: str) -> str | None:
    """mmsegmentation ``MixVisionTransformer`` names -> Hub names (None: not that layout).
    ``in_proj`` (queries, keys, values stacked) is split by the caller."""
    m = re.match(r"^(?:backbone\.)?layers\.(\d+)\.(\d)\.(.*)$", key)
    if m is None:
        return None
    i, part, rest = m.group(1), m.group(2), m.group(3)
    if part == "0":
        name, _, tail = rest.partition(".")
        base = {"projection": "proj", "norm": "layer_norm"}.get(name)
        return f"{_ENC}patch_embeddings.{i}.{base}.{tail}" if base else None
    if part == "2":
        return f"{_ENC}layer_norm.{i}.{rest}"
    j, tail = rest.split(".", 1)
    for old, new in (("norm1.", "layer_norm_1."), ("norm2.", "layer_norm_2."), ("attn.attn.in_proj_", "attention.self.qkv."),
                     ("attn.attn.out_proj.", "attention.output.dense."), ("attn.sr.", "attention.self.sr."),
                     ("attn.norm.", "attention.self.layer_norm."), ("ffn.layers.0.", "mlp.dense1."),
                     ("ffn.layers.1.", "mlp.dwconv.dwconv."), ("ffn.layers.4.", "mlp.dense2.")):
        if tail.startswith(old):
            return f"{_ENC}block.{i}.{j}.{new}{tail[len(old):]}"
    return None


def to_hub_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the tensors of another SegFormer layout to the Hub (transformers 4) names; other keys pass unchanged.

    * transformers 5: ``segformer.stages.{i}.blocks.{j}.attention.q_proj`` -> ``segformer.encoder.block.{i}.{j}.attention.self.query``
      (``k_proj``/``v_proj`` -> ``key``/``value``, ``o_proj`` -> ``attention.output.dense``,
      ``sequence_reduction.sequence_reduction``/``.layer_norm`` -> ``self.sr``/``self.layer_norm``,
      ``layernorm_before``/``_after`` -> ``layer_norm_1``/``_2``, ``mlp.fc1``/``fc2`` -> ``mlp.dense1``/``dense2``),
      ``segformer.stages.{i}.patch_embeddings``/``layer_norm`` -> ``segformer.encoder.patch_embeddings.{i}``/``layer_norm.{i}``,
      ``decode_head.linear_projections`` -> ``decode_head.linear_c``;
    * the original SegFormer release (``backbone.`` optional): ``patch_embed{n}`` ->
      ``patch_embeddings.{n-1}``, ``block{n}.{j}`` -> ``block.{n-1}.{j}`` with ``norm1``/``norm2``,
      ``attn.q``, ``attn.kv`` (split in half: keys, then values), ``attn.proj``, ``attn.sr``,
      ``attn.norm``, ``mlp.fc1``/``fc2``; ``norm{n}`` -> ``layer_norm.{n-1}``; ``decode_head.linear_c{n}``
      -> ``linear_c.{n-1}``, ``linear_fuse.conv``/``.bn`` -> ``linear_fuse``/``batch_norm``,
      ``linear_pred`` -> ``classifier`` (``conv_seg`` is unused);
    * mmsegmentation's ``MixVisionTransformer`` encoder (``backbone.layers.{i}.{0: patch embedding ``projection``/``norm``,
      1: blocks, 2: norm}``; ``attn.attn.in_proj_*`` split in thirds, ``attn.attn.out_proj``,
      ``ffn.layers.0/1/4`` as 1x1 convs -> linears). Its decoder (``SegformerHead``: convs with
      BatchNorm) is another architecture and is not mapped.
    """
    out: dict[str, torch.Tensor] = {}
    for key, t in state.items():
        new = key
        if key.startswith("segformer.stages.") or key.startswith("decode_head.linear_projections."):
            for pattern, repl in _TRANSFORMERS5:
                new = re.sub(pattern, repl, new)
        elif not key.startswith("segformer."):
            new = _original_key(key) or _mmseg1_key(key) or key
        if ".attention.self.kv." in new:  # keys then values, stacked on the output axis
            half = t.shape[0] // 2
            out[new.replace(".kv.", ".key.")], out[new.replace(".kv.", ".value.")] = t[:half], t[half:]
        elif ".attention.self.qkv." in new:  # nn.MultiheadAttention's in_proj_weight / in_proj_bias
            third = t.shape[0] // 3
            suffix = new.rsplit(".", 1)[1]
            base = new.rsplit(".", 2)[0].replace(".qkv", "")
            for n, part in zip(("query", "key", "value"), (t[:third], t[third:2 * third], t[2 * third:])):
                out[f"{base}.{n}.{suffix}"] = part
        elif new.endswith(("mlp.dense1.weight", "mlp.dense2.weight")) and t.dim() == 4:  # 1x1 convs -> linears
            out[new] = t.flatten(1)
        else:
            out[new] = t
    return out
