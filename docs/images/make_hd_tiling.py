"""Draw docs/images/hd_tiling.png (run from the repository root: python docs/images/make_hd_tiling.py)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import cbook  # noqa: E402
from PIL import Image  # noqa: E402

from minillava.hd import draw_grid  # noqa: E402

photo = Image.open(cbook.get_sample_data("grace_hopper.jpg"))
fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
draw_grid(photo, 224, 14, ax=axes[0])
draw_grid(photo.crop((0, 150, 512, 330)), 224, 14, ax=axes[1])
draw_grid(photo.resize((200, 200)), 224, 14, ax=axes[2])
fig.suptitle("LLaVA-1.5-HD tiling with 224 px cells (CLIP-L/14-224): grid, padding (hatched), features kept")
fig.tight_layout()
fig.savefig("docs/images/hd_tiling.png", dpi=64)
