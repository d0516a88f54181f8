"""A zoomable viewer page per slide: the slide as a Deep Zoom (DZI) pyramid, with the models'
overlays (heatmaps per class, class masks) toggled on and off over it, an opacity control, a
scale bar and a legend.

The pyramid is cut from the slide down to ``--viewer_mpp`` (2 µm/px by default; never finer
than the slide, and at most ``MAX_SIDE`` px on the long side), in strips of ``TILE`` rows: each
strip is read at the coarsest pyramid level at least as fine, resized, cut into JPEG tiles, and
halved into the next level's buffer, so memory holds about one strip per level whatever the
slide. Its size is about ``(slide width x height at --viewer_mpp) x 4/3`` JPEG pixels: a
20 x 15 mm tissue section at 2 µm/px is 75 Mpx before compression (``bench/README.md``).

The page loads from the file system with no network: OpenSeadragon (from the npm registry at
set-up, ``viewer/package.json``) is copied beside the pages, and the DZI descriptor is inline,
so no XMLHttpRequest is made (browsers refuse those on ``file://``); tiles and overlays are
images. Slide ids are HTML-escaped, the page's data is JSON inside a non-executable script
element (``<`` escaped), paths are relative, and nothing of a slide's metadata is written.
"""

from __future__ import annotations

import html
import io
import json
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from transforms.io.schemas import file_name, safe_name

VIEWER = "viewer"
"""The folder of the viewer pages, their tiles, overlays and library (one per run)."""
TILE = 256
JPEG_QUALITY = 80
VIEWER_MPP = 2.0
"""Default of ``--viewer_mpp``: the µm/px of the viewer's deepest level."""
MAX_SIDE = 16384
"""The deepest level's long side at most, in px (a coarser level past it)."""
MAX_OVERLAY_SIDE = 2048
"""An overlay image's long side at most (class masks are subsampled to it)."""
ASSETS_ENV = "PATHBEAM_VIEWER_ASSETS"
"""Where OpenSeadragon's build folder is (``openseadragon.min.js`` and ``images/``); default:
``viewer/node_modules/openseadragon/build/openseadragon`` in the repository."""
LIB = "lib"
"""The folder beside the pages that the library is copied to."""


def assets_dir() -> Path:
    """OpenSeadragon's build folder, or ``FileNotFoundError`` saying how to install it."""
    default = Path(__file__).resolve().parents[2] / "viewer/node_modules/openseadragon/build"
    folder = Path(os.environ.get(ASSETS_ENV) or default / "openseadragon")
    if not (folder / "openseadragon.min.js").is_file():
        raise FileNotFoundError(
            f"the viewer's library is not at {folder}: run `npm ci --prefix viewer` (setup.sh "
            f"does), or set {ASSETS_ENV}"
        )
    return folder


@dataclass(frozen=True)
class ViewerImage:
    """A slide's DZI pyramid: its deepest level's size, and what one of its pixels spans."""

    name: str
    width: int
    height: int
    downsample: float
    """Level-0 pixels per pixel of the deepest level."""
    mpp: float | None
    tiles: int
    bytes: int


@dataclass
class Overlay:
    """One toggleable layer over the slide: an image whose top-left is the slide's, spanning
    ``span_px`` level-0 pixels across."""

    label: str
    src: str
    span_px: float
    legend: list[tuple[str, str]] = field(default_factory=list)
    """(name, ``#rrggbb``) per entry; a heatmap's is its scale's two ends."""


def viewer_downsample(width: int, height: int, slide_mpp: float | None, viewer_mpp: float) -> float:
    """Level-0 pixels per pixel of the deepest viewer level: ``viewer_mpp`` / the slide's (at
    least 1), coarser if the long side would pass ``MAX_SIDE``."""
    ds = max(1.0, viewer_mpp / slide_mpp) if slide_mpp else 1.0
    return max(ds, max(width, height) / MAX_SIDE)


