"""Per-layer layout and config validation."""

import pytest

from filtertron.config import ConfigError, load_config, model_config
from filtertron.model.layout import layer_specs


def kinds(**kw):
    return [s.attention for s in layer_specs(model_config(n_layers=4, **kw))]


def test_layout_last_k_list_all():
    assert kinds() == ["softmax"] * 4
    assert kinds(attention=dict(kind="twicing", twicing=dict(layers=2))) == [
        "softmax",
        "softmax",
        "twicing",
        "twicing",
    ]
    assert kinds(
        attention=dict(kind="twicing", twicing=dict(layers=[0, 3], base="bilateral")),
        position="none",
    ) == ["twicing", "bilateral", "bilateral", "twicing"]
    assert kinds(attention=dict(kind="twicing")) == ["twicing"] * 4
    assert kinds(attention=dict(kind="twicing", twicing=dict(layers=0))) == ["softmax"] * 4


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["model.n_layerz=3"], r"model\.n_layerz: unknown key"),
        (["model.n_layers=two"], r"model\.n_layers='two': expected an integer"),
        (["model.n_heads=5"], r"model\.n_heads=5: must divide d_model=128"),
        (
            ["model.attention.kind=twicing", "model.attention.dropout=0.1"],
            r"model\.attention\.dropout=0\.1: twicing",
        ),
        (["model.attention.kind=bilateral"], r"model\.position='learned': bilateral"),
        (
            ["model.attention.kind=twicing", "model.attention.twicing.layers=[0, 7]"],
            r"model\.attention\.twicing\.layers.*outside",
        ),
        (["model.attention.impl=cuda"], r"model\.attention\.impl='cuda': expected one of"),
        (["parallel.tp=3"], r"parallel\.tp=3: must divide model\.n_heads=4"),
        (["parallel.pp=8"], r"parallel\.pp=8: cannot exceed model\.n_layers=4"),
        (["parallel.pp=2", "parallel.zero_stage=3"], r"parallel\.zero_stage=3"),
        (["train.lr=-1"], r"train\.lr=-1\.0: must be positive"),
        (["model.residual.t_init=1.5"], r"model\.residual\.t_init=1\.5"),
        (["nosuch.key=1"], r"nosuch: unknown key"),
        (["model=3"], r"model=3: expected a mapping"),
    ],
)
def test_bad_config_names_the_field(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_bilateral_with_absolute_positions_when_explicit():
    cfg = load_config(
        None,
        [
            "model.attention.kind=bilateral",
            "model.attention.bilateral.allow_absolute_position=true",
        ],
    )
    assert cfg.model.position == "learned"


def test_yaml_file_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  n_layers: 3\n  attention:\n    kind: twicing\ntrain:\n  lr: 0.001\n")
    cfg = load_config(p, ["train.lr=0.002", "model.attention.twicing.layers=1"])
    assert (cfg.model.n_layers, cfg.train.lr, cfg.model.attention.twicing.layers) == (3, 0.002, 1)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_config_accepts_exactly_the_registered_impls():
    """model.attention.impl is validated from a Literal; it must list the kernel registry."""
    import typing

    from filtertron.config import AttentionConfig
    from filtertron.kernels.registry import IMPLS

    allowed = typing.get_args(typing.get_type_hints(AttentionConfig)["impl"])
    assert set(allowed) == {"auto", *IMPLS}
