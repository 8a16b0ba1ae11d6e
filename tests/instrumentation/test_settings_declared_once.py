"""Every setting is declared once, in ``PARAMS``: ``Settings`` has one field per entry and no defaults of its own.

Defaults used to be written twice (``PARAMS`` and the ``Settings`` dataclass), free to drift.
"""

from __future__ import annotations

from dataclasses import MISSING, fields

import pytest

from meshwatch._config import PARAMS, Settings, resolve


def test_settings_has_exactly_the_declared_settings() -> None:
    assert {f.name for f in fields(Settings)} == set(PARAMS)


def test_settings_carries_no_defaults_of_its_own() -> None:
    with_defaults = [f.name for f in fields(Settings) if f.default is not MISSING or f.default_factory is not MISSING]
    assert with_defaults == []


def test_an_empty_environment_resolves_to_the_declared_defaults() -> None:
    settings = resolve({}, environ={})
    assert {name: getattr(settings, name) for name in PARAMS} == {name: p.default for name, p in PARAMS.items()}


def test_a_setting_missing_from_settings_is_caught() -> None:
    """Positive control: ``resolve`` cannot build ``Settings`` when ``PARAMS`` names a setting it lacks."""
    from meshwatch import _config

    planted = dict(PARAMS, planted_setting=_config.ConfigParam(("MESHWATCH_PLANTED",), 1))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_config, "PARAMS", planted)
        with pytest.raises(TypeError, match="planted_setting"):
            _config.resolve({}, environ={})