class _Level:
    """One DZI level being written: a buffer of rows, cut into tile rows as they fill."""

    def __init__(self, index: int, width: int, write: _TileWriter) -> None:
        self.index, self.width, self.row, self._write = index, width, 0, write
        self._rows: list[np.ndarray] = []
        self._held = 0

    def push(self, strip: np.ndarray) -> Iterator[np.ndarray]:
        """Add rows; yield each full tile row written (for the level below)."""
        self._rows.append(strip)
        self._held += len(strip)
        while self._held >= TILE:
            rows = np.concatenate(self._rows)
            yield self._emit(rows[:TILE])
            self._rows, self._held = [rows[TILE:]], len(rows) - TILE

    def flush(self) -> Iterator[np.ndarray]:
        if self._held:
            yield self._emit(np.concatenate(self._rows))
            self._rows, self._held = [], 0

    def _emit(self, rows: np.ndarray) -> np.ndarray:
        for col in range(0, self.width, TILE):
            self._write(self.index, col // TILE, self.row, rows[:, col : col + TILE])
        self.row += 1
        return rows


class _TileWriter:
    def __init__(self, folder: str) -> None:
        self.folder, self.tiles, self.bytes = folder.rstrip("/"), 0, 0

    def __call__(self, level: int, col: int, row: int, pixels: np.ndarray) -> None:
        from PIL import Image

        from transforms.core.remote_io import open_uri

        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(pixels)).save(
            buffer, format="JPEG", quality=JPEG_QUALITY
        )
        data = buffer.getvalue()
        with open_uri(f"{self.folder}/{level}/{col}_{row}.jpg", "wb", auto_mkdir=True) as f:
            f.write(data)
        self.tiles += 1
        self.bytes += len(data)


