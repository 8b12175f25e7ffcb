"""The one explicit-attention ViT every stage uses.

``ExplicitViT`` re-implements open_clip's ``VisionTransformer`` (CLS-token pooling) with split-head attention through
``F.scaled_dot_product_attention`` — no ``nn.MultiheadAttention`` and no fast path, so it exports to ONNX as is.
Its weights are copied out of an open_clip model (``ExplicitViT.from_open_clip``) and it owns them, so a saved
``ExplicitViT`` reloads without open_clip.

Notation (shapes): B batch, N = 1 + patches tokens, W width, H heads, Dh = W / H head width, D output dim.
Block l:  x <- x + ls_1(Attn(ln_1(x))),  x <- x + ls_2(MLP(ln_2(x))).
Output:   y = ln_post(x_final[:, 0]) @ proj   (== open_clip ``encode_image(normalize=False)``).

The last block only needs the CLS query (nothing reads the other tokens after it), so it computes a single query row,
and folds the key and value projections into that query (``ExplicitAttention.cls_head_outputs``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clip_debias.toolchain.errors import ClipDebiasError


@dataclass(frozen=True)
class TowerConfig:
    """Everything that fixes the architecture of a plain CLS-token ViT image tower."""

    image_size: tuple[int, int]
    patch_size: tuple[int, int]
    width: int
    layers: int
    heads: int
    mlp_width: int
    output_dim: int | None  # None: no projection, y = ln_post(x_cls)
    act: str = "gelu"  # "gelu" | "quick_gelu"
    layer_scale: bool = False
    ln_pre: bool = True
    eps: float = 1e-5
    # set for a timm tower (``models/timm_tower.py``): the open_clip model config that rebuilds its architecture; the
    # fields above then only describe it (ExplicitViT never reads such a config)
    timm: str | None = None

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def embed_dim(self) -> int:
        return self.output_dim if self.output_dim is not None else self.width

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (gh, gw)."""
        return self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1]

    @property
    def tokens(self) -> int:
        """N = 1 + gh * gw (CLS + patches)."""
        return 1 + self.grid[0] * self.grid[1]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TowerConfig":
        d = dict(d)
        d["image_size"] = tuple(d["image_size"])
        d["patch_size"] = tuple(d["patch_size"])
        return cls(**d)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x), OpenAI CLIP's activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class LayerScale(nn.Module):
    """Per-channel scale gamma [W] (CaiT); linear, so it distributes over the head terms."""

    def __init__(self, width: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


def split_qkv(qkv: torch.Tensor, tokens: int, heads: int,
              head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, N, 3W] = [q | k | v] (head h = columns h*Dh:(h+1)*Dh of each) -> q, k, v, each [B, H, N, Dh]. The reshape
    is written with constants and -1 for the batch (no run-time shape ops in an exported graph)."""
    q, k, v = qkv.reshape(-1, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v


class OrtAttention(torch.autograd.Function):
    """x [B, N, W] -> per-head softmax(q k^T / sqrt(Dh)) v, heads concatenated [B, N, W], with [q | k | v] = x @ w + b
    (w [W, 3W], b [3W]).

    Computed with SDPA in torch; exported as ONNX Runtime's ``com.microsoft::Attention``: the QKV projection, its bias
    and the fused attention kernel (flash / memory-efficient on CUDA) in one op, so the graph holds no Split of q, k, v
    and no separate bias Add. Only used while exporting with ``fused_attention`` (see ``ExplicitAttention.onnx_fused``),
    for the full-query layers: the graph then runs on ONNX Runtime only."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, heads: int) -> torch.Tensor:
        bsz, n, width = x.shape
        o = F.scaled_dot_product_attention(*split_qkv(x @ w + b, n, heads, width // heads))  # [B, H, N, Dh]
        return o.transpose(1, 2).reshape(bsz, n, width)

    @staticmethod
    def symbolic(g: object, x: object, w: object, b: object, heads: int) -> object:
        return g.op("com.microsoft::Attention", x, w, b, num_heads_i=heads).setType(x.type())


class ExplicitAttention(nn.Module):
    """Multi-head self-attention written out: qkv projection, split heads, SDPA, merge, output projection.

    Static shapes: the token count N is fixed by the image size, so every reshape is written with constants and -1
    for the batch, and the softmax scale 1/sqrt(Dh) is a constant -- the exported graph computes no shapes at run
    time (no Shape/Gather/Concat chains that ONNX Runtime would place on the CPU)."""

    def __init__(self, width: int, heads: int, tokens: int):
        super().__init__()
        self.width, self.heads, self.head_dim, self.tokens = width, heads, width // heads, tokens
        self.scale = 1.0 / math.sqrt(self.head_dim)  # SDPA's default, as a constant
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.onnx_fused = False  # set by the exporter: emit OrtAttention while exporting

    def _check_tokens(self, x: torch.Tensor) -> None:
        if not torch.jit.is_tracing() and x.shape[1] != self.tokens:
            raise ValueError(f"attention expects {self.tokens} tokens, got {x.shape[1]}")

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, N, W] (already ln_1-normalized) -> q, k, v, each [B, H, N, Dh]."""
        self._check_tokens(x)
        return split_qkv(self.qkv(x), self.tokens, self.heads, self.head_dim)

    def head_outputs(self, x: torch.Tensor, cls_only: bool = False) -> torch.Tensor:
        """Per-head attention outputs before the output projection: [B, H, Nq, Dh], Nq = 1 if ``cls_only`` else N."""
        if cls_only:
            return self.cls_head_outputs(x)
        if self.onnx_fused and torch.onnx.is_in_onnx_export():
            self._check_tokens(x)
            o = OrtAttention.apply(x, self.qkv.weight.t(), self.qkv.bias, self.heads)
            return o.reshape(-1, self.tokens, self.heads, self.head_dim).transpose(1, 2)
        return F.scaled_dot_product_attention(*self.qkv_heads(x), scale=self.scale)

    def cls_head_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, N, W] -> the CLS query's per-head outputs [B, H, 1, Dh], without projecting any key or value.

        With q_h = W_q,h x_0 + b_q,h the CLS query of head h (W_k,h, W_v,h [Dh, W] its rows of the key/value weights)
        and s = 1/sqrt(Dh):
          score_hj = s q_h . (W_k,h x_j + b_k,h) = (s W_k,h^T q_h) . x_j + c_h   (c_h is the same for every j, so
                                                                                 the softmax cancels it)
          o_h = sum_j a_hj (W_v,h x_j + b_v,h) = W_v,h (sum_j a_hj x_j) + b_v,h     (sum_j a_hj = 1)
        This costs O(H N W) where projecting the keys and values of all N tokens costs O(N W^2): 1/64 of the
        multiply-adds at ViT-B widths, and the same result up to float rounding."""
        self._check_tokens(x)
        w, h, dh = self.width, self.heads, self.head_dim
        w_k = self.qkv.weight[w:2 * w].reshape(h, dh, w)  # [H, Dh, W]; folds to a constant in ONNX, like w_v
        w_v = self.qkv.weight[2 * w:].reshape(h, dh, w)
        b_v = self.qkv.bias[2 * w:].reshape(h, 1, dh)
        # batched GEMMs without broadcasting: over heads [H, B, .] for the weights, over images [B, H, .] for tokens
        q = F.linear(x[:, 0], self.qkv.weight[:w], self.qkv.bias[:w]) * self.scale  # [B, W]
        q_folded = (q.reshape(-1, h, dh).transpose(0, 1) @ w_k).transpose(0, 1)  # [H, B, Dh] @ [H, Dh, W] -> [B, H, W]
        attn = (q_folded @ x.transpose(1, 2)).softmax(dim=-1)  # [B, H, W] @ [B, W, N] -> [B, H, N]
        mixed = (attn @ x).transpose(0, 1)  # [B, H, N] @ [B, N, W] -> [H, B, W]
        return (mixed @ w_v.transpose(1, 2) + b_v).transpose(0, 1).unsqueeze(2)  # [H, B, Dh] -> [B, H, 1, Dh]

    def merge(self, o: torch.Tensor, cls_only: bool = False) -> torch.Tensor:
        """[B, H, Nq, Dh] -> [B, Nq, W]: concatenate heads, then W_o o + b_o."""
        return self.out(o.transpose(1, 2).reshape(-1, 1 if cls_only else self.tokens, self.width))


class Mlp(nn.Module):
    """fc_out(act(fc_in(x))): [.., W] -> [.., mlp_width] -> [.., W]. The layer names are part of two contracts: the
    keys of a saved model (``blocks.i.mlp.fc_in.weight``) and the exported graph's node names that int8 quantization
    selects (``exporters.onnx_export.INT8_NODE_PATTERN``). Model directories written before the layers had names
    (``mlp.0`` / ``mlp.2``, an ``nn.Sequential``) still load: their keys are renamed on load."""

    LEGACY_KEYS = {"0.": "fc_in.", "2.": "fc_out."}

    def __init__(self, width: int, hidden: int, act: str):
        super().__init__()
        self.fc_in = nn.Linear(width, hidden)
        self.act = QuickGELU() if act == "quick_gelu" else nn.GELU()
        self.fc_out = nn.Linear(hidden, width)
        self.register_load_state_dict_pre_hook(self._rename_legacy_keys)

    @staticmethod
    def _rename_legacy_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        for old, new in Mlp.LEGACY_KEYS.items():
            for name in ("weight", "bias"):
                if prefix + old + name in state_dict and prefix + new + name not in state_dict:
                    state_dict[prefix + new + name] = state_dict.pop(prefix + old + name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.act(self.fc_in(x)))


class ExplicitBlock(nn.Module):
    """Pre-norm residual block. ``forward`` returns the new residual stream and what decomposition needs."""

    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.attn = ExplicitAttention(cfg.width, cfg.heads, cfg.tokens)
        self.ls_1 = LayerScale(cfg.width) if cfg.layer_scale else nn.Identity()
        self.ln_2 = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.mlp = Mlp(cfg.width, cfg.mlp_width, cfg.act)
        self.ls_2 = LayerScale(cfg.width) if cfg.layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor, cls_only: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, N, W] -> (x' [B, Nq, W], head outputs o [B, H, Nq, Dh], MLP delta [B, Nq, W])."""
        o = self.attn.head_outputs(self.ln_1(x), cls_only=cls_only)
        if cls_only:
            x = x[:, :1]
        x = x + self.ls_1(self.attn.merge(o, cls_only))
        mlp_delta = self.ls_2(self.mlp(self.ln_2(x)))
        return x + mlp_delta, o, mlp_delta


@dataclass
class TowerTrace:
    """What one forward leaves for decomposition (all CLS rows).

    pooled:    [B, D]        y = ln_post(x_cls) @ proj, unnormalized
    cls_final: [B, W]        final residual stream at CLS (input of ln_post)
    head_out:  {l: [B, H, Dh]} per-head attention outputs at the CLS query of each traced layer
    rest_resid:[B, W]        residual-space CLS sum of everything but the traced heads' ls_1(W_o o) outputs:
                             embedding term + all MLP deltas + attention deltas of untraced layers
                             + ls_1(b_o) of traced layers (each decomposition convention decides where b_o goes)
    """

    pooled: torch.Tensor
    cls_final: torch.Tensor
    head_out: dict[int, torch.Tensor]
    rest_resid: torch.Tensor


class ExplicitViT(nn.Module):
    """open_clip's CLS-token ViT image tower with explicit attention. ``forward(images) -> [B, D]`` unnormalized."""

    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        gh, gw = cfg.grid
        self.conv1 = nn.Conv2d(3, w, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(w))
        self.positional_embedding = nn.Parameter(torch.zeros(gh * gw + 1, w))
        self.ln_pre = nn.LayerNorm(w, eps=cfg.eps) if cfg.ln_pre else nn.Identity()
        self.blocks = nn.ModuleList(ExplicitBlock(cfg) for _ in range(cfg.layers))
        self.ln_post = nn.LayerNorm(w, eps=cfg.eps)
        self.proj = nn.Parameter(torch.zeros(w, cfg.output_dim)) if cfg.output_dim is not None else None
        self.onnx_fused = False  # set by the exporter: patch embedding as patchify + MatMul while exporting

    # ---- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_open_clip(cls, visual: nn.Module) -> "ExplicitViT":
        """Copy the weights of an open_clip ``VisionTransformer`` by parameter name (``OPEN_CLIP_PARAMETERS``);
        refuse anything that is not a plain CLS-token ViT (``tower_config_of``)."""
        cfg = tower_config_of(visual)
        tower = cls(cfg).to(dtype=visual.conv1.weight.dtype, device=visual.conv1.weight.device)
        source = dict(visual.named_parameters())
        sd = {ours: source[theirs].detach().clone() for ours, theirs in open_clip_parameter_names(cfg).items()}
        tower.load_state_dict(sd, strict=True)
        return tower.eval()

    # ---- forward ------------------------------------------------------------------------------------------------
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> ln_pre([cls; patches] + pos) [B, N, W]."""
        if not torch.jit.is_tracing() and tuple(images.shape[-2:]) != tuple(self.cfg.image_size):
            raise ClipDebiasError(f"images of size {list(images.shape[-2:])}; this tower takes "
                                  f"{list(self.cfg.image_size)} (preprocess with the model's transform)")
        if self.onnx_fused and torch.onnx.is_in_onnx_export():
            x = self.patchify(images) @ self.conv1.weight.reshape(self.cfg.width, -1).t()  # [B, gh*gw, W]
        else:
            x = self.conv1(images).reshape(-1, self.cfg.width, self.cfg.tokens - 1).transpose(1, 2)  # [B, gh*gw, W]
        pos = self.positional_embedding.to(x.dtype)
        first = self.class_embedding.to(x.dtype) + pos[0]  # cls + pos_0, [W]
        # the CLS row made batch-sized as 0 * (a patch row) + constant: no expand to a run-time batch size (no Shape
        # op), and a graph whose shapes ONNX inference follows ([batch, N, W] throughout); 0 * finite = 0 exactly
        x = torch.cat([x[:, :1] * 0 + first, x + pos[1:]], dim=1)
        return self.ln_pre(x)

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, gh*gw, 3*ph*pw], patches in row-major grid order, each flattened (channel, row, col)
        like a ``conv1`` weight row: ``conv1(images)`` is ``patchify(images) @ conv1.weight.reshape(W, -1).T``. The
        exporter's ONNX Runtime-only graph uses this form: one transpose of the input and a GEMM instead of a strided
        convolution with its layout conversions."""
        (gh, gw), (ph, pw) = self.cfg.grid, self.cfg.patch_size
        x = images.reshape(-1, 3, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(-1, gh * gw, 3 * ph * pw)

    def project(self, cls_final: torch.Tensor) -> torch.Tensor:
        """[B, W] -> y [B, D] = ln_post(x) @ proj."""
        y = self.ln_post(cls_final)
        return y @ self.proj if self.proj is not None else y

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> y [B, D], unnormalized (open_clip ``encode_image(normalize=False)``)."""
        x = self.embed(images)
        last = len(self.blocks) - 1
        for i, blk in enumerate(self.blocks):
            x = blk(x, cls_only=i == last)[0]
        return self.project(x[:, 0])

    def trace(self, images: torch.Tensor, layers: list[int] | tuple[int, ...]) -> TowerTrace:
        """Forward that also keeps the CLS-query head outputs of ``layers`` and the residual-space rest term."""
        wanted = set(layers)
        x = self.embed(images)
        rest = x[:, 0].clone()  # embedding term
        head_out: dict[int, torch.Tensor] = {}
        last = len(self.blocks) - 1
        for i, blk in enumerate(self.blocks):
            before = x[:, 0]
            x, o, mlp_delta = blk(x, cls_only=i == last)
            attn_delta = x[:, 0] - mlp_delta[:, 0] - before  # ls_1(W_o o_cls + b_o)
            if i in wanted:
                head_out[i] = o[:, :, 0]  # [B, H, Dh]
                rest = rest + blk.ls_1(blk.attn.out.bias).to(x.dtype) + mlp_delta[:, 0]
            else:
                rest = rest + attn_delta + mlp_delta[:, 0]
        cls_final = x[:, 0]
        return TowerTrace(self.project(cls_final), cls_final, head_out, rest)

    # ---- ln_post statistics (the per-head maps of each convention: ``toolchain.decompose.conventions``) ---------
    def ln_post_sigma(self, cls_final: torch.Tensor) -> torch.Tensor:
        """Per-sample LayerNorm std of the final CLS stream: sqrt(var(x) + eps) [B] (biased variance, as LN)."""
        return torch.sqrt(cls_final.var(dim=-1, unbiased=False) + self.cfg.eps)


# ExplicitBlock parameter <- open_clip block parameter (block-relative). open_clip's two attention layouts, its 3.x
# ``nn.MultiheadAttention`` and the ``Attention`` module that replaces it on its main branch, name these alike.
BLOCK_PARAMETERS: dict[str, str] = {
    "ln_1.weight": "ln_1.weight", "ln_1.bias": "ln_1.bias",
    "attn.qkv.weight": "attn.in_proj_weight", "attn.qkv.bias": "attn.in_proj_bias",  # [3W, W] = [W_q; W_k; W_v]
    "attn.out.weight": "attn.out_proj.weight", "attn.out.bias": "attn.out_proj.bias",
    "ln_2.weight": "ln_2.weight", "ln_2.bias": "ln_2.bias",
    "mlp.fc_in.weight": "mlp.c_fc.weight", "mlp.fc_in.bias": "mlp.c_fc.bias",
    "mlp.fc_out.weight": "mlp.c_proj.weight", "mlp.fc_out.bias": "mlp.c_proj.bias",
}
LAYER_SCALE_PARAMETERS: dict[str, str] = {"ls_1.gamma": "ls_1.gamma", "ls_2.gamma": "ls_2.gamma"}
# Parts of an open_clip block that change the math ExplicitBlock computes (block-relative attribute paths; refused
# when present and neither None nor nn.Identity), each with what it is. Names from open_clip's Attention /
# CustomResidualAttentionBlock (3.x and main) and torch's nn.MultiheadAttention.
MATH_CHANGES: dict[str, str] = {
    "attn.ln_q": "q/k LayerNorms (qk_norm)",
    "attn.ln_k": "q/k LayerNorms (qk_norm)",
    "attn.q_norm": "q/k norms (qk_norm)",
    "attn.k_norm": "q/k norms (qk_norm)",
    "attn.logit_scale": "scaled cosine attention (scaled_cosine_attn)",
    "attn.head_scale": "per-head output scales (scale_heads)",
    "attn.ln_inner": "a LayerNorm inside attention before out_proj (scale_attn_inner)",
    "ln_attn": "a LayerNorm on the attention output (scale_attn)",
    "mlp.ln": "a LayerNorm inside the MLP (scale_fc)",
    "ln_1_kv": "a key/value LayerNorm for cross-attention",
    "attn.bias_k": "learned key/value bias tokens (add_bias_kv)",
    "attn.bias_v": "learned key/value bias tokens (add_bias_kv)",
}
OPEN_CLIP_BLOCKS = ("ResidualAttentionBlock", "CustomResidualAttentionBlock")  # x + ls_1(attn(ln_1 x)), + ls_2(mlp)


def open_clip_parameter_names(cfg: TowerConfig) -> dict[str, str]:
    """ExplicitViT parameter name -> the open_clip ``VisionTransformer`` parameter it is copied from."""
    names = {k: k for k in ("conv1.weight", "class_embedding", "positional_embedding", "ln_post.weight",
                            "ln_post.bias")}
    if cfg.ln_pre:
        names.update({"ln_pre.weight": "ln_pre.weight", "ln_pre.bias": "ln_pre.bias"})
    if cfg.output_dim is not None:
        names["proj"] = "proj"
    per_block = {**BLOCK_PARAMETERS, **(LAYER_SCALE_PARAMETERS if cfg.layer_scale else {})}
    for i in range(cfg.layers):
        names.update({f"blocks.{i}.{ours}": f"transformer.resblocks.{i}.{theirs}"
                      for ours, theirs in per_block.items()})
    return names


def _part(module: nn.Module, path: str) -> Any:
    """The attribute at dotted ``path`` below ``module``, or None."""
    for name in path.split("."):
        module = getattr(module, name, None)
        if module is None:
            return None
    return module


def _check_block(i: int, blk: nn.Module, width: int, eps: float) -> tuple[int, int, str, bool]:
    """One open_clip block -> (heads, mlp_width, act, layer_scale), or one line saying what changes the math."""
    where = f"image tower block {i}"
    if type(blk).__name__ not in OPEN_CLIP_BLOCKS or not type(blk).__module__.startswith("open_clip"):
        raise ClipDebiasError(f"{where} is {type(blk).__name__}, not one of open_clip's pre-norm residual attention "
                              f"blocks ({', '.join(OPEN_CLIP_BLOCKS)}): its wiring is unknown")
    for path, what in MATH_CHANGES.items():
        part = _part(blk, path)
        if part is not None and not isinstance(part, nn.Identity):
            raise ClipDebiasError(f"{where} has {what} ({path}), which changes the block's math; clip-debias "
                                  "supports plain pre-norm blocks with softmax(q k^T / sqrt(Dh)) v attention")
    params = dict(blk.named_parameters())
    layer_scale = all(p in params for p in LAYER_SCALE_PARAMETERS.values())
    needed = {*BLOCK_PARAMETERS.values(), *(LAYER_SCALE_PARAMETERS.values() if layer_scale else ())}
    missing = sorted(needed - params.keys())
    if missing:
        raise ClipDebiasError(f"{where} has no parameter '{missing[0]}' (clip-debias reads the fused q/k/v "
                              "projection attn.in_proj_weight [3W, W] with attn.in_proj_bias, attn.out_proj, mlp.c_fc, "
                              "mlp.c_proj)")
    extra = sorted(params.keys() - needed)
    if extra:
        raise ClipDebiasError(f"{where} has parameter '{extra[0]}', which a plain pre-norm ViT block does not have: "
                              "clip-debias cannot account for what it computes")
    attn, mlp_width = blk.attn, params["mlp.c_fc.weight"].shape[0]
    heads = getattr(attn, "num_heads", None)
    if not isinstance(heads, int) or heads < 1 or width % heads:
        raise ClipDebiasError(f"{where}: attn.num_heads is {heads!r}, expected a divisor of the width {width}")
    shapes = {"attn.in_proj_weight": (3 * width, width), "attn.in_proj_bias": (3 * width,),
              "attn.out_proj.weight": (width, width), "mlp.c_proj.weight": (width, mlp_width)}
    for name, shape in shapes.items():
        if tuple(params[name].shape) != shape:
            raise ClipDebiasError(f"{where}: {name} has shape {list(params[name].shape)}, expected {list(shape)}")
    if getattr(attn, "add_zero_attn", False):
        raise ClipDebiasError(f"{where} has a zero key/value token (add_zero_attn), which changes the block's math")
    scale = getattr(attn, "scale", None)
    if isinstance(scale, float) and not math.isclose(scale, (width // heads) ** -0.5, rel_tol=1e-6):
        raise ClipDebiasError(f"{where}: attention scale {scale} is not 1/sqrt(head width {width // heads})")
    for name in ("ln_1", "ln_2"):
        norm = getattr(blk, name)
        if not isinstance(norm, nn.LayerNorm) or norm.eps != eps:
            raise ClipDebiasError(f"{where}: {name} is {type(norm).__name__} (eps {getattr(norm, 'eps', None)}), "
                                  f"expected a LayerNorm with the eps of ln_post ({eps})")
    act_module = getattr(blk.mlp, "gelu", None)
    act = type(act_module).__name__
    if act not in ("GELU", "QuickGELU"):
        raise ClipDebiasError(f"image tower activation {act} is not supported (GELU or QuickGELU)")
    if isinstance(act_module, nn.GELU) and act_module.approximate != "none":
        raise ClipDebiasError("image tower uses tanh-approximated GELU, which is not supported")
    return heads, mlp_width, "quick_gelu" if act == "QuickGELU" else "gelu", layer_scale


def tower_config_of(visual: nn.Module) -> TowerConfig:
    """Read a ``TowerConfig`` off an open_clip image tower, or raise one clear line saying why it is unsupported.

    The tower is checked by its parameters, not by the classes of its attention modules: every block must hold
    exactly the parameters ExplicitBlock reads (``BLOCK_PARAMETERS``, optionally ``LAYER_SCALE_PARAMETERS``) and none
    of the parts that change the math (``MATH_CHANGES``), so either open_clip attention layout is accepted."""
    from open_clip.transformer import VisionTransformer

    kind = type(visual).__name__
    if not isinstance(visual, VisionTransformer):
        raise ClipDebiasError(
            f"image tower {kind} is not supported: clip-debias needs a plain CLS-token ViT "
            "(open_clip VisionTransformer)"
        )
    if getattr(visual, "attn_pool", None) is not None:
        raise ClipDebiasError("image tower uses attentional pooling; "
                              "only CLS-token pooling (pool_type 'tok') is supported")
    if getattr(visual, "pool_type", "tok") != "tok":
        raise ClipDebiasError(f"image tower pools with '{visual.pool_type}'; "
                              "only CLS-token pooling ('tok') is supported")
    ln_pre = not isinstance(visual.ln_pre, nn.Identity)
    own = {"conv1.weight", "class_embedding", "positional_embedding", "ln_post.weight", "ln_post.bias",
           *(("ln_pre.weight", "ln_pre.bias") if ln_pre else ()), *(("proj",) if visual.proj is not None else ())}
    params = {n for n, _ in visual.named_parameters() if not n.startswith("transformer.resblocks.")}
    if own - params or params - own:
        name = sorted(params - own or own - params)[0]
        raise ClipDebiasError(f"image tower {'has' if name in params else 'lacks'} parameter '{name}' "
                              f"({'not part of' if name in params else 'needed by'} a plain CLS-token ViT)")
    width, eps = visual.conv1.weight.shape[0], visual.ln_post.eps
    norms = [visual.ln_post, *([visual.ln_pre] if ln_pre else [])]
    if any(not isinstance(n, nn.LayerNorm) or n.eps != eps for n in norms):
        raise ClipDebiasError("image tower: ln_pre and ln_post must be LayerNorms with one eps")
    blocks = list(visual.transformer.resblocks)
    if not blocks:
        raise ClipDebiasError("image tower has no transformer blocks")
    found = {_check_block(i, blk, width, eps) for i, blk in enumerate(blocks)}
    if len(found) != 1:
        raise ClipDebiasError("image tower blocks differ in heads, MLP width, activation or LayerScale "
                              f"({sorted(found)}); clip-debias needs one block shape")
    heads, mlp_width, act, layer_scale = found.pop()
    return TowerConfig(
        image_size=tuple(visual.image_size),
        patch_size=tuple(visual.patch_size),
        width=width,
        layers=len(blocks),
        heads=heads,
        mlp_width=mlp_width,
        output_dim=visual.proj.shape[1] if visual.proj is not None else None,
        act=act,
        layer_scale=layer_scale,
        ln_pre=ln_pre,
        eps=eps,
    )
