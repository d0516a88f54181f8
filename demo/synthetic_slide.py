"""Synthetic H&E-like pyramidal slides, written as Aperio-SVS-compatible tiled JPEG TIFFs.

Tissue islands of pink stroma with scattered purple nuclei sit on white glass; inside some islands a
"tumour" region packs large, dark nuclei. The generator returns the tumour and tissue masks, so the
demo model can be trained on known labels and its heatmap checked by eye.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GLASS = np.array([242, 240, 244], np.float32)
STROMA = np.array([231, 160, 196], np.float32)
NUCLEUS = np.array([92, 52, 140], np.float32)
TUMOUR_NUCLEUS = np.array([62, 30, 110], np.float32)


@dataclass
class SyntheticSlide:
    rgb: np.ndarray
    tissue: np.ndarray  # bool, at ``mask_downsample``
    tumour: np.ndarray  # bool, at ``mask_downsample``
    mask_downsample: int


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Value noise in [0, 1]: a coarse random grid upsampled with bilinear interpolation."""
    gh, gw = h // cell + 2, w // cell + 2
    grid = rng.random((gh, gw), dtype=np.float32)
    ys = np.arange(h, dtype=np.float32) / cell
    xs = np.arange(w, dtype=np.float32) / cell
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def make_slide(width: int, height: int, seed: int, mask_downsample: int = 16) -> SyntheticSlide:
    """Render one slide at level 0 (``height x width x 3`` uint8) with its label masks."""
    rng = np.random.default_rng(seed)
    mh, mw = height // mask_downsample, width // mask_downsample
    # Tissue: a few smooth blobs thresholded; tumour: a smaller blob field inside the tissue.
    blobs = _smooth_noise(rng, mh, mw, max(8, min(mh, mw) // 3))
    tissue = blobs > 0.55
    tumour = tissue & (_smooth_noise(rng, mh, mw, max(6, min(mh, mw) // 5)) > 0.62)
    up = np.ones((mask_downsample, mask_downsample), bool)
    tissue_full = np.kron(tissue, up)[:height, :width]
    tumour_full = np.kron(tumour, up)[:height, :width]
    rgb = np.empty((height, width, 3), np.uint8)
    for y0 in range(0, height, 1024):  # strips keep the float temporaries small
        y1 = min(height, y0 + 1024)
        h = y1 - y0
        nuclei_field = _smooth_noise(rng, h, width, 6)
        t, u = tissue_full[y0:y1], tumour_full[y0:y1]
        nuclei = t & (nuclei_field > np.where(u, 0.58, 0.80))
        img = np.where(t[..., None], STROMA, GLASS)
        img = np.where(nuclei[..., None], np.where(u[..., None], TUMOUR_NUCLEUS, NUCLEUS), img)
        img += rng.normal(0, 6, img.shape).astype(np.float32)
        rgb[y0:y1] = img.clip(0, 255).astype(np.uint8)
    return SyntheticSlide(rgb, tissue, tumour, mask_downsample)


def write_svs(
    path: str,
    rgb: np.ndarray,
    mpp: float,
    tile: int = 256,
    levels: int = 3,
    compression: str = "jpeg",
) -> None:
    """Write an Aperio-style pyramid: tiled levels at 1, 4, 16, ... with MPP in the text;
    ``compression`` ``jpeg`` (quality 90) or ``jpeg2000`` (40 dB PSNR, as lossy as a scanner's)."""
    import tifffile
    from PIL import Image

    height, width = rgb.shape[:2]
    desc = (
        f"Aperio Image Library v12.0.15 \r\n{width}x{height} [0,0 {width}x{height}] "
        f"({tile}x{tile}) JPEG/RGB Q=90|AppMag = 20|MPP = {mpp}|Filename = synthetic"
    )
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        level = 90 if compression == "jpeg" else 40
        opts = {
            "photometric": "rgb",
            "compression": compression,
            "compressionargs": {"level": level},
        }
        per_cm = (1e4 / mpp, 1e4 / mpp)  # as scanners write them: readers that skip the text
        tif.write(
            rgb,
            tile=(tile, tile),
            description=desc,
            subfiletype=0,
            resolution=per_cm,
            resolutionunit="CENTIMETER",
            **opts,
        )
        thumb = np.asarray(Image.fromarray(rgb).resize((max(1, width // 32), max(1, height // 32))))
        tif.write(
            thumb,
            description=f"Aperio Image Library v12.0.15 \r\n{width}x{height} -> "
            f"{thumb.shape[1]}x{thumb.shape[0]} - ",
            **opts,
        )
        level_img = rgb
        for i in range(1, levels):
            h, w = level_img.shape[0] // 4, level_img.shape[1] // 4
            if min(h, w) < tile:
                break
            level_img = np.asarray(Image.fromarray(level_img).resize((w, h), Image.BOX))
            tif.write(
                level_img,
                tile=(tile, tile),
                subfiletype=1,
                description=(
                    f"Aperio Image Library v12.0.15 \r\n{width}x{height} -> {w}x{h} - "
                    f"|AppMag = 20|MPP = {mpp * 4**i}"
                ),
                **opts,
            )