def _halve(rows: np.ndarray) -> np.ndarray:
    from PIL import Image

    h, w = rows.shape[:2]
    size = (max(1, -(-w // 2)), max(1, -(-h // 2)))
    return np.asarray(Image.fromarray(rows).resize(size, Image.Resampling.BOX))


def cut_dzi(
    uri: str, folder: str, name: str, viewer_mpp: float, slide_mpp: float | None = None
) -> ViewerImage:
    """Cut the slide at ``uri`` into a DZI pyramid in ``<folder>/<name>_files/``
    (``slide_mpp``: the slide's mpp when its manifest gave one)."""
    from PIL import Image

    from transforms.slides.geometry import choose_level
    from transforms.slides.reader import open_slide, read_level_region, slide_geometry

    slide = open_slide(uri)
    try:
        geom = slide_geometry(slide, slide_mpp)
        ds = viewer_downsample(geom.width_px, geom.height_px, geom.mpp, viewer_mpp)
        width, height = max(1, round(geom.width_px / ds)), max(1, round(geom.height_px / ds))
        deepest = max(0, math.ceil(math.log2(max(width, height))))
        writer = _TileWriter(f"{folder.rstrip('/')}/{name}_files")
        levels, w = [], width
        for index in range(deepest, -1, -1):
            levels.append(_Level(index, w, writer))
            w = max(1, -(-w // 2))
        read_level = choose_level(geom.level_downsamples, ds)
        level_ds = geom.level_downsamples[read_level]
        level_w, level_h = geom.level_dims[read_level]
        for top in range(0, height, TILE):
            rows = min(TILE, height - top)
            y0 = int(top * ds / level_ds)
            y1 = min(level_h, max(y0 + 1, round((top + rows) * ds / level_ds)))
            strip = read_level_region(slide, read_level, 0, y0, level_w, y1 - y0)
            strip = np.asarray(
                Image.fromarray(strip).resize((width, rows), Image.Resampling.BILINEAR)
            )
            _cascade(levels, 0, strip)
        for i in range(len(levels)):
            for done in levels[i].flush():
                _cascade(levels, i + 1, _halve(done))
    finally:
        slide.close()
    mpp = geom.mpp * ds if geom.mpp else None
    return ViewerImage(name, width, height, ds, mpp, writer.tiles, writer.bytes)


def _cascade(levels: list[_Level], i: int, rows: np.ndarray) -> None:
    """Push ``rows`` into level ``i``; each full tile row it writes goes, halved, below."""
    if i >= len(levels):
        return
    for done in levels[i].push(rows):
        _cascade(levels, i + 1, _halve(done))


def png(rgba: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgba).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def hex_colour(rgb: Sequence[float] | np.ndarray) -> str:
    return "#" + "".join(f"{int(v):02x}" for v in rgb[:3])


def copy_assets(folder: str) -> None:
    """Copy OpenSeadragon (its script and button images) into ``<folder>/lib`` (once)."""
    from transforms.core.remote_io import filesystem, open_uri

    source = assets_dir()
    target = f"{folder.rstrip('/')}/{LIB}"
    fs, path = filesystem(target)
    if fs.exists(f"{path}/openseadragon.min.js"):
        return
    files = [source / "openseadragon.min.js", *sorted((source / "images").glob("*.png"))]
    for src in files:
        relative = src.relative_to(source).as_posix()
        with open(src, "rb") as f, open_uri(f"{target}/{relative}", "wb", auto_mkdir=True) as out:
            shutil.copyfileobj(f, out)


def page_uri(folder: str, slide_id: str) -> str:
    return f"{folder.rstrip('/')}/{file_name(slide_id, None, '.html')}"


def image_name(slide_id: str) -> str:
    return safe_name(slide_id)


def write_page(
    folder: str,
    slide_id: str,
    image: ViewerImage,
    slide_dims: tuple[int, int],
    overlays: list[Overlay],
) -> str:
    """Write the slide's viewer page into ``folder`` (beside its tiles); returns its URI."""
    from transforms.core.remote_io import open_uri

    slide_width_px, slide_height_px = slide_dims
    config = {
        "tiles": f"{image.name}_files/",
        "width": image.width,
        "height": image.height,
        "tileSize": TILE,
        "mpp": image.mpp,
        "slideWidthPx": slide_width_px,
        "slideHeightPx": slide_height_px,
        "overlays": [asdict(o) for o in overlays],
    }
    data = json.dumps(config).replace("<", "\\u003c").replace(">", "\\u003e")
    page = _PAGE.format(
        title=html.escape(slide_id, quote=True),
        data=data,
        lib=LIB,
        size=f"{image.width:,} x {image.height:,} px, {image.tiles:,} tiles, "
        f"{image.bytes / 1e6:.2f} MB"
        + (f", {image.mpp:.3g} µm/px at the deepest level" if image.mpp else ""),
    )
    uri = page_uri(folder, slide_id)
    with open_uri(uri, "w", auto_mkdir=True, encoding="utf-8") as f:
        f.write(page)
    return uri


_PAGE = """<!doctype html><html lang=en><head><meta charset=utf-8>
<title>{title}</title><style>
body{{margin:0;font:13px/1.4 system-ui,sans-serif;display:flex;height:100vh}}
#view{{flex:1;background:#fff;position:relative}} #side{{width:260px;padding:10px;overflow:auto;
border-left:1px solid #ddd}} h1{{font-size:15px;word-break:break-all;margin:0 0 6px}}
.layer{{margin:8px 0}} .sw{{display:inline-block;width:11px;height:11px;margin-right:4px;
vertical-align:-1px;border:1px solid #0003}} .muted{{color:#777}}
#scale{{position:absolute;left:12px;bottom:12px;background:#fffd;padding:2px 6px;z-index:9}}
#bar{{height:4px;background:#222;margin-top:2px}}
</style></head><body><div id=view><div id=scale><span id=scalelabel></span><div id=bar></div>
</div></div><div id=side><h1>{title}</h1><div class=muted>{size}</div><div id=layers></div>
</div><script type="application/json" id=config>{data}</script>
<script src="{lib}/openseadragon.min.js"></script><script>
const cfg = JSON.parse(document.getElementById('config').textContent);
const viewer = OpenSeadragon({{id: 'view', prefixUrl: '{lib}/images/', drawer: 'canvas',
  showNavigator: true, maxZoomPixelRatio: 4, crossOriginPolicy: false,
  imageSmoothingEnabled: false,
  tileSources: {{Image: {{xmlns: 'http://schemas.microsoft.com/deepzoom/2008', Url: cfg.tiles,
    Format: 'jpg', Overlap: '0', TileSize: String(cfg.tileSize),
    Size: {{Width: String(cfg.width), Height: String(cfg.height)}}}}}}}});
window.viewer = viewer;
window.overlayItems = {{}};
const layers = document.getElementById('layers');
cfg.overlays.forEach((o, i) => {{
  const box = document.createElement('div'); box.className = 'layer';
  const on = document.createElement('input'); on.type = 'checkbox'; on.id = 'layer' + i;
  const label = document.createElement('label'); label.htmlFor = on.id;
  label.textContent = ' ' + o.label;
  const alpha = document.createElement('input'); alpha.type = 'range'; alpha.min = 0;
  alpha.max = 1; alpha.step = 0.05; alpha.value = 0.6; alpha.id = 'opacity' + i;
  const legend = document.createElement('div');
  o.legend.forEach(([name, colour]) => {{
    const item = document.createElement('div'); const sw = document.createElement('span');
    sw.className = 'sw'; sw.style.background = colour; item.appendChild(sw);
    item.appendChild(document.createTextNode(name)); legend.appendChild(item); }});
  box.append(on, label, document.createElement('br'), alpha, legend); layers.appendChild(box);
  const show = () => {{
    const item = window.overlayItems[i];
    if (item) {{ item.setOpacity(on.checked ? Number(alpha.value) : 0); return; }}
    if (!on.checked) return;
    viewer.addTiledImage({{tileSource: {{type: 'image', url: o.src}}, x: 0, y: 0,
      width: o.span_px / cfg.slideWidthPx, opacity: Number(alpha.value),
      success: e => {{  // drawn over the slide only: cells at its edges run past it
        const perPx = e.item.source.dimensions.x / o.span_px;
        e.item.setClip(new OpenSeadragon.Rect(0, 0, cfg.slideWidthPx * perPx,
          cfg.slideHeightPx * perPx));
        window.overlayItems[i] = e.item; }}}});
  }};
  on.addEventListener('change', show); alpha.addEventListener('input', show);
}});
const nice = [1, 2, 5];
function scale() {{
  if (!cfg.mpp || !viewer.world.getItemAt(0)) return;
  const zoom = viewer.world.getItemAt(0).viewportToImageZoom(viewer.viewport.getZoom(true));
  const umPerScreenPx = cfg.mpp / zoom;
  let best = 1;
  for (let p = -2; p < 7; p++) for (const n of nice) {{
    const um = n * 10 ** p; if (um / umPerScreenPx <= 160) best = um; }}
  document.getElementById('bar').style.width = (best / umPerScreenPx) + 'px';
  document.getElementById('scalelabel').textContent =
    best >= 1000 ? (best / 1000) + ' mm' : best + ' µm';
}}
viewer.addHandler('animation', scale); viewer.addHandler('open', scale);
</script></body></html>
"""


def _write_png(folder: str, name: str, rgba: np.ndarray) -> str:
    """Write an overlay PNG into the viewer's folder; returns its path relative to the pages."""
    from transforms.core.remote_io import open_uri

    with open_uri(f"{folder.rstrip('/')}/{name}", "wb", auto_mkdir=True) as f:
        f.write(png(rgba))
    return name


def heatmap_overlays(
    folder: str,
    slide_id: str,
    model_name: str,
    class_names: Sequence[str],
    probs: np.ndarray,
    painted: np.ndarray,
    cell_px: int,
) -> list[Overlay]:
    """One overlay per class of a classifier's heatmap raster (``H x W x C`` mean
    probabilities, ``cell_px`` level-0 px per cell): the class's probability on the heatmap
    colour scale, clear where no patch was."""
    from transforms.slides.heatmaps import colour_scale

    out = []
    span = probs.shape[1] * cell_px
    scale = [(f"P = {p:g}", hex_colour(colour_scale(np.array(p)))) for p in (0.0, 0.5, 1.0)]
    for c, name in enumerate(class_names[: probs.shape[2]]):
        rgba = np.zeros((*probs.shape[:2], 4), np.uint8)
        rgba[..., :3] = colour_scale(probs[..., c]).round().astype(np.uint8)
        rgba[..., 3] = np.where(painted, 255, 0)
        src = _write_png(folder, file_name(slide_id, model_name, f".heatmap{c}.png"), rgba)
        out.append(Overlay(f"{model_name}: P({name})", src, span, scale))
    return out


def mask_overlay(
    folder: str,
    slide_id: str,
    model_name: str,
    mask: dict,
    class_names: Sequence[str],
    palette: np.ndarray,
) -> Overlay:
    """A segmentation's stitched mask (its ``stitch`` record), coloured by class and clear off
    tissue, from the first level of its OME-TIFF pyramid that fits ``MAX_OVERLAY_SIDE``."""
    from transforms.slides.reader import open_slide

    tiff = open_slide(mask["mask_uri"])
    try:
        dims = tiff.level_dimensions
        level = next((i for i, (w, h) in enumerate(dims) if max(w, h) <= MAX_OVERLAY_SIDE), -1)
        level %= len(dims)
        w, h = dims[level]
        labels = np.asarray(tiff.read(level, 0, 0, w, h))
    finally:
        tiff.close()
    labels = labels[..., 0] if labels.ndim == 3 else labels
    colours = np.zeros((256, 4), np.uint8)
    for c in range(min(len(class_names), 255)):
        colours[c + 1] = (*palette[c % len(palette)].astype(np.uint8), 255)
    src = _write_png(folder, file_name(slide_id, model_name, ".mask.png"), colours[labels])
    span = w * 2**level * mask["mask_px"]  # level k's pixel spans 2^k mask pixels
    legend = [(n, hex_colour(palette[c % len(palette)])) for c, n in enumerate(class_names)]
    return Overlay(f"{model_name}: class mask", src, span, legend)


def _boxes_overlay(
    folder: str,
    info: dict,
    boxes: Sequence[tuple[int, int, int, tuple[int, int, int, int]]],
    suffix: str,
) -> tuple[str, float]:
    """Level-0 boxes ``(x, y, size, rgba)`` painted on a raster of cells the size of the
    smallest (at most ``MAX_OVERLAY_SIDE`` cells across); its PNG's name and level-0 span."""
    width, height = info["width_px"], info["height_px"]
    cell = max(min(b[2] for b in boxes), -(-max(width, height) // MAX_OVERLAY_SIDE), 1)
    rgba = np.zeros((-(-height // cell), -(-width // cell), 4), np.uint8)
    for x, y, size, colour in boxes:
        rgba[y // cell : -(-(y + size) // cell), x // cell : -(-(x + size) // cell)] = colour
    src = _write_png(folder, file_name(info["slide_id"], None, suffix), rgba)
    return src, rgba.shape[1] * cell


def failed_overlay(folder: str, info: dict, boxes: Sequence[tuple[int, int, int]]) -> Overlay:
    """The patches that became dead letters, in red."""
    src, span = _boxes_overlay(folder, info, [(*b, FAILED) for b in boxes], ".failed.png")
    label = f"dead letters: {len(boxes):,} patches"
    return Overlay(label, src, span, [("could not be used", "#d62728")])


def gate_overlay(
    folder: str, info: dict, model: str, gate: str, verdicts: Sequence[dict]
) -> Overlay:
    """A gate's verdicts on its patches for ``model``: passed in green, held back in grey."""
    boxes = [
        (v["x_px"], v["y_px"], v["size_px"], PASSED if v["passed"] else HELD) for v in verdicts
    ]
    src, span = _boxes_overlay(folder, info, boxes, f".gate-{model}.png")
    passed = sum(1 for v in verdicts if v["passed"])
    label = f"gate {gate} -> {model}: {passed:,} of {len(verdicts):,} gate patches pass"
    return Overlay(label, src, span, [("passed", "#2ca02c"), ("held back", "#7f7f7f")])


FAILED = (214, 39, 40, 255)
PASSED = (44, 160, 44, 255)
HELD = (127, 127, 127, 255)


def build_page(folder: str, info: dict, overlays: list[Overlay], viewer_mpp: float) -> str:
    """Cut the slide's DZI pyramid, copy the library, and write its viewer page (``info``:
    the slide's planning record: id, URI, width and mpp)."""
    copy_assets(folder)
    slide_id = info["slide_id"]
    image = cut_dzi(info["uri"], folder, image_name(slide_id), viewer_mpp, info["mpp"])
    return write_page(folder, slide_id, image, (info["width_px"], info["height_px"]), overlays)
