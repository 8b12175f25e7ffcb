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


class ExplicitBlock(nn.Module):
    """Pre-norm residual block. ``forward`` returns the new residual stream and what decomposition needs."""

    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.attn = ExplicitAttention(cfg.width, cfg.heads, cfg.tokens)
        self.ls_1 = LayerScale(cfg.width) if cfg.layer_scale else nn.Identity()
        self.ln_2 = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.width, cfg.mlp_width),
            QuickGELU() if cfg.act == "quick_gelu" else nn.GELU(),
            nn.Linear(cfg.mlp_width, cfg.width),
        )
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
    rest_resid:[B, W]        residual-space CLS sum of everything that is not a traced head term:
                             embedding term + all MLP deltas + attention deltas of untraced layers
                             + ls_1(b_o) of traced layers
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
        """Copy the weights of an open_clip ``VisionTransformer``; refuse anything that is not a plain CLS-token ViT."""
        cfg = tower_config_of(visual)
        tower = cls(cfg).to(dtype=visual.conv1.weight.dtype, device=visual.conv1.weight.device)
        sd: dict[str, torch.Tensor] = {
            "conv1.weight": visual.conv1.weight,
            "class_embedding": visual.class_embedding,
            "positional_embedding": visual.positional_embedding,
            "ln_post.weight": visual.ln_post.weight,
            "ln_post.bias": visual.ln_post.bias,
        }
        if cfg.ln_pre:
            sd.update({"ln_pre.weight": visual.ln_pre.weight, "ln_pre.bias": visual.ln_pre.bias})
        if cfg.output_dim is not None:
            sd["proj"] = visual.proj
        for i, blk in enumerate(visual.transformer.resblocks):
            p = f"blocks.{i}."
            sd.update({
                p + "ln_1.weight": blk.ln_1.weight, p + "ln_1.bias": blk.ln_1.bias,
                p + "attn.qkv.weight": blk.attn.in_proj_weight, p + "attn.qkv.bias": blk.attn.in_proj_bias,
                p + "attn.out.weight": blk.attn.out_proj.weight, p + "attn.out.bias": blk.attn.out_proj.bias,
                p + "ln_2.weight": blk.ln_2.weight, p + "ln_2.bias": blk.ln_2.bias,
                p + "mlp.0.weight": blk.mlp.c_fc.weight, p + "mlp.0.bias": blk.mlp.c_fc.bias,
                p + "mlp.2.weight": blk.mlp.c_proj.weight, p + "mlp.2.bias": blk.mlp.c_proj.bias,
            })
            if cfg.layer_scale:
                sd.update({p + "ls_1.gamma": blk.ls_1.gamma, p + "ls_2.gamma": blk.ls_2.gamma})
        tower.load_state_dict({k: v.detach().clone() for k, v in sd.items()}, strict=True)
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

    # ---- folding ln_post and proj into per-head linear maps ----------------------------------------------------
    def ln_post_sigma(self, cls_final: torch.Tensor) -> torch.Tensor:
        """Per-sample LayerNorm std of the final CLS stream: sqrt(var(x) + eps) [B] (biased variance, as LN)."""
        return torch.sqrt(cls_final.var(dim=-1, unbiased=False) + self.cfg.eps)

    def term_scale(self, trace: TowerTrace) -> torch.Tensor:
        """[B, 1] 1 / (sigma ||y||): turns a folded residual term (o @ A, or r @ C diag(g) proj) into its direct
        contribution to the unit-norm embedding y / ||y||, with the sample's own ln_post std sigma."""
        return 1.0 / (self.ln_post_sigma(trace.cls_final) * trace.pooled.norm(dim=-1))[:, None]

    @torch.no_grad()
    def centred_readout(self) -> torch.Tensor:
        """C diag(g) proj [W, D], C = I - 11^T/W. A residual term r maps to r @ this / sigma.

        TextSpan convention: ln_post(x) @ proj = sum_i (r_i - mean(r_i)) / sigma * g @ proj + b @ proj, i.e. each term
        is centred by its own feature mean (mean is linear, so this is exact), every term shares the sample's
        sigma, and the LayerNorm bias b @ proj goes to the rest term.
        """
        m = self.ln_post.weight.double()[:, None] * (self.proj.double() if self.proj is not None else
                                                      torch.eye(self.cfg.width, dtype=torch.float64,
                                                                device=self.ln_post.weight.device))
        return m - m.mean(dim=0, keepdim=True)

    @torch.no_grad()
    def head_readout(self, layers: list[int] | tuple[int, ...]) -> torch.Tensor:
        """Folded per-head maps A [L, H, Dh, D]: head term c_{l,h} = o_{l,h}^{cls} @ A_{l,h} / sigma (unnormalized y
        space), A_{l,h} = W_o[:, h]^T diag(gamma_l) C diag(g) proj. Computed in float64, returned in the tower dtype."""
        cm = self.centred_readout()
        mats = []
        for layer in layers:
            blk = self.blocks[layer]
            wo = blk.attn.out.weight.double().T  # [W_in, W_out]; rows h*Dh:(h+1)*Dh belong to head h
            if self.cfg.layer_scale:
                wo = wo * blk.ls_1.gamma.double()[None, :]
            mats.append((wo @ cm).reshape(self.cfg.heads, self.cfg.head_dim, -1))
        return torch.stack(mats).to(self.conv1.weight.dtype)

    @torch.no_grad()
    def bias_readout(self) -> torch.Tensor:
        """ln_post bias through proj: b @ proj [D] (belongs to the rest term)."""
        b = self.ln_post.bias
        return b @ self.proj if self.proj is not None else b


def tower_config_of(visual: nn.Module) -> TowerConfig:
    """Read a ``TowerConfig`` off an open_clip image tower, or raise one clear line saying why it is unsupported."""
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

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
    blocks = list(visual.transformer.resblocks)
    for blk in blocks:
        if type(blk) is not ResidualAttentionBlock or not isinstance(blk.attn, nn.MultiheadAttention) \
                or hasattr(blk, "ln_1_kv") or blk.attn.in_proj_weight is None:
            raise ClipDebiasError(
                f"image tower block {type(blk).__name__} is not a plain pre-norm attention block (qk-norm, scaled "
                "cosine attention and custom blocks are not supported)"
            )
    act = type(blocks[0].mlp.gelu).__name__
    if act not in ("GELU", "QuickGELU"):
        raise ClipDebiasError(f"image tower activation {act} is not supported (GELU or QuickGELU)")
    if isinstance(blocks[0].mlp.gelu, nn.GELU) and blocks[0].mlp.gelu.approximate != "none":
        raise ClipDebiasError("image tower uses tanh-approximated GELU, which is not supported")
    ln_pre = not isinstance(visual.ln_pre, nn.Identity)
    return TowerConfig(
        image_size=tuple(visual.image_size),
        patch_size=tuple(visual.patch_size),
        width=visual.conv1.out_channels,
        layers=len(blocks),
        heads=blocks[0].attn.num_heads,
        mlp_width=blocks[0].mlp.c_fc.out_features,
        output_dim=visual.proj.shape[1] if visual.proj is not None else None,
        act="quick_gelu" if act == "QuickGELU" else "gelu",
        layer_scale=not isinstance(blocks[0].ls_1, nn.Identity),
        ln_pre=ln_pre,
        eps=visual.ln_post.eps,
    )
