"""Per-resolution architectures: the BigGAN stage tables (Brock et al. 2019, BigGAN-PyTorch).

A stage is one residual block; `resolution` is the size of its output feature map, which is
where an attention block after it would run. Widths are multiples of `ch`.
"""
from __future__ import annotations

from dataclasses import dataclass

# Width multipliers, input of the first stage first. G starts from a 4x4 map and doubles each stage.
G_WIDTHS = {
    32: [4, 4, 4, 4],
    64: [16, 16, 8, 4, 2],
    128: [16, 16, 8, 4, 2, 1],
    256: [16, 16, 8, 8, 4, 2, 1],
    512: [16, 16, 8, 8, 4, 2, 1, 1],
}
# D from the RGB image down; the last stage keeps the resolution (no downsampling).
D_WIDTHS = {
    32: [4, 4, 4, 4],
    64: [1, 2, 4, 8, 16],
    128: [1, 2, 4, 8, 16, 16],
    256: [1, 2, 4, 8, 8, 16, 16],
    512: [1, 1, 2, 4, 8, 8, 16, 16],
}
D_DOWNSAMPLES = {32: 2}  # D32 only halves twice (BigGAN-PyTorch); the others down to 4x4
RESOLUTIONS = tuple(sorted(G_WIDTHS))
BOTTOM = 4  # G's first feature map is 4x4


@dataclass(frozen=True)
class Stage:
    in_ch: int
    out_ch: int
    resolution: int  # of the output
    resample: bool  # up (G) or down (D)


def check_resolution(resolution: int) -> None:
    if resolution not in G_WIDTHS:
        raise ValueError(f"resolution must be one of {list(RESOLUTIONS)}, got {resolution}")


def generator_stages(resolution: int, ch: int) -> list[Stage]:
    check_resolution(resolution)
    widths = [w * ch for w in G_WIDTHS[resolution]]
    return [
        Stage(widths[i], widths[i + 1], BOTTOM * 2 ** (i + 1), resample=True)
        for i in range(len(widths) - 1)
    ]


def discriminator_stages(resolution: int, ch: int) -> list[Stage]:
    check_resolution(resolution)
    widths = [3] + [w * ch for w in D_WIDTHS[resolution]]
    n_down = D_DOWNSAMPLES.get(resolution, len(widths) - 2)
    stages, size = [], resolution
    for i in range(len(widths) - 1):
        down = i < n_down
        size = size // 2 if down else size
        stages.append(Stage(widths[i], widths[i + 1], size, resample=down))
    return stages


def check_attention_resolutions(requested: list[int], stages: list[Stage], network: str, resolution: int) -> None:
    """Every requested attention resolution must be the output size of some stage."""
    available = sorted({s.resolution for s in stages})
    missing = sorted(set(requested) - set(available))
    if missing:
        note = ""
        if network == "D" and resolution in missing:
            note = (
                f" (D's first block already halves the image, so D{resolution} never sees a "
                f"{resolution}x{resolution} feature map; the SMYRF paper puts 128x128 attention in G only)"
            )
        raise ValueError(
            f"{network}{resolution}: no block outputs {missing} px; attention_resolutions must be "
            f"chosen from {available}{note}"
        )
