"""What caching did to a dataset beyond the usual resize: files skipped, converted to RGB, upscaled,
cropped to a square.

Reported with one line per kind when the cache is built, stored in the cache's JSON sidecar, and
summarised in one line whenever the cache is reused, so a dataset's odd files are never handled
silently.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

NAMES_SHOWN = 5
NAMES_RECORDED = 50
# PIL modes in words; any other mode is shown as PIL names it.
MODE_NAMES = {
    "1": "1-bit",
    "L": "grayscale",
    "LA": "grayscale+alpha",
    "I": "32-bit grayscale",
    "I;16": "16-bit grayscale",
    "F": "float grayscale",
    "P": "palette",
    "PA": "palette+alpha",
}


def first_names(names: list[str], total: Optional[int] = None) -> str:
    """`a, b, c` or `a, ..., e and 7 more`, for `total` names of which `names` are the first."""
    total = len(names) if total is None else total
    more = f" and {total - NAMES_SHOWN} more" if total > NAMES_SHOWN else ""
    return ", ".join(names[:NAMES_SHOWN]) + more


def counted(count: int, noun: str = "image") -> str:
    return f"{count} {noun}{'s' if count != 1 else ''}"


@dataclass
class CacheReport:
    resolution: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, why it could not be read)
    converted: dict[str, list[str]] = field(default_factory=dict)  # original mode -> names
    upscaled: list[str] = field(default_factory=list)  # shorter side below the resolution
    cropped: list[str] = field(default_factory=list)  # not square: only the centre square is kept

    def skip(self, name: str, reason: str) -> None:
        self.skipped.append((name, reason))

    def note(self, name: str, mode: str, size: tuple[int, int]) -> None:
        """Record what caching does to the readable image `name` of this mode and (width, height)."""
        if mode != "RGB":
            self.converted.setdefault(mode, []).append(name)
        if min(size) < self.resolution:
            self.upscaled.append(name)
        if size[0] != size[1]:
            self.cropped.append(name)

    def lines(self) -> list[str]:
        """One line per kind of change made to readable images (skipped files are warned about apart)."""
        lines = []
        if self.converted:
            total = sum(len(names) for names in self.converted.values())
            kinds = "; ".join(
                f"{MODE_NAMES.get(mode, mode)} {len(names)}: {first_names(names)}"
                for mode, names in sorted(self.converted.items())
            )
            lines.append(f"converted {counted(total)} to RGB ({kinds})")
        if self.upscaled:
            lines.append(
                f"upscaled {counted(len(self.upscaled))} smaller than {self.resolution} px, which will look "
                f"blurry: {first_names(self.upscaled)}"
            )
        if self.cropped:
            square = "its centre square" if len(self.cropped) == 1 else "their centre squares"
            lines.append(f"cropped {counted(len(self.cropped), 'non-square image')} to {square}: {first_names(self.cropped)}")
        return lines

    def record(self) -> dict:
        """The sidecar's fields: counts and the first names of each kind."""

        def kind(names: list[str]) -> dict:
            return {"count": len(names), "names": names[:NAMES_RECORDED]}

        return {
            "skipped_count": len(self.skipped),
            "skipped": [name for name, _ in self.skipped],  # all: class labels need the cache's exact listing
            "converted": {mode: kind(names) for mode, names in sorted(self.converted.items())},
            "upscaled": kind(self.upscaled),
            "cropped": kind(self.cropped),
        }


def summary(record: dict) -> Optional[str]:
    """One line on what caching changed, from a sidecar's fields; None when nothing was changed.

    Sidecars written before conversions were recorded only have the skipped files.
    """
    parts = []
    if record.get("skipped_count"):
        names = first_names(record["skipped"], record["skipped_count"])
        parts.append(f"{counted(record['skipped_count'], 'unreadable file')} skipped ({names})")
    converted = record.get("converted") or {}
    if converted:
        total = sum(kind["count"] for kind in converted.values())
        modes = ", ".join(MODE_NAMES.get(mode, mode) for mode in converted)
        parts.append(f"{counted(total)} converted to RGB ({modes})")
    if (record.get("upscaled") or {}).get("count"):
        parts.append(f"{counted(record['upscaled']['count'])} upscaled from below {record['resolution']} px")
    if (record.get("cropped") or {}).get("count"):
        parts.append(f"{counted(record['cropped']['count'], 'non-square image')} cropped")
    return "; ".join(parts) or None
