"""A Swin transformer that loads CTransPath's checkpoint, in plain torch (timm needs torchvision).

CTransPath (Wang et al., Medical Image Analysis 2022) is timm 0.5.4's
``swin_tiny_patch4_window7_224`` with its patch embedding replaced by a convolutional stem
(``ConvStem``: two stride-2 3x3 convolutions with batch norm and ReLU, a 1x1 convolution, then
LayerNorm), pooled by the mean of the last stage's tokens after a LayerNorm: 768 values. This
module rebuilds it with timm 0.5.4's parameter names, so ``ctranspath.pth``'s ``model`` state
dict loads strictly (its ``attn_mask`` buffers, which the network computes itself, are dropped):

* stages of (2, 2, 6, 2) blocks at widths 96, 192, 384, 768 with 3, 6, 12, 24 heads;
* window attention over 7 x 7 windows with a learned relative-position bias, every second block
  on windows shifted by 3 (masked where they wrap), none where the map is no larger than a
  window;
* patch merging (2 x 2 neighbours concatenated, LayerNorm, a linear map to twice the width)
  after each stage but the last.

``stem="patch"`` builds the plain 4 x 4 patch embedding instead (Swin-T itself), which is what
the tests compare with transformers' ``SwinModel``. torch is imported lazily (``build``).
"""

from __future__ import annotations

from typing import Any

DEPTHS = (2, 2, 6, 2)
HEADS = (3, 6, 12, 24)
EMBED_DIM = 96
WINDOW = 7


def build(stem: str = "conv", img_size: int = 224) -> Any:
    """The network, random weights: ``N x 3 x img_size x img_size`` -> ``N x 768``."""
    import torch
    from torch import nn
    from torch.nn import functional as F  # noqa: N812

    def partition(x: torch.Tensor, ws: int) -> torch.Tensor:
        b, h, w, c = x.shape
        x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(-1, ws * ws, c)

    def reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
        b = windows.shape[0] // ((h // ws) * (w // ws))
        x = windows.view(b, h // ws, w // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(b, h, w, -1)

    class WindowAttention(nn.Module):
        def __init__(self, dim: int, ws: int, heads: int) -> None:
            super().__init__()
            self.heads, self.ws = heads, ws
            self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, heads))
            coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij"))
            flat = coords.flatten(1)
            rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0) + (ws - 1)
            self.register_buffer(
                "relative_position_index", rel[..., 0] * (2 * ws - 1) + rel[..., 1]
            )
            self.qkv = nn.Linear(dim, dim * 3)
            self.proj = nn.Linear(dim, dim)

        def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
            b, n, c = x.shape
            qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0] * (c // self.heads) ** -0.5, qkv[1], qkv[2]
            attn = q @ k.transpose(-2, -1)
            index: torch.Tensor = self.relative_position_index  # type: ignore[assignment]
            bias = self.relative_position_bias_table[index.view(-1)]
            attn = attn + bias.view(n, n, -1).permute(2, 0, 1)[None]
            if mask is not None:
                windows = mask.shape[0]
                attn = attn.view(b // windows, windows, self.heads, n, n) + mask[None, :, None]
                attn = attn.view(-1, self.heads, n, n)
            out = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c)
            return self.proj(out)

    class Mlp(nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.fc1 = nn.Linear(dim, dim * 4)
            self.fc2 = nn.Linear(dim * 4, dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(F.gelu(self.fc1(x)))

    class Block(nn.Module):
        def __init__(self, dim: int, side: int, heads: int, shift: int) -> None:
            super().__init__()
            self.side = side
            self.ws = min(WINDOW, side)
            self.shift = 0 if side <= WINDOW else shift
            self.norm1 = nn.LayerNorm(dim)
            self.attn = WindowAttention(dim, self.ws, heads)
            self.norm2 = nn.LayerNorm(dim)
            self.mlp = Mlp(dim)
            mask = None
            if self.shift:
                regions = torch.zeros(1, side, side, 1)
                cuts = (slice(0, -self.ws), slice(-self.ws, -self.shift), slice(-self.shift, None))
                for i, (hs, vs) in enumerate((h, v) for h in cuts for v in cuts):
                    regions[:, hs, vs, :] = i
                windows = partition(regions, self.ws).squeeze(-1)
                diff = windows[:, None, :] - windows[:, :, None]
                mask = diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)
            self.register_buffer("attn_mask", mask, persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, _, c = x.shape
            shortcut = x
            x = self.norm1(x).view(b, self.side, self.side, c)
            if self.shift:
                x = torch.roll(x, (-self.shift, -self.shift), dims=(1, 2))
            x = self.attn(partition(x, self.ws), self.attn_mask)
            x = reverse(x, self.ws, self.side, self.side)
            if self.shift:
                x = torch.roll(x, (self.shift, self.shift), dims=(1, 2))
            x = shortcut + x.reshape(b, -1, c)
            return x + self.mlp(self.norm2(x))

    class PatchMerging(nn.Module):
        def __init__(self, dim: int, side: int) -> None:
            super().__init__()
            self.side = side
            self.norm = nn.LayerNorm(4 * dim)
            self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, _, c = x.shape
            x = x.view(b, self.side, self.side, c)
            parts = (x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2])
            return self.reduction(self.norm(torch.cat(parts, -1).view(b, -1, 4 * c)))

    class Stage(nn.Module):
        def __init__(self, i: int, side: int) -> None:
            super().__init__()
            dim = EMBED_DIM * 2**i
            self.blocks = nn.Sequential(
                *(
                    Block(dim, side, HEADS[i], 0 if j % 2 == 0 else WINDOW // 2)
                    for j in range(DEPTHS[i])
                )
            )
            self.downsample = PatchMerging(dim, side) if i < len(DEPTHS) - 1 else None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.blocks(x)
            return self.downsample(x) if self.downsample is not None else x

    class PatchEmbed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj: nn.Module
            if stem == "conv":  # CTransPath's ConvStem
                width = EMBED_DIM // 8
                self.proj = nn.Sequential(
                    nn.Conv2d(3, width, 3, 2, 1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(),
                    nn.Conv2d(width, width * 2, 3, 2, 1, bias=False),
                    nn.BatchNorm2d(width * 2),
                    nn.ReLU(),
                    nn.Conv2d(width * 2, EMBED_DIM, 1),
                )
            else:
                self.proj = nn.Conv2d(3, EMBED_DIM, 4, 4)
            self.norm = nn.LayerNorm(EMBED_DIM)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.norm(self.proj(x).flatten(2).transpose(1, 2))

    class SwinTransformer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patch_embed = PatchEmbed()
            side = img_size // 4
            self.layers = nn.Sequential(*(Stage(i, side // 2**i) for i in range(len(DEPTHS))))
            self.norm = nn.LayerNorm(EMBED_DIM * 2 ** (len(DEPTHS) - 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.norm(self.layers(self.patch_embed(x))).mean(dim=1)

    return SwinTransformer()


def ctranspath_state(loaded: Any) -> dict[str, Any]:
    """The state dict of a CTransPath checkpoint (``{"model": ...}`` or the dict itself),
    without the ``attn_mask`` buffers the network computes itself, or a head."""
    state = loaded.get("model", loaded) if isinstance(loaded, dict) else loaded
    return {k: v for k, v in state.items() if "attn_mask" not in k and not k.startswith("head.")}
