"""Image grids for validation samples, comparisons and the README."""

from __future__ import annotations

from PIL import Image, ImageDraw

from ..provenance import derive_provenance


def make_grid(
    images: list[Image.Image], cols: int | None = None, labels: list[str] | None = None, pad: int = 2
) -> Image.Image:
    """Tile equally sized grayscale images into one image (row-major), with optional captions under each tile.

    If any tile carries a provenance record (a synthetic image), the grid gets one too: operation ``"grid"``,
    ``derived_from`` = one record per tile (None for untagged tiles), so that saving it keeps the SYNTHETIC tag.
    """
    if not images:
        raise ValueError("make_grid needs at least one image.")
    cols = cols or len(images)
    rows = (len(images) + cols - 1) // cols
    width, height = images[0].size
    caption = 14 if labels else 0
    grid = Image.new("L", (cols * (width + pad) + pad, rows * (height + caption + pad) + pad), color=0)
    draw = ImageDraw.Draw(grid)
    for index, image in enumerate(images):
        row, col = divmod(index, cols)
        x, y = pad + col * (width + pad), pad + row * (height + caption + pad)
        grid.paste(image.convert("L").resize((width, height)), (x, y))
        if labels:
            draw.text((x + 2, y + height + 1), str(labels[index])[: max(4, width // 6)], fill=255)
    details = {"rows": rows, "cols": cols, "tiles": len(images)}
    if labels:
        details["labels"] = [str(label) for label in labels]
    return derive_provenance(grid, list(images), "grid", **details)
