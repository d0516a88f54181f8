"""A Vision Transformer that loads timm checkpoints as the pathology foundation models ship them.

UNI, UNI2-h, Virchow2, H-optimus-0 and Prov-GigaPath are timm ``VisionTransformer``s saved as a
``state_dict`` (``pytorch_model.bin`` or ``model.safetensors``) beside a timm ``config.json``.
timm needs torchvision, which does not import beside this project's torch build, so this module
rebuilds the same network in plain torch, with timm's parameter names, so those files load with
``strict=True``:

* patch embedding (a strided convolution), a class token, optional register tokens;
* absolute position embeddings over the patches, or over the class/register tokens and the
  patches (timm's ``no_embed_class``), resampled bicubically for another grid;
* pre-norm blocks (LayerNorm eps 1e-6; fused-qkv attention; LayerScale) with a GELU MLP or a
  packed SwiGLU (timm's ``SwiGLUPacked``: ``silu(x1) * x2`` of one fc1's two halves);
* a final LayerNorm; pooling: the class token, or the class token and the mean of the patch
  tokens (Virchow2's).

Everything but the number of heads and the MLP type is read from the checkpoint's shapes; those
two come from the preset (``presets.json``). torch is imported lazily (``build``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

POOLINGS = ("cls", "cls+mean", "tokens")


@dataclass(frozen=True)
class VitShape:
    """What a timm ViT checkpoint's tensors say of its architecture."""

    embed_dim: int
    patch_size: int
    depth: int
    reg_tokens: int
    pos_tokens: int
    mlp_hidden: int
    layer_scale: bool

    def grid(self, no_embed_class: bool) -> int:
        """Patches per side of the position embedding's grid."""
        patches = self.pos_tokens - (0 if no_embed_class else 1 + self.reg_tokens)
        return math.isqrt(max(patches, 0))


def shape_of(shapes: dict[str, tuple[int, ...]]) -> VitShape:
    """The architecture that a timm ViT state dict's tensor shapes describe (``ValueError``
    naming the missing tensor otherwise)."""
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight"):
        if key not in shapes:
            raise ValueError(f"not a timm ViT checkpoint: it has no {key}")
    depth = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("blocks."))
    return VitShape(
        embed_dim=shapes["cls_token"][-1],
        patch_size=shapes["patch_embed.proj.weight"][-1],
        depth=depth,
        reg_tokens=shapes["reg_token"][1] if "reg_token" in shapes else 0,
        pos_tokens=shapes["pos_embed"][1],
        mlp_hidden=shapes["blocks.0.mlp.fc1.weight"][0],
        layer_scale="blocks.0.ls1.gamma" in shapes,
    )


