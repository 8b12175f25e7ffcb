"""The adapter of open_clip's ``TimmModel`` towers whose trunk is timm's ``VisionTransformer`` or ``Eva`` (SigLIP,
SigLIP2, PE-Core, MobileCLIP-B/L, EVA02, EVA01): class-token, average-pool and attention-pool (MAP) readouts.

It runs the model's own forward and reads, through forward hooks, what the decomposition needs
(``models/pooled.py``): each traced block's per-head attention outputs (the input of the attention's ``norm``, where
timm concatenates the heads), its attention write, the final residual stream, the attention pool's input and its MLP
term. Rotary embeddings and q/k norms act before those reads (on q and k only), so they need no handling here.
Refused in one line: other trunks (ConvNeXt, FastViT, ViTamin, ...), post-norm or parallel blocks, gated attention,
an attention pool with several latents or its own position embedding, an MLP projection head.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.models.adapter import TowerAdapter, register_tower
from clip_debias.toolchain.models.pooled import PooledReadout, PooledTrace

TRUNKS = ("VisionTransformer", "Eva")
BLOCKS = ("Block", "EvaBlock")  # pre-norm: x + ls1(attn(norm1 x)), then x + ls2(mlp(norm2 x))
READOUTS = {"map": "attention pool (MAP)", "token": "class token", "avg": "average pool"}


def _is_norm(m: nn.Module) -> bool:
    return isinstance(m, nn.LayerNorm) and m.elementwise_affine


def _gamma(blk: nn.Module) -> torch.Tensor | None:
    """The attention LayerScale of a block (timm ``ls1.gamma`` / EVA ``gamma_1``), None without one."""
    ls = getattr(blk, "ls1", None)
    if ls is not None and hasattr(ls, "gamma"):
        return ls.gamma
    return getattr(blk, "gamma_1", None)


def _linears(visual: nn.Module) -> list[nn.Linear]:
    """The linear maps after the pooling: the trunk's ``head`` and open_clip's ``head`` (a projection); anything else
    there is refused."""
    parts = [visual.trunk.head, *visual.head]
    bad = [p for p in parts if not isinstance(p, (nn.Linear, nn.Identity, nn.Dropout))]
    if bad:
        raise ClipDebiasError(f"image tower head has {type(bad[0]).__name__} after the pooling; clip-debias needs a "
                              "linear projection there (open_clip proj 'linear' or 'none')")
    return [p for p in parts if isinstance(p, nn.Linear)]


@register_tower("TimmModel")
class TimmViT(TowerAdapter):
    """A ``TimmModel`` with a timm ViT or EVA trunk; also its own ``PooledTower``."""

    family = "timm ViT / EVA (open_clip TimmModel)"

    def __init__(self, visual: nn.Module):
        super().__init__(visual)
        trunk = visual.trunk
        kind = type(trunk).__name__
        if kind not in TRUNKS:
            raise ClipDebiasError(f"image tower TimmModel with timm trunk {kind} is not supported: clip-debias reads "
                                  f"timm {' and '.join(TRUNKS)} trunks (and open_clip's own VisionTransformer)")
        self.trunk = trunk
        self.blocks = list(trunk.blocks)
        if not self.blocks:
            raise ClipDebiasError("image tower has no transformer blocks")
        if getattr(trunk, "dynamic_img_size", False):
            raise ClipDebiasError("image tower resizes its position embeddings per input (dynamic_img_size); "
                                  "clip-debias needs a fixed image size")
        for i, blk in enumerate(self.blocks):
            self._check_block(i, blk)
        self.kind = self._check_readout()
        self.readout = READOUTS[self.kind]
        self.post = _linears(visual)

    # ---- checks -------------------------------------------------------------------------------------------------
    def _check_block(self, i: int, blk: nn.Module) -> None:
        where = f"image tower block {i}"
        if type(blk).__name__ not in BLOCKS:
            raise ClipDebiasError(f"{where} is {type(blk).__name__}, not one of timm's pre-norm blocks "
                                  f"({', '.join(BLOCKS)}): its wiring is unknown")
        attn = blk.attn
        if getattr(attn, "gate", None) is not None:
            raise ClipDebiasError(f"{where} gates its attention output, which is not linear in the heads")
        if not isinstance(attn.norm, nn.Identity) and not _is_norm(attn.norm):
            raise ClipDebiasError(f"{where}: attention output norm {type(attn.norm).__name__} is not a LayerNorm")
        if not isinstance(attn.proj, nn.Linear) or attn.proj.in_features != self.width:
            raise ClipDebiasError(f"{where}: the attention output projection is not a [W, W] linear map")
        if getattr(attn, "num_kv_heads", attn.num_heads) != attn.num_heads or attn.num_heads != self.heads:
            raise ClipDebiasError(f"{where}: blocks differ in heads, or share key/value heads (grouped-query)")

    def _check_readout(self) -> str:
        t = self.trunk
        norm, fc_norm = t.norm, getattr(t, "fc_norm", nn.Identity())
        pool = getattr(t, "attn_pool", None)
        if pool is not None:
            if type(pool).__name__ != "AttentionPoolLatent":
                raise ClipDebiasError(f"image tower pools with {type(pool).__name__}; clip-debias reads timm's "
                                      "AttentionPoolLatent (MAP), class-token and average readouts")
            if pool.latent_len != 1 or pool.pos_embed is not None or pool.pool != "token":
                raise ClipDebiasError("image tower attention pool has several latents or its own position embedding; "
                                      "clip-debias reads a single-latent MAP pool")
            if not _is_norm(norm) or not isinstance(fc_norm, nn.Identity):
                raise ClipDebiasError("image tower attention pool: clip-debias needs a LayerNorm before it and none "
                                      "after it")
            return "map"
        if t.global_pool == "token":
            if getattr(t, "num_prefix_tokens", 0) < 1 or not _is_norm(norm) or not isinstance(fc_norm, nn.Identity):
                raise ClipDebiasError("image tower class-token readout: clip-debias needs a class token and one "
                                      "LayerNorm before the head")
            return "token"
        if t.global_pool == "avg":
            if _is_norm(norm) == _is_norm(fc_norm) or not isinstance(norm if _is_norm(fc_norm) else fc_norm,
                                                                     nn.Identity):
                raise ClipDebiasError("image tower average readout: clip-debias needs exactly one LayerNorm, before "
                                      "or after the pooling")
            return "avg"
        raise ClipDebiasError(f"image tower pools with '{t.global_pool}'; clip-debias reads 'map', 'token', 'avg'")

    # ---- shape --------------------------------------------------------------------------------------------------
    @property
    def layers(self) -> int:
        return len(self.blocks)

    @property
    def heads(self) -> int:
        return self.blocks[0].attn.num_heads

    @property
    def width(self) -> int:
        return self.trunk.embed_dim

    @property
    def embed_dim(self) -> int:
        return self.post[-1].out_features if self.post else self.width

    @property
    def pool_heads(self) -> int:
        return self.trunk.attn_pool.num_heads if self.kind == "map" else 1

    def pooled(self) -> "TimmViT":
        return self

    @property
    def no_explicit(self) -> str:
        if self.kind == "map":
            return ("its attention pool reads every token through the pool's own attention and a non-linear MLP, so "
                    "there is no class-token attention to map (per-head terms, LTC, build and export work)")
        if self.kind == "avg":
            return ("an average readout weighs every token alike, so there is no class-token attention to map "
                    "(per-head terms, LTC, build and export work)")
        return ("clip-debias reads timm blocks through their pooled form (per-head terms, LTC, build, export and "
                "class-token heat maps work)")

    def classifier_tower(self, model_name: str, step: str = "this step") -> nn.Module:
        from clip_debias.toolchain.models.timm_tower import TimmTower

        return TimmTower.of(self, model_name)

    # ---- readout constants (float64) ----------------------------------------------------------------------------
    def _post(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Q [W, D], q [D]: the linear maps after the pooling, composed (row vectors: y = p @ Q + q)."""
        w = self._norm().weight
        q_map: torch.Tensor | None = None  # None: the identity (no linear map after the pooling)
        q_bias = torch.zeros(self.width, dtype=torch.float64, device=w.device)
        for lin in self.post:
            weight = lin.weight.double().T
            q_map, q_bias = (weight if q_map is None else q_map @ weight), q_bias @ weight
            if lin.bias is not None:
                q_bias = q_bias + lin.bias.double()
        return (torch.eye(self.width, dtype=torch.float64, device=w.device) if q_map is None else q_map), q_bias

    def _norm(self) -> nn.LayerNorm:
        """The LayerNorm whose statistics the readout fixes (before the pooling, or after it for an average)."""
        return self.trunk.norm if _is_norm(self.trunk.norm) else self.trunk.fc_norm

    @torch.no_grad()
    def readout_maps(self) -> PooledReadout:
        norm = self._norm()
        q_map, _ = self._post()
        w = self.width
        if self.kind == "map":
            pool = self.trunk.attn_pool
            hp, dp = pool.num_heads, pool.head_dim
            value = pool.kv.weight.double()[hp * dp:].reshape(hp, dp, w)
            out = pool.proj.weight.double().T.reshape(hp, dp, w) @ q_map
        else:
            value = torch.eye(w, dtype=torch.float64, device=q_map.device)[None]
            out = q_map[None]
        name = "trunk.norm" if norm is self.trunk.norm else "trunk.fc_norm"
        return PooledReadout(norm.weight.double(), norm.bias.double(), value, out, name)

    @torch.no_grad()
    def head_write(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        blk = self.blocks[layer]
        attn = blk.attn
        wp = attn.proj.weight.double()
        bp = attn.proj.bias.double() if attn.proj.bias is not None else wp.new_zeros(wp.shape[0])
        if _is_norm(attn.norm):  # W_p diag(g_in) C: C = I - 11^T/W removes the mean over the concatenated heads
            wg = wp * attn.norm.weight.double()[None, :]
            bp = bp + wp @ attn.norm.bias.double()
            wp = wg - wg.mean(dim=1, keepdim=True)
        gamma = _gamma(blk)
        if gamma is not None:
            wp, bp = wp * gamma.double()[:, None], bp * gamma.double()
        h = self.heads
        return wp.reshape(self.width, h, self.width // h).permute(1, 0, 2), bp

    # ---- traced forward -----------------------------------------------------------------------------------------
    def _pool_weights(self, t: torch.Tensor) -> torch.Tensor:
        """The attention pool's weights [B, H', N'] over its input tokens t [B, N', W] (its own q/k norms)."""
        pool = self.trunk.attn_pool
        hp, dp = pool.num_heads, pool.head_dim
        q = pool.q(pool.latent).reshape(1, 1, hp, dp).transpose(1, 2)  # [1, H', 1, Dh']
        k = pool.kv(t)[..., :hp * dp].reshape(t.shape[0], t.shape[1], hp, dp).transpose(1, 2)  # [B, H', N', Dh']
        q, k = pool.q_norm(q), pool.k_norm(k)
        return ((q @ k.transpose(-2, -1)) * pool.scale).softmax(dim=-1)[:, :, 0]

    @torch.no_grad()
    def trace(self, images: torch.Tensor, layers: list[int]) -> PooledTrace:
        wanted = set(layers)
        seen: dict[str, Any] = {}
        hooks = []

        def keep_input(key: str) -> Callable:
            return lambda module, args: seen.__setitem__(key, args[0])

        def keep_output(key: str) -> Callable:
            return lambda module, args, out: seen.__setitem__(key, out)

        try:
            for i in wanted:
                hooks.append(self.blocks[i].attn.norm.register_forward_pre_hook(keep_input(f"o{i}")))
                hooks.append(self.blocks[i].attn.register_forward_hook(keep_output(f"a{i}")))
            hooks.append(self.trunk.norm.register_forward_pre_hook(keep_input("x")))
            if self.kind == "map":
                hooks.append(self.trunk.attn_pool.register_forward_pre_hook(keep_input("t")))
                if self.trunk.attn_pool.mlp is not None:
                    hooks.append(self.trunk.attn_pool.mlp.register_forward_hook(keep_output("mlp")))
            y = self.visual(images)
        finally:
            for hook in hooks:
                hook.remove()
        return self._reduce(y, seen, layers)

    def _reduce(self, y: torch.Tensor, seen: dict[str, Any], layers: list[int]) -> PooledTrace:
        x = seen["x"]  # [B, N, W] final residual stream
        n_tok = x.shape[1]
        norm = self._norm()
        q_map, q_bias = (t.to(x.dtype) for t in self._post())
        mlp = None
        tail = q_bias.expand(x.shape[0], -1)
        if self.kind == "map":
            t = seen["t"]
            sel = slice(n_tok - t.shape[1], n_tok)
            omega = self._pool_weights(t)  # [B, H', N']
            pool = self.trunk.attn_pool
            const = pool.kv.bias[pool.num_heads * pool.head_dim:] @ pool.proj.weight.T + pool.proj.bias
            if "mlp" in seen:
                mlp = seen["mlp"][:, 0] @ q_map  # [B, D]
                const = const + seen["mlp"][:, 0]
            tail = tail + const @ q_map
        elif self.kind == "token":
            sel = slice(0, 1)
            omega = x.new_ones(x.shape[0], 1, 1)
        else:
            start = 0 if getattr(self.trunk, "pool_include_prefix", False) else self.trunk.num_prefix_tokens
            sel = slice(start, n_tok)
            omega = x.new_full((x.shape[0], 1, n_tok - start), 1.0 / (n_tok - start))
        xs = x[:, sel]
        mu = xs.mean(dim=-1)  # [B, n]
        if norm is self.trunk.norm:  # per-token statistics
            sigma = torch.sqrt(xs.var(dim=-1, unbiased=False) + norm.eps)
        else:  # the pooled vector's statistics, the same for every token
            pooled = torch.einsum("bpj,bjw->bpw", omega, xs)[:, 0]
            sigma = torch.sqrt(pooled.var(dim=-1, unbiased=False) + norm.eps)[:, None].expand_as(mu)
        lam = omega / sigma[:, None, :]  # [B, H', n]
        rest = x
        o: dict[int, torch.Tensor] = {}
        h = self.heads
        for i in layers:
            blk = self.blocks[i]
            heads_out = seen[f"o{i}"]  # [B, N, W] concatenated head outputs
            if _is_norm(blk.attn.norm):
                heads_out = heads_out / torch.sqrt(heads_out.var(dim=-1, unbiased=False, keepdim=True)
                                                   + blk.attn.norm.eps)
            per_head = heads_out[:, sel].reshape(x.shape[0], -1, h, self.width // h)  # [B, n, H, Dh]
            o[i] = torch.einsum("bpj,bjhd->bphd", lam, per_head)
            gamma = _gamma(blk)
            rest = rest - (seen[f"a{i}"] * gamma if gamma is not None else seen[f"a{i}"])
        return PooledTrace(pooled=y, o=o, kappa=lam.sum(dim=-1), m=(lam * mu[:, None]).sum(dim=-1),
                           rest=torch.einsum("bpj,bjw->bpw", lam, rest[:, sel]), tail=tail, mlp=mlp)
