"""Where things go on the picture: panel boxes in inches, a palette, text that fits its box.

Every drawer gets a :class:`Box` (inches from the figure's top-left corner) and draws inside it
only, so panels never overlap whatever they hold. Text is measured with the figure's own
renderer (:meth:`Canvas.text_width`), which is what lets legends, tables and log lines be cut
to fit before they are drawn instead of spilling over their neighbours.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["GRAFANA_COLORS", "PALETTE", "Box", "Canvas", "char_width", "fit", "threshold_color"]

#: Grafana's classic palette, in the order it gives series their colours.
PALETTE = (
    "#7EB26D",
    "#EAB839",
    "#6ED0E0",
    "#EF843C",
    "#E24D42",
    "#1F78C1",
    "#BA43A9",
    "#705DA0",
    "#508642",
    "#CCA300",
    "#447EBC",
    "#C15C17",
    "#890F02",
    "#0A437C",
    "#6D1F62",
    "#584477",
)
#: Grafana's named colours as thresholds use them.
GRAFANA_COLORS = {
    "green": "#56A64B",
    "red": "#E02F44",
    "yellow": "#F2CC0C",
    "orange": "#FF9830",
    "blue": "#3274D9",
    "purple": "#A352CC",
    "text": "#24292E",
}
BACKGROUND = "#F4F5F8"
PANEL = "#FFFFFF"
BORDER = "#D8D9DA"
TEXT = "#24292E"
MUTED = "#6E7681"


def char_width(fontsize: float, mono: bool = False) -> float:
    """A generous average width of one character in inches at ``fontsize`` points, for sizing
    before there is text to measure (DejaVu Sans as Agg draws it: about 0.6 em)."""
    return fontsize / 72 * (0.62 if mono else 0.64)


def fit(text: str, chars: int) -> str:
    """``text`` cut to ``chars`` characters, with an ellipsis when cut."""
    text = " ".join(str(text).split())
    if chars <= 1:
        return "…" if text else ""
    return text if len(text) <= chars else text[: chars - 1] + "…"


def threshold_color(value: float, defaults: Mapping[str, Any]) -> str:
    """The colour of the highest threshold step at or below ``value`` (Grafana's default steps:
    green, then red from 80)."""
    steps = (defaults.get("thresholds") or {}).get("steps") or [
        {"color": "green", "value": None},
        {"color": "red", "value": 80},
    ]
    color = steps[0].get("color", "green")
    for step in steps[1:]:
        if step.get("value") is not None and value >= step["value"]:
            color = step.get("color", color)
    return GRAFANA_COLORS.get(color, color)


@dataclass(frozen=True)
class Box:
    """A rectangle in inches, ``y`` measured down from the top of the figure."""

    x: float
    y: float
    w: float
    h: float

    def inset(self, left: float = 0.0, top: float = 0.0, right: float = 0.0, bottom: float = 0.0) -> Box:
        return Box(self.x + left, self.y + top, max(0.01, self.w - left - right), max(0.01, self.h - top - bottom))


class Canvas:
    """A matplotlib figure addressed in inches from its top-left corner."""

    def __init__(self, width: float, height: float, dpi: float = 100) -> None:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.width, self.height = width, height
        self.figure = Figure(figsize=(width, height), dpi=dpi, facecolor=BACKGROUND)
        self._renderer = FigureCanvasAgg(self.figure).get_renderer()
        self._widths: dict[tuple[str, float, bool, bool], float] = {}

    def text_width(self, text: str, size: float, *, bold: bool = False, mono: bool = False) -> float:
        """How wide ``text`` is drawn, in inches."""
        key = (text, size, bold, mono)
        if key not in self._widths:
            from matplotlib.font_manager import FontProperties

            prop = FontProperties(size=size, weight="bold" if bold else "normal", family="monospace" if mono else None)
            width, _, _ = self._renderer.get_text_width_height_descent(text, prop, ismath=False)
            self._widths[key] = width / self.figure.dpi
        return self._widths[key]

    def fit(self, text: str, inches: float, size: float, *, bold: bool = False, mono: bool = False) -> str:
        """``text`` cut (with an ellipsis) to be at most ``inches`` wide at ``size`` points."""
        text = " ".join(str(text).split())
        if self.text_width(text, size, bold=bold, mono=mono) <= inches:
            return text
        low, high = 0, len(text)
        while low < high:  # the longest prefix that fits with its ellipsis
            mid = (low + high + 1) // 2
            if self.text_width(text[:mid] + "…", size, bold=bold, mono=mono) <= inches:
                low = mid
            else:
                high = mid - 1
        return text[:low] + "…" if low else ""

    def rect(self, box: Box) -> list[float]:
        """``box`` as matplotlib's [left, bottom, width, height] in figure fractions."""
        return [box.x / self.width, 1 - (box.y + box.h) / self.height, box.w / self.width, box.h / self.height]

    def axes(self, box: Box, gid: str) -> Any:
        """Axes filling ``box``; ``gid`` names them (tests find a panel's axes by it)."""
        ax = self.figure.add_axes(self.rect(box))
        ax.set_gid(gid)
        return ax

    def area(self, box: Box, gid: str) -> Any:
        """Invisible axes over ``box`` whose data coordinates are inches from the box's top-left
        corner: text and shapes are placed in inches."""
        ax = self.axes(box, gid)
        ax.set_xlim(0, box.w)
        ax.set_ylim(box.h, 0)
        ax.axis("off")
        return ax
