from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from pipelines.common.config import ConfigError, dump_config, flatten, load_config


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
