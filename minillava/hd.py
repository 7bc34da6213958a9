"""The grid HD encoder (LLaVA-1.5-HD, paper section 3.4 and Fig. 2): any resolution through encoder-sized cells.

A CLIP encoder sees one square of fixed size (its "cell", e.g. 224 px). To read small detail in a large image,
LLaVA-1.5-HD splits the image into a grid of such cells, encodes each cell on its own, and stitches the cell
features back into one large feature map:

    image (W, H) -> choose a grid of cols x rows cells -> resize (keeping the aspect ratio) to fit the grid,
    pad the rest -> split into cells -> encode all cells (one batched call) -> stitch: (rows*P, cols*P, D)
    -> connector -> drop feature rows/columns that lie wholly on padding -> a learned row-end embedding after
    every feature row -> flatten
    + global context: the whole image padded to a square, resized to one cell, encoded (P*P features), placed
      *before* the grid features, so the LM reads the overview first, then the detail.

P = cell size / patch size (16 for CLIP-L/14 at 224). The number of image tokens depends on the image size;
``num_image_tokens`` computes it without running the encoder, so the prompt formatter can expand ``<image>``.

The grid images are padded at the right and bottom (the content sits at the top-left corner), so the features
kept are exactly the first ceil(h / patch) rows and ceil(w / patch) columns of the stitched map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from PIL import Image
from torch import nn

from .encoder import expand_to_square, to_rgb


def default_grids(max_cells: int = 6) -> list[tuple[int, int]]:
    """Every (cols, rows) grid with at most ``max_cells`` cells: 1x1, 1x2, 2x1, ..., 2x2, 2x3, 3x2 for 6."""
    return [(c, r) for r in range(1, max_cells + 1) for c in range(1, max_cells + 1) if c * r <= max_cells]


def choose_grid(width: int, height: int, cell: int, grids: list[tuple[int, int]] | None = None,
                keep: float = 0.9) -> tuple[int, int]:
    """The (cols, rows) grid for an image of ``width`` x ``height`` pixels and cells of ``cell`` pixels.

    Rule: (1) keep the detail: the *effective resolution* of a grid is the number of the image's own pixels it
    keeps after the aspect-preserving resize, min(w' * h', W * H) (upscaling adds none); (2) don't waste: among
    the grids that keep at least ``keep`` (90%) of the best effective resolution, take the one with the
    fewest cells, then the least padding.

    >>> choose_grid(224, 224, 224), choose_grid(448, 448, 224), choose_grid(672, 448, 224)
    ((1, 1), (2, 2), (3, 2))
    >>> choose_grid(1000, 100, 224), choose_grid(225, 225, 224), choose_grid(10, 10, 224)
    ((5, 1), (1, 1), (1, 1))
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    grids = grids or default_grids()

    def effective(grid):
        s = min(grid[0] * cell / width, grid[1] * cell / height)
        return min(int(width * s) * int(height * s), width * height)

    best = max(effective(g) for g in grids)
    candidates = [g for g in grids if effective(g) >= keep * best]
    return min(candidates, key=lambda g: (g[0] * g[1], g[0] * g[1] * cell * cell - effective(g)))


def fitted_size(width: int, height: int, grid: tuple[int, int], cell: int) -> tuple[int, int]:
    """The image's size after the aspect-preserving resize into the grid (at least 1 pixel each way)."""
    s = min(grid[0] * cell / width, grid[1] * cell / height)
    return max(1, min(grid[0] * cell, round(width * s))), max(1, min(grid[1] * cell, round(height * s)))


@dataclass
class HDConfig:
    """Options of the grid HD encoder (saved in ``MiniLlavaConfig.hd``)."""

    max_cells: int = 6
    grids: list[list[int]] = field(default_factory=list)  # (cols, rows) pairs; empty: default_grids(max_cells)
    global_context: bool = True
    row_end: bool = True

    def grid_list(self) -> list[tuple[int, int]]:
        return [tuple(g) for g in self.grids] or default_grids(self.max_cells)


