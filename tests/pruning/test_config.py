"""VistaConfig: defaults from the paper, validation errors that name the field, tau rule, helpers."""
import dataclasses

import pytest

from vista import VistaConfig


def test_defaults_match_paper():
    c = VistaConfig()
    assert c.retention == 0.15
    assert c.tau is None
    assert c.scout_ratio == 0.85
    assert c.knn_k == 7
    assert c.alpha == 0.5
    assert c.min_frame_ratio == 0.10
    assert c.newline == "one"
    assert c.backend == "auto"


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"retention": 0}, ValueError, "retention"),
        ({"retention": 0.0}, ValueError, "retention"),
        ({"retention": -0.2}, ValueError, "retention"),
        ({"retention": 1.5}, ValueError, "retention"),
        ({"retention": float("nan")}, ValueError, "retention"),
        ({"retention": "0.5"}, TypeError, "retention"),
        ({"retention": True}, TypeError, "retention"),
        ({"knn_k": 0}, ValueError, "knn_k"),
        ({"knn_k": -3}, ValueError, "knn_k"),
        ({"knn_k": 2.0}, TypeError, "knn_k"),
        ({"alpha": -0.1}, ValueError, "alpha"),
        ({"alpha": 1.1}, ValueError, "alpha"),
        ({"newline": "x"}, ValueError, "newline"),
        ({"backend": "cuda"}, ValueError, "backend"),
        ({"tau": 2}, ValueError, "tau"),
        ({"tau": -1.5}, ValueError, "tau"),
        ({"tau": float("inf")}, ValueError, "tau"),
        ({"scout_ratio": 1.5}, ValueError, "scout_ratio"),
        ({"min_frame_ratio": -0.1}, ValueError, "min_frame_ratio"),
    ],
)
def test_invalid_config_names_the_field(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        VistaConfig(**kwargs)


@pytest.mark.parametrize("retention", [1e-6, 0.05, 0.2, 1, 1.0])
def test_valid_retentions_accepted_and_stored_as_float(retention):
    c = VistaConfig(retention=retention)
    assert isinstance(c.retention, float) and c.retention == float(retention)


@pytest.mark.parametrize("newline", ["one", "none"])
@pytest.mark.parametrize("backend", ["auto", "triton", "torch"])
def test_valid_choices(newline, backend):
    c = VistaConfig(newline=newline, backend=backend)
    assert (c.newline, c.backend) == (newline, backend)


@pytest.mark.parametrize(
    "retention, expected",
    [(0.05, 0.95), (0.15, 0.95), (0.1999, 0.95), (0.20, 0.80), (0.25, 0.80), (1.0, 0.80)],
)
def test_effective_tau_rule(retention, expected):
    assert VistaConfig(retention=retention).effective_tau() == expected


@pytest.mark.parametrize("tau", [-1.0, 0.0, 0.5, 0.99, 1.0])
def test_explicit_tau_overrides_rule(tau):
    assert VistaConfig(retention=0.15, tau=tau).effective_tau() == tau
    assert VistaConfig(retention=0.5, tau=tau).effective_tau() == tau


def test_frozen_and_replace():
    c = VistaConfig(retention=0.3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.retention = 0.5  # type: ignore[misc]
    d = c.replace(retention=0.5, knn_k=3)
    assert (c.retention, c.knn_k) == (0.3, 7)
    assert (d.retention, d.knn_k) == (0.5, 3)
    with pytest.raises(ValueError, match="retention"):
        c.replace(retention=2.0)  # replace re-validates


def test_to_dict_round_trip():
    c = VistaConfig(retention=0.25, tau=0.9, knn_k=5, newline="none", backend="torch")
    d = c.to_dict()
    assert d["retention"] == 0.25 and d["tau"] == 0.9 and d["knn_k"] == 5
    assert VistaConfig(**d) == c


def test_newline_grid_is_rejected_naming_one():
    # transformers' LLaVA video layout has a single newline token a video; the paper's per-row
    # "Grid" layout does not exist there, so the old name "grid" must not silently mean "one"
    with pytest.raises(ValueError, match='newline="one"'):
        VistaConfig(newline="grid")
    with pytest.raises(ValueError, match="'one'"):
        VistaConfig(newline="x")
