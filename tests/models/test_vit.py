"""The timm-compatible ViT (``models/vit.py``) against an independent implementation of the same
network: transformers' DINOv2 (pre-norm blocks, fused-qkv attention split into query/key/value,
LayerScale, GELU or SwiGLU MLP), with the same random weights mapped to its names."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transforms.models.vit import build, shape_of  # noqa: E402

DIM, HEADS, DEPTH, PATCH, GRID = 64, 4, 2, 16, 14


def _to_dinov2(state: dict) -> dict:
    out = {
        "embeddings.cls_token": state["cls_token"],
        "embeddings.mask_token": torch.zeros(1, DIM),
        "embeddings.position_embeddings": state["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
        "layernorm.weight": state["norm.weight"],
        "layernorm.bias": state["norm.bias"],
    }
    for i in range(DEPTH):
        b, h = f"blocks.{i}.", f"encoder.layer.{i}."
        q, k, v = state[b + "attn.qkv.weight"].chunk(3)
        qb, kb, vb = state[b + "attn.qkv.bias"].chunk(3)
        for name, w, bias in (("q", q, qb), ("k", k, kb), ("v", v, vb)):
            out[h + f"attention.{name}_proj.weight"] = w
            out[h + f"attention.{name}_proj.bias"] = bias
        out[h + "attention.o_proj.weight"] = state[b + "attn.proj.weight"]
        out[h + "attention.o_proj.bias"] = state[b + "attn.proj.bias"]
        for n in ("norm1", "norm2"):
            out[h + f"{n}.weight"], out[h + f"{n}.bias"] = (
                state[b + f"{n}.weight"],
                state[b + f"{n}.bias"],
            )
        out[h + "layer_scale1.lambda1"] = state[b + "ls1.gamma"]
        out[h + "layer_scale2.lambda1"] = state[b + "ls2.gamma"]
        if f"{b}glu" in state:  # timm packs gate and up in one fc1: silu(first half) * second
            for p in ("weight", "bias"):
                gate, up = state[b + f"mlp.fc1.{p}"].chunk(2)
                out[h + f"mlp.gate_proj.{p}"], out[h + f"mlp.up_proj.{p}"] = gate, up
                out[h + f"mlp.down_proj.{p}"] = state[b + f"mlp.fc2.{p}"]
        else:
            for ours in ("fc1", "fc2"):
                for p in ("weight", "bias"):
                    out[h + f"mlp.{ours}.{p}"] = state[b + f"mlp.{ours}.{p}"]
    return out


@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
def test_the_vit_computes_what_transformers_dinov2_computes(mlp):
    torch.manual_seed(0)
    glu = mlp == "swiglu"
    hidden = 176 if glu else 256  # DINOv2's SwiGLU width for mlp_ratio 4: (int(256*2/3)+7)//8*8
    shapes = {
        "cls_token": (1, 1, DIM),
        "pos_embed": (1, 1 + GRID * GRID, DIM),
        "patch_embed.proj.weight": (DIM, 3, PATCH, PATCH),
        "blocks.0.mlp.fc1.weight": (hidden * 2 if glu else hidden, DIM),
        "blocks.0.ls1.gamma": (DIM,),
        f"blocks.{DEPTH - 1}.norm1.weight": (DIM,),
    }
    ours = build(shape_of(shapes), HEADS, mlp, "cls", no_embed_class=False).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    state = ours.state_dict()
    if glu:
        state.update({f"blocks.{i}.glu": torch.zeros(()) for i in range(DEPTH)})
    config = transformers.Dinov2Config(
        hidden_size=DIM,
        num_hidden_layers=DEPTH,
        num_attention_heads=HEADS,
        mlp_ratio=4,
        patch_size=PATCH,
        image_size=PATCH * GRID,
        layer_norm_eps=1e-6,
        use_swiglu_ffn=glu,
        hidden_act="gelu",
    )
    theirs = transformers.Dinov2Model(config).eval()
    missing, unexpected = theirs.load_state_dict(_to_dinov2(state), strict=False)
    assert not unexpected and not missing
    x = torch.randn(2, 3, PATCH * GRID, PATCH * GRID)
    with torch.no_grad():
        expected = theirs(pixel_values=x).pooler_output
        got = ours(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_conchs_attentional_pooler_computes_what_its_reference_formulation_computes():
    """CONCH v1.5's pooler against a line-by-line transcription of its published forward
    (einops' rearrange/repeat written as reshapes): one query over the trunk's tokens."""
    from transforms.models.vit import VitShape, build_conch

    torch.manual_seed(0)
    shape = VitShape(1024, 16, 1, 0, 197, 4096, True)
    pool = build_conch(shape).attn_pool_contrast.eval().double()  # float64: the order of sums
    with torch.no_grad():
        for p in pool.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(3, 50, 1024, dtype=torch.float64)

    def reference(x):  # x: b n d -> b 1 n d, and so on, as published
        x = x[:, None]
        b, m, heads = x.shape[0], x.shape[1], 8
        q = pool.query[None, None].expand(b, m, -1, -1)
        x = pool.ln_k(x)
        q = pool.to_q(pool.ln_q(q))
        k, v = pool.to_kv(x).chunk(2, dim=-1)

        def split(t):  # b t n (h d) -> b h t n d
            return t.reshape(*t.shape[:3], heads, -1).permute(0, 3, 1, 2, 4)

        q, k, v = split(q), split(k), split(v)
        q = q * (768 // heads) ** -0.5
        sim = torch.einsum("...id,...jd->...ij", q, k)
        sim = sim - sim.amax(dim=-1, keepdim=True)
        out = torch.einsum("...ij,...jd->...id", sim.softmax(dim=-1), v)
        out = out.permute(0, 2, 3, 1, 4).reshape(b, m, 1, 768)  # b h t n d -> b t n (h d)
        return pool.to_out(out).squeeze(1)[:, 0]

    with torch.no_grad():
        torch.testing.assert_close(pool(x), reference(x), atol=1e-10, rtol=1e-10)


def test_the_swin_computes_what_transformers_swin_computes():
    """Swin-T (``models/swin.py`` with the plain 4 x 4 patch embedding) against transformers'
    SwinModel with the same random weights mapped to its names: window attention with the
    relative-position bias, shifted windows and their mask, patch merging, the mean pool."""
    from transforms.models.swin import DEPTHS, build

    torch.manual_seed(0)
    ours = build(stem="patch").eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    state = ours.state_dict()
    mapped = {
        "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
        "embeddings.norm.weight": state["patch_embed.norm.weight"],
        "embeddings.norm.bias": state["patch_embed.norm.bias"],
        "layernorm.weight": state["norm.weight"],
        "layernorm.bias": state["norm.bias"],
    }
    names = {
        "norm1": "layernorm_before",
        "norm2": "layernorm_after",
        "attn.proj": "attention.o_proj",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
    }
    for i, depth in enumerate(DEPTHS):
        for j in range(depth):
            ours_b, theirs_b = f"layers.{i}.blocks.{j}.", f"encoder.layers.{i}.blocks.{j}."
            for a, b in names.items():
                for p in ("weight", "bias"):
                    mapped[f"{theirs_b}{b}.{p}"] = state[f"{ours_b}{a}.{p}"]
            attn = theirs_b + "attention."
            mapped[attn + "relative_position_bias.relative_position_bias_table"] = state[
                ours_b + "attn.relative_position_bias_table"
            ]
            for p in ("weight", "bias"):
                q, k, v = state[f"{ours_b}attn.qkv.{p}"].chunk(3)
                mapped[f"{attn}q_proj.{p}"], mapped[f"{attn}k_proj.{p}"] = q, k
                mapped[f"{attn}v_proj.{p}"] = v
        if i < len(DEPTHS) - 1:
            for part in ("norm.weight", "norm.bias", "reduction.weight"):
                mapped[f"encoder.layers.{i}.downsample.{part}"] = state[
                    f"layers.{i}.downsample.{part}"
                ]
    config = transformers.SwinConfig(
        image_size=224,
        patch_size=4,
        embed_dim=96,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        window_size=7,
        layer_norm_eps=1e-5,
    )
    theirs = transformers.SwinModel(config).eval()
    missing, unexpected = theirs.load_state_dict(mapped, strict=False)
    assert not unexpected and not missing
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(
            ours(x), theirs(pixel_values=x).pooler_output, atol=1e-5, rtol=1e-5
        )