def feature_layout(width: int, height: int, cell: int, patch: int, config: HDConfig) -> dict:
    """Where the features of an image of ``width`` x ``height`` come from: grid, kept rows/cols, token count."""
    grid = choose_grid(width, height, cell, config.grid_list())
    w, h = fitted_size(width, height, grid, cell)
    rows, cols = math.ceil(h / patch), math.ceil(w / patch)  # feature rows/cols that touch the image
    per_cell = (cell // patch) ** 2
    tokens = rows * (cols + int(config.row_end)) + (per_cell if config.global_context else 0)
    return {"grid": grid, "fitted": (w, h), "rows": rows, "cols": cols, "tokens": tokens,
            "removed": grid[0] * grid[1] * per_cell - rows * cols}


def num_image_tokens(width: int, height: int, cell: int, patch: int, config: HDConfig) -> int:
    """The exact number of image tokens of an image of this size (what the prompt formatter expands to)."""
    return feature_layout(width, height, cell, patch, config)["tokens"]


def split_into_cells(image: Image.Image, config: HDConfig, cell: int, fill: tuple[int, int, int]) -> list[Image.Image]:
    """[global view (if enabled)] + the grid's cells in row-major order, each ``cell`` x ``cell`` pixels."""
    image = to_rgb(image)
    grid = choose_grid(image.width, image.height, cell, config.grid_list())
    w, h = fitted_size(image.width, image.height, grid, cell)
    canvas = Image.new("RGB", (grid[0] * cell, grid[1] * cell), fill)
    canvas.paste(image.resize((w, h), Image.BICUBIC), (0, 0))  # content top-left, padding right and bottom
    cells = [canvas.crop((c * cell, r * cell, (c + 1) * cell, (r + 1) * cell))
             for r in range(grid[1]) for c in range(grid[0])]
    if config.global_context:
        cells.insert(0, expand_to_square(image, fill).resize((cell, cell), Image.BICUBIC))
    return cells


class HDGrid(nn.Module):
    """Turns the cell features of each image into its sequence of HD image tokens (holds the row-end vector)."""

    def __init__(self, config: HDConfig, cell: int, patch: int, llm_dim: int):
        super().__init__()
        self.config, self.cell, self.patch = config, cell, patch
        self.side = cell // patch  # P: features per cell side
        # The row-end embedding lives in the LM's embedding space and trains with the connector.
        self.row_end = nn.Parameter(torch.randn(llm_dim) / llm_dim ** 0.5) if config.row_end else None

    def layout(self, width: int, height: int) -> dict:
        return feature_layout(width, height, self.cell, self.patch, self.config)

    def assemble(self, features: torch.Tensor, image_sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Projected features of all cells (n_cells_total, P*P, H), images in order -> one (N_i, H) per image."""
        out, start = [], 0
        P = self.side
        for width, height in image_sizes:
            layout = self.layout(width, height)
            cols, rows = layout["grid"]
            n = cols * rows + int(self.config.global_context)
            image_features = features[start:start + n]  # (n, P*P, H)
            start += n
            parts = []
            if self.config.global_context:
                parts.append(image_features[0])  # (P*P, H)
                image_features = image_features[1:]
            # (rows*cols, P*P, H) -> (rows, cols, P, P, H) -> (rows*P, cols*P, H): one stitched feature map
            grid = image_features.view(rows, cols, P, P, -1).permute(0, 2, 1, 3, 4).reshape(rows * P, cols * P, -1)
            grid = grid[:layout["rows"], :layout["cols"]]  # drop rows/columns lying wholly on padding
            if self.row_end is not None:
                row_end = self.row_end.to(grid.dtype).expand(grid.shape[0], 1, -1)
                grid = torch.cat([grid, row_end], dim=1)  # (rows', cols' + 1, H)
            parts.append(grid.reshape(-1, grid.shape[-1]))
            out.append(torch.cat(parts))
            assert out[-1].shape[0] == layout["tokens"], (out[-1].shape, layout)
        if start != features.shape[0]:
            raise ValueError(f"got features of {features.shape[0]} cells but the image sizes need {start}")
        return out


# ----------------------------------------------------------------------------- pictures for the notebooks


def draw_grid(image: Image.Image, cell: int, patch: int, config: HDConfig | None = None, ax=None):
    """Draw the image as the HD encoder sees it: resized into the chosen grid, cell borders, the padding
    (hatched), the feature rows/columns kept, and the token count in the title. Returns the matplotlib axes."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    config = config or HDConfig()
    image = to_rgb(image)
    layout = feature_layout(image.width, image.height, cell, patch, config)
    (cols, rows), (w, h) = layout["grid"], layout["fitted"]
    ax = ax or plt.subplots(figsize=(4, 4))[1]
    ax.imshow(image.resize((w, h), Image.BICUBIC), extent=(0, w, h, 0))
    ax.add_patch(Rectangle((0, 0), cols * cell, rows * cell, fill=False, edgecolor="black", lw=1.5))
    if w < cols * cell:
        ax.add_patch(Rectangle((w, 0), cols * cell - w, rows * cell, hatch="//", fill=False, edgecolor="grey"))
    if h < rows * cell:
        ax.add_patch(Rectangle((0, h), w, rows * cell - h, hatch="//", fill=False, edgecolor="grey"))
    for c in range(1, cols):
        ax.axvline(c * cell, color="white", lw=2)
    for r in range(1, rows):
        ax.axhline(r * cell, color="white", lw=2)
    kept = Rectangle((0, 0), layout["cols"] * patch, layout["rows"] * patch, fill=False, edgecolor="tab:red",
                     lw=1, ls="--", label="features kept")
    ax.add_patch(kept)
    ax.set_xlim(0, cols * cell)
    ax.set_ylim(rows * cell, 0)
    ax.set_title(f"{image.width}x{image.height} -> {cols}x{rows} cells, {layout['tokens']} tokens")
    ax.set_xlabel("x (pixels after resize)")
    ax.set_ylabel("y (pixels after resize)")
    ax.legend(loc="lower right", fontsize=7)
    return ax
