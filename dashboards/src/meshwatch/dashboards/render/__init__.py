"""Dashboards drawn from live data, for the documentation: ``meshwatch-dashboards render-png``.

No Grafana runs on a machine without Docker, so the pictures of docs/img/dashboards-*.png are
drawn here with matplotlib from what the query runner (``meshwatch.dashboards.queries``) brings
back for each panel: time series as lines with legends and units, stat and gauge panels as big
numbers, tables and logs as text, the heatmap as a heatmap and the node graph as a graph, each
at its panel's grid position. Needs the ``png`` extra (matplotlib).

    run = run_dashboard(model, Backends(prometheus=..., elasticsearch=..., jaeger=...), time_range=tr)
    render_dashboard(model, run.results, Path("dashboards-service-overview.png"), time_range=tr,
                     variables=run.variables)
"""

from .dashboard import DRAWERS, Rendered, dashboard_figure, render_dashboard, save_png

__all__ = ["DRAWERS", "Rendered", "dashboard_figure", "render_dashboard", "save_png"]
