"""Push the folder, datasources and dashboards to a running Grafana over its HTTP API (grafana-client).

The push is a plan of plain requests (method, path, body) first, so ``--dry-run`` prints
exactly what would be sent and the tests check the bodies' shape; ``apply`` then sends the
same plan through grafana-client. Re-running is safe: datasources and the folder are
updated in place by uid, dashboards are saved with ``overwrite``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .build import dashboards
from .datasources import FOLDER, FOLDER_UID, Urls, datasources

__all__ = ["Request", "apply", "plan"]


@dataclass(frozen=True)
class Request:
    """One Grafana HTTP API call: ``create`` is tried when ``path`` answers 404 (create-or-update)."""

    kind: str  # folder | datasource | dashboard
    name: str
    method: str
    path: str
    body: dict[str, Any]
    create_method: str | None = None
    create_path: str | None = None


def plan(urls: Urls | None = None, *, message: str = "meshwatch-dashboards push") -> list[Request]:
    """Every request, in order: the folder, then the datasources, then the dashboards."""
    requests = [
        Request(
            "folder",
            FOLDER,
            "PUT",
            f"/api/folders/{FOLDER_UID}",
            {"title": FOLDER, "uid": FOLDER_UID, "overwrite": True},
            create_method="POST",
            create_path="/api/folders",
        )
    ]
    for ds in datasources(urls):
        requests.append(
            Request(
                "datasource",
                ds["name"],
                "PUT",
                f"/api/datasources/uid/{ds['uid']}",
                ds,
                create_method="POST",
                create_path="/api/datasources",
            )
        )
    for name, model in dashboards().items():
        body = {"dashboard": model, "folderUid": FOLDER_UID, "overwrite": True, "message": message}
        requests.append(Request("dashboard", name, "POST", "/api/dashboards/db", body))
    return requests


def apply(
    requests: list[Request], url: str, token: str, *, progress: Callable[[str], None] = print, timeout: float = 30.0
) -> None:
    """Send the plan to Grafana at ``url`` with an API token (service account token).

    Raises grafana_client's GrafanaException (with Grafana's message) on the first failure.
    """
    from grafana_client import GrafanaApi
    from grafana_client.client import GrafanaClientError

    api = GrafanaApi.from_url(url, credential=token, timeout=timeout)
    for request in requests:
        if request.kind == "folder":
            try:
                api.folder.get_folder(FOLDER_UID)
                api.folder.update_folder(FOLDER_UID, title=request.body["title"], overwrite=True)
                action = "updated"
            except GrafanaClientError as exc:
                if getattr(exc, "status_code", None) != 404:
                    raise
                api.folder.create_folder(request.body["title"], uid=FOLDER_UID)
                action = "created"
        elif request.kind == "datasource":
            try:
                api.datasource.get_datasource_by_uid(request.body["uid"])
                api.datasource.update_datasource_by_uid(request.body["uid"], request.body)
                action = "updated"
            except GrafanaClientError as exc:
                if getattr(exc, "status_code", None) != 404:
                    raise
                api.datasource.create_datasource(request.body)
                action = "created"
        else:
            api.dashboard.update_dashboard(request.body)
            action = "saved"
        progress(f"{request.kind} {request.name}: {action}")
