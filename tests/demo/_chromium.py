"""Headless Chromium driven through its chromedriver (selenium): the console used as a person uses it.

tests/console loads pages with ``chromium --dump-dom`` (no clicks); on the running demo the tests
click: an exemplar diamond on a latency chart, a log line's trace link, an alert's runbook. Both are
Debian's packages (``meshwatch-stack install chromium`` installs ``chromium`` and
``chromium-driver``, of one version); selenium is given both paths, so it never looks for a
browser or driver of its own. Screenshots go to a temporary folder, or to the folder named by
``MESHWATCH_DEMO_SCREENSHOTS`` (``docs/img`` for the pictures the docs show).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

WINDOW = (1600, 1300)


@contextmanager
def chromium() -> Iterator[Any]:
    """One headless Chromium session (a fresh profile), closed at the end."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    from meshwatch.stack.installer import BackendMissing, binary

    try:
        browser, driver_path = binary("chromium"), binary("chromium", "chromedriver")
    except BackendMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    with tempfile.TemporaryDirectory(prefix="meshwatch-chromium-") as profile:
        options = Options()
        options.binary_location = str(browser)
        for argument in (
            "--headless=new",
            "--no-sandbox",  # tests may run as root
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={profile}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
        ):
            options.add_argument(argument)
        driver = webdriver.Chrome(options=options, service=Service(executable_path=str(driver_path)))
        try:
            yield driver
        finally:
            driver.quit()


def wait_for(check: Callable[[], T], *, timeout: float, what: str, interval: float = 0.5) -> T:
    """``check()`` until it returns something truthy; on timeout fail saying what and the last answer."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except Exception as exc:  # a page still changing under the script (stale element, …)
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}"[:3000])
        time.sleep(interval)


def open_console(driver: Any, url: str, *, timeout: float = 60) -> None:
    """Load the console page afresh at ``url`` (a ``#tab…`` address) and wait until it has started."""
    driver.get("about:blank")
    driver.get(url)
    wait_for(
        lambda: driver.execute_script("return document.body.dataset.ready") == "true",
        timeout=timeout,
        what=f"the console page at {url} to start",
    )


def screenshot(driver: Any, name: str, fallback: Path) -> Path:
    """The page as it is now, as ``name`` in ``$MESHWATCH_DEMO_SCREENSHOTS`` (or ``fallback``)."""
    folder = Path(os.environ.get("MESHWATCH_DEMO_SCREENSHOTS") or fallback)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    assert driver.save_screenshot(str(path)), f"no screenshot written to {path}"
    assert path.stat().st_size > 20_000, f"{path} is nearly empty"
    return path


def table_rows(driver: Any, css: str) -> list[tuple[list[str], Any]]:
    """The rows of the table at ``css`` (``#logs-results``): each row's cell texts, and the row."""
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, f"{css} tbody tr")
    return [([cell.text for cell in row.find_elements(By.TAG_NAME, "td")], row) for row in rows]


def jaeger_trace(jaeger_url: str, trace_id: str) -> dict[str, Any] | None:
    """The trace from Jaeger's query API, or None where Jaeger has none (404: tail sampling dropped it)."""
    import urllib.error

    from .conftest import get_json

    try:
        found = get_json(f"{jaeger_url}/api/traces/{trace_id}").get("data") or []
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise
    return found[0] if found else None
