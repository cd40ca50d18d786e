from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from pipelines.common.config import ConfigError, as_overrides, dump_config, flatten, load_config, with_values


@dataclass
class Optim:
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.99)


@dataclass
class Experiment:
    name: str = "demo"
    degradation: Literal["BI", "BD"] = "BI"
    data_dir: Path = Path("data/sample")
    val_clips: list[str] = field(default_factory=list)
    optim: Optim = field(default_factory=Optim)
    max_iters: int | None = None


def test_yaml_then_overrides_in_order(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("name: reds\noptim:\n  lr: 1e-4\nval_clips: ['000', '011']\n")
    cfg = load_config(Experiment, path, ["optim.betas=[0.8, 0.9]", "max_iters=10", "name=again"])
    assert cfg == Experiment(
        name="again", val_clips=["000", "011"], optim=Optim(lr=1e-4, betas=(0.8, 0.9)), max_iters=10
    )


def test_unknown_key_names_it_suggests_and_lists_allowed(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("optim:\n  lrr: 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(Experiment, path)
    message = str(err.value)
    assert "optim.lrr" in message and "Did you mean 'lr'" in message and "lr, betas" in message
    assert str(path) in message


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["degradation=XX"], "not one of ['BI', 'BD']"),
        (["max_iters=ten"], "max_iters"),
        (["optim.lr=fast"], "optim.lr: expected float"),
        (["optim.betas=[1]"], "expected 2 items"),
        (["optim=3"], "expected a mapping"),
        (["noequals"], "expected KEY=VALUE"),
        (["name=x", "name.sub=1"], "'name' is a value"),
    ],
)
def test_bad_values_are_clear_errors(overrides, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(Experiment, None, overrides)
    assert fragment in str(err.value)


def test_missing_file_and_non_mapping_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Experiment, tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(Experiment, bad)


def test_dump_round_trips_and_flatten_uses_dotted_keys(tmp_path):
    cfg = load_config(Experiment, None, ["optim.lr=3e-4", "val_clips=[a]"])
    path = tmp_path / "dump.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(Experiment, path) == cfg
    flat = flatten(cfg)
    assert (
        flat["optim.lr"] == 3e-4 and flat["optim.betas"] == [0.9, 0.99] and flat["data_dir"] == "data/sample"
    )


# -- hostile or wrong config files: one line, nothing expanded --------------------------------------


def _alias_bomb(levels: int = 30) -> str:
    """A "billion laughs" YAML: each level aliases the previous one ten times (10^30 leaves if walked)."""
    lines = ['l0: &l0 ["lol"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join(f'*l{i - 1}' for _ in range(10))}]")
    return "\n".join(lines) + "\n"


def test_yaml_alias_bomb_is_refused_without_expanding(tmp_path):
    from pipelines.common.config import read_yaml
    from pipelines.common.errors import ConfigError
    from pipelines.training.config import Experiment

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_alias_bomb())
    with pytest.raises(ConfigError) as refused:
        read_yaml(bomb)
    assert (
        str(refused.value)
        == f"{bomb}: YAML aliases (*name) are not accepted in configs; write the values out"
    )
    with pytest.raises(ConfigError, match="aliases"):
        load_config(Experiment, None, ["data.path=" + "[&a [x], *a, *a]"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "not a text file"),
        (b"data:\n  path: x\x00y\n", "a binary file, not YAML"),
        (b"a: 1\n" * 300_000, "is not a config file"),
    ],
    ids=["image", "nul", "enormous"],
)
def test_binary_or_enormous_config_file_is_one_line(tmp_path, content, message):
    from pipelines.common.config import read_yaml
    from pipelines.common.errors import ConfigError

    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as refused:
        read_yaml(path)
    assert message in str(refused.value) and "\n" not in str(refused.value) and len(str(refused.value)) < 300


@dataclass
class Checked:
    low: int = 1
    high: int = 2
    optim: Optim = field(default_factory=Optim)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")


def test_with_values_sets_dotted_keys_as_a_config_file_would():
    base = Experiment(name="reds", val_clips=["000"], optim=Optim(lr=1e-4))
    cfg = with_values(base, {"optim.betas": [0.8, 0.9], "max_iters": 10, "data_dir": "elsewhere"})
    assert cfg == Experiment(
        name="reds",
        val_clips=["000"],
        data_dir=Path("elsewhere"),
        optim=Optim(1e-4, (0.8, 0.9)),
        max_iters=10,
    )
    assert isinstance(cfg.optim.betas, tuple) and base.optim.betas == (0.9, 0.99)  # base unchanged
    # a mapping for a section changes the fields it names, the others stay the base's
    assert with_values(base, {"optim": {"betas": [0.5, 0.6]}}).optim == Optim(1e-4, (0.5, 0.6))
    assert with_values(Checked(extra={"a": 1}), {"extra.b": 2}).extra == {"a": 1, "b": 2}
    # values that only fit together are checked together
    assert with_values(Checked(), {"low": 5, "high": 6}) == Checked(5, 6)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"optim.lrr": 1}, "unknown config key 'optim.lrr'. Did you mean 'lr'? Allowed keys here: lr, betas"),
        ({"degradation": "XX"}, "degradation: 'XX' is not one of ['BI', 'BD']"),
        ({"optim.lr": "fast"}, "optim.lr: expected float, got 'fast' (str)"),
        ({"optim.betas": [1]}, "optim.betas: expected 2 items, got 1"),
        ({"optim": 3}, "optim: expected a mapping of Optim fields, got 3"),
        ({"name.sub": 1}, "name.sub: 'name' is a value, not a section"),
    ],
)
def test_with_values_refuses_what_load_config_refuses(values, message):
    # what tuning did before with_values: the whole base and the values as --set text, parsed back
    overrides = as_overrides(flatten(Experiment())) + as_overrides(values)
    with pytest.raises(ConfigError) as loaded:
        load_config(Experiment, None, overrides)
    with pytest.raises(ConfigError) as merged:
        with_values(Experiment(), values)
    assert str(merged.value) == message
    assert str(loaded.value).removeprefix("--set ") == message


def test_with_values_reruns_the_checks_of_every_changed_section():
    with pytest.raises(ConfigError, match=r"^Checked: low \(5\) must not exceed high \(2\)$"):
        with_values(Checked(), {"low": 5})
    with pytest.raises(ConfigError, match=r"^Checked: low \(5\) must not exceed high \(2\)$"):
        load_config(Checked, None, ["low=5"])