def build(
    shape: VitShape,
    heads: int,
    mlp: str,
    pooling: str,
    no_embed_class: bool,
    dino_positions: bool = False,
) -> Any:
    """An ``nn.Module`` of that architecture (random weights), taking ``N x 3 x H x W`` and
    returning ``N x D`` (``cls``) or ``N x 2D`` (``cls+mean``) embeddings, or every token
    (``tokens``). ``dino_positions``: resample positions for another grid as DINO/iBOT code
    does (bicubic, by a scale factor of (side + 0.1) / grid), not as timm does."""
    import torch
    from torch import nn
    from torch.nn import functional as F  # noqa: N812

    if pooling not in POOLINGS:
        raise ValueError(f"pooling {pooling!r}: one of {', '.join(POOLINGS)}")
    dim = shape.embed_dim

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(dim, dim * 3)
            self.proj = nn.Linear(dim, dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, n, c = x.shape
            qkv = self.qkv(x).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
            out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
            return self.proj(out.transpose(1, 2).reshape(b, n, c))

    class LayerScale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gamma = nn.Parameter(torch.full((dim,), 1e-5))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.gamma

    class Mlp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            glu = mlp == "swiglu"
            self.fc1 = nn.Linear(dim, shape.mlp_hidden)
            self.fc2 = nn.Linear(shape.mlp_hidden // 2 if glu else shape.mlp_hidden, dim)
            self.glu = glu

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.fc1(x)
            if self.glu:
                x1, x2 = x.chunk(2, dim=-1)
                return self.fc2(F.silu(x1) * x2)
            return self.fc2(F.gelu(x))

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm1 = nn.LayerNorm(dim, eps=1e-6)
            self.attn = Attention()
            self.ls1 = LayerScale() if shape.layer_scale else nn.Identity()
            self.norm2 = nn.LayerNorm(dim, eps=1e-6)
            self.mlp = Mlp()
            self.ls2 = LayerScale() if shape.layer_scale else nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x + self.ls1(self.attn(self.norm1(x)))
            return x + self.ls2(self.mlp(self.norm2(x)))

    class PatchEmbed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Conv2d(3, dim, shape.patch_size, shape.patch_size)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x).flatten(2).transpose(1, 2)

    prefix = 1 + shape.reg_tokens
    grid = shape.grid(no_embed_class)

    class VisionTransformer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patch_embed = PatchEmbed()
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
            if shape.reg_tokens:
                self.reg_token = nn.Parameter(torch.zeros(1, shape.reg_tokens, dim))
            self.pos_embed = nn.Parameter(torch.randn(1, shape.pos_tokens, dim) * 0.02)
            self.blocks = nn.Sequential(*(Block() for _ in range(shape.depth)))
            self.norm = nn.LayerNorm(dim, eps=1e-6)

        def _positions(self, side_h: int, side_w: int) -> torch.Tensor:
            """The patch positions for a ``side_h x side_w`` grid (resampled bicubically, as
            timm's ``resample_abs_pos_embed``, when it is not the trained grid)."""
            start = 0 if no_embed_class else prefix
            patches = self.pos_embed[:, start:]
            if (side_h, side_w) == (grid, grid):
                return patches
            square = patches.reshape(1, grid, grid, dim).permute(0, 3, 1, 2).float()
            if dino_positions:
                scale = ((side_h + 0.1) / grid, (side_w + 0.1) / grid)
                square = F.interpolate(square, scale_factor=scale, mode="bicubic")
            else:
                square = F.interpolate(square, size=(side_h, side_w), mode="bicubic")
            return square.permute(0, 2, 3, 1).reshape(1, side_h * side_w, dim).to(patches.dtype)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            side_h, side_w = x.shape[2] // shape.patch_size, x.shape[3] // shape.patch_size
            x = self.patch_embed(x)
            tokens = [self.cls_token.expand(x.shape[0], -1, -1)]
            if shape.reg_tokens:
                tokens.append(self.reg_token.expand(x.shape[0], -1, -1))
            positions = self._positions(side_h, side_w)
            if no_embed_class:
                x = torch.cat([*tokens, x + positions], dim=1)
            else:
                lead = self.pos_embed[:, :prefix]
                x = torch.cat([*tokens, x], dim=1) + torch.cat([lead, positions], dim=1)
            x = self.norm(self.blocks(x))
            if pooling == "tokens":
                return x
            if pooling == "cls":
                return x[:, 0]
            return torch.cat([x[:, 0], x[:, prefix:].mean(dim=1)], dim=-1)

    return VisionTransformer()


def resample_grid(pos_embed: Any, prefix: int, side: int) -> Any:
    """A position embedding's patch part resampled to ``side x side`` bilinearly (timm's
    ``resample_abs_pos_embed`` as CONCH v1.5's loader calls it: no antialiasing)."""
    import torch
    from torch.nn import functional as F  # noqa: N812

    lead, patches = pos_embed[:, :prefix], pos_embed[:, prefix:]
    grid, dim = math.isqrt(patches.shape[1]), patches.shape[2]
    if grid == side:
        return pos_embed
    square = patches.reshape(1, grid, grid, dim).permute(0, 3, 1, 2).float()
    square = F.interpolate(square, size=(side, side), mode="bilinear", antialias=False)
    patches = square.permute(0, 2, 3, 1).reshape(1, side * side, dim).to(pos_embed.dtype)
    return torch.cat([lead, patches], dim=1)


CONCH_TRUNK_GRID = 14
"""CONCH v1.5's trunk is built for 224 px (14 x 14 patches of 16): its loader resamples the
checkpoint's position embedding to that grid, and the trunk resamples it again, DINO-style, for
448 px inputs."""


def build_conch(shape: VitShape, heads: int = 16, pool_heads: int = 8, out_dim: int = 768) -> Any:
    """CONCH v1.5's vision tower: a ViT-L/16 trunk (``trunk.``), one learned query attending
    over its normalised tokens (``attn_pool_contrast``), and a LayerNorm (``ln_contrast``);
    ``N x out_dim`` embeddings."""
    import torch
    from torch import nn

    trunk_shape = VitShape(**{**shape.__dict__, "pos_tokens": 1 + CONCH_TRUNK_GRID**2})

    class AttentionalPooler(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            context = shape.embed_dim
            self.query = nn.Parameter(torch.randn(1, out_dim))
            self.ln_k = nn.LayerNorm(context)
            self.ln_q = nn.LayerNorm(out_dim)
            self.to_q = nn.Linear(out_dim, out_dim, bias=False)
            self.to_kv = nn.Linear(context, out_dim * 2, bias=False)
            self.to_out = nn.Linear(out_dim, out_dim, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, n, head_dim = x.shape[0], x.shape[1], out_dim // pool_heads
            q = self.to_q(self.ln_q(self.query)).reshape(pool_heads, head_dim)
            k, v = self.to_kv(self.ln_k(x)).chunk(2, dim=-1)
            k = k.reshape(b, n, pool_heads, head_dim).transpose(1, 2)
            v = v.reshape(b, n, pool_heads, head_dim).transpose(1, 2)
            weights = torch.einsum("hd,bhnd->bhn", q * head_dim**-0.5, k).softmax(dim=-1)
            out = torch.einsum("bhn,bhnd->bhd", weights, v).reshape(b, out_dim)
            return self.to_out(out)

    class ConchVisionTower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = build(trunk_shape, heads, "gelu", "tokens", False, dino_positions=True)
            self.attn_pool_contrast = AttentionalPooler()
            self.ln_contrast = nn.LayerNorm(out_dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.ln_contrast(self.attn_pool_contrast(self.trunk(x)))

    return ConchVisionTower()
