"""Pictures of each dashboard's panel layout (docs/img/dashboards-*.png), drawn from the JSON model.

Not a screenshot (no Grafana runs here): each panel is drawn at its gridPos with its title,
visualisation type and datasource, so a reader sees what the dashboard holds and where.
Needs the ``png`` extra (matplotlib).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["render_layout"]

_COLORS = {"prometheus": "#e6522c", "elasticsearch": "#00bfb3", "jaeger": "#60d0e4", "row": "#cccccc"}


def render_layout(model: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    panels = model["panels"]
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    fig, ax = plt.subplots(figsize=(12, max(3.0, height * 0.22)), dpi=110)
    ax.set_xlim(0, 24)
    ax.set_ylim(height, -1.6)
    ax.axis("off")
    ax.text(0, -0.9, model["title"], fontsize=13, weight="bold", va="center")
    # "\\$": a bare $ would start matplotlib's mathtext
    variables = ", ".join("\\$" + v["name"] for v in model.get("templating", {}).get("list", []))
    if variables:
        ax.text(24, -0.9, f"variables: {variables}", fontsize=9, ha="right", va="center", color="#555555")
    for panel in panels:
        g = panel["gridPos"]
        kind = "row" if panel["type"] == "row" else (panel.get("datasource") or {}).get("type", "")
        color = _COLORS.get(kind, "#999999")
        box = FancyBboxPatch(
            (g["x"] + 0.1, g["y"] + 0.1),
            g["w"] - 0.2,
            g["h"] - 0.2,
            boxstyle="round,pad=0,rounding_size=0.25",
            facecolor=color,
            alpha=0.18 if kind != "row" else 0.35,
            edgecolor=color,
            linewidth=1.2,
        )
        ax.add_patch(box)
        ax.text(g["x"] + 0.4, g["y"] + 0.55, panel.get("title", ""), fontsize=8.5, weight="bold", va="top")
        if kind != "row":
            queries = len(panel.get("targets", []))
            ax.text(
                g["x"] + 0.4,
                g["y"] + g["h"] - 0.45,
                f"{panel['type']} · {kind} · {queries} quer{'y' if queries == 1 else 'ies'}",
                fontsize=7.5,
                color="#333333",
                va="bottom",
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
