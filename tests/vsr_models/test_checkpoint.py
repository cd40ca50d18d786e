"""Import of the authors' released checkpoint layouts, and this project's own format."""

import importlib.metadata
from pathlib import Path

import pytest
import torch

from vsr_models import (
    IncompatibleCheckpointError,
    build_model,
    import_official,
    load_checkpoint,
    model_arch,
    model_config,
    read_checkpoint,
    save_checkpoint,
    ttvsr,
    vsrt,
)

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "reference"  # the released tensor lists
TTVSR_SMALL = {"mid_channels": 8, "num_extract_blocks": 1, "num_propagation_blocks": 2}
VSRT_SMALL = {
    "num_frames": 3,
    "depth": 2,
    "mid_channels": 8,
    "spatial_size": 16,
    "patch_size": 4,
    "num_extract_blocks": 1,
    "num_reconstruct_blocks": 2,
    "num_ffn_blocks": 1,
}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _official(model, arch):
    converter = ttvsr.to_official_state_dict if arch == "ttvsr" else vsrt.to_official_state_dict
    return converter(model.state_dict())


def _mmediting_file(path, official):
    """TTVSR as released: generator tensors under 'generator.' in 'state_dict', beside meta/optimizer."""
    state_dict = {f"generator.{k}": v for k, v in official.items()}
    state_dict["discriminator.conv.weight"] = torch.zeros(1)  # not the generator: ignored
    torch.save({"meta": {"iter": 400000, "mmedit_version": "0.14.0"}, "state_dict": state_dict,
                "optimizer": {"generator": {"state": {}, "param_groups": []}}}, path)  # fmt: skip
    return path


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def _tsv_state_dict(name):
    """Random tensors with the names and shapes of a released checkpoint (reference TSV)."""
    sd = {}
    for line in (REFERENCE / name).read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split("\t")
            sd[key] = torch.randn(*map(int, shape.split("x")))
    return sd


# -- released checkpoints --------------------------------------------------------------------------


def test_ttvsr_mmediting_checkpoint_imports_losslessly_with_its_config_inferred(tmp_path):
    model = build_model("ttvsr", **TTVSR_SMALL)
    path = _mmediting_file(tmp_path / "ttvsr_reds.pth", _official(model, "ttvsr"))
    imported = import_official(path, "ttvsr")  # mid_channels and block counts read from the file
    assert model_config(imported) == model_config(model)
    _assert_same_weights(imported, model)
    assert not imported.training


def test_vsrt_basicsr_checkpoint_imports_losslessly(tmp_path):
    model = build_model("vsrt", **VSRT_SMALL)
    torch.save({"params": _official(model, "vsrt")}, tmp_path / "vsrt.pth")
    # patch_size and num_frames (3 != depth 2) cannot be read from the tensors
    imported = import_official(tmp_path / "vsrt.pth", "vsrt", patch_size=4, num_frames=3)
    assert model_config(imported) == model_config(model)
    _assert_same_weights(imported, model)
    lr = torch.rand(1, 3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(imported(lr), model.eval()(lr))


def test_params_are_preferred_as_the_released_test_loads_them_and_key_selects_another_entry(tmp_path):
    plain, ema = build_model("vsrt", **VSRT_SMALL), build_model("vsrt", **VSRT_SMALL)
    torch.save({"params_ema": _official(ema, "vsrt"), "params": _official(plain, "vsrt")}, tmp_path / "v.pth")
    small = {"patch_size": 4, "num_frames": 3}
    _assert_same_weights(import_official(tmp_path / "v.pth", "vsrt", **small), plain)
    _assert_same_weights(import_official(tmp_path / "v.pth", "vsrt", key="params_ema", **small), ema)
    with pytest.raises(
        IncompatibleCheckpointError, match=r"no entry 'state_dict'.*\['params', 'params_ema'\]"
    ):
        import_official(tmp_path / "v.pth", "vsrt", key="state_dict", **small)


def test_bare_state_dict_with_data_parallel_prefix_imports(tmp_path):
    model = build_model("ttvsr", **TTVSR_SMALL)
    torch.save({f"module.{k}": v for k, v in _official(model, "ttvsr").items()}, tmp_path / "bare.pth")
    _assert_same_weights(import_official(tmp_path / "bare.pth", "ttvsr"), model)


@pytest.mark.parametrize(
    ("arch", "tsv", "expected"),
    [
        ("ttvsr", "ttvsr_official_state_dict.tsv", {"num_propagation_blocks": 60}),
        ("vsrt", "vsrt_official_state_dict_5frames.tsv", {"num_frames": 5, "depth": 5}),
        ("vsrt", "vsrt_official_state_dict_7frames.tsv", {"num_frames": 7, "depth": 7}),
    ],
)
def test_every_released_layout_imports_without_overrides(tmp_path, arch, tsv, expected):
    official = _tsv_state_dict(tsv)
    if arch == "ttvsr":
        _mmediting_file(tmp_path / "release.pth", official)
    else:
        torch.save({"params": official}, tmp_path / "release.pth")
    model = import_official(tmp_path / "release.pth", arch)
    config = model_config(model)
    assert {k: config[k] for k in expected} == expected
    assert _official(model, arch).keys() == official.keys()
    name = "feature_extractor.main.0.weight"
    source = "feat_extractor.main.0.weight" if arch == "ttvsr" else "conv_first.weight"
    assert torch.equal(model.state_dict()[name], official[source])


def test_incompatible_checkpoint_lists_missing_unexpected_and_mis_shaped_tensors(tmp_path):
    official = _official(build_model("ttvsr", **TTVSR_SMALL), "ttvsr")
    del official["conv_last.bias"]
    official["LTAM.extra_conv.weight"] = torch.zeros(3)
    official["fusion.weight"] = torch.zeros(8, 16, 1, 1)
    path = _mmediting_file(tmp_path / "broken.pth", official)
    with pytest.raises(IncompatibleCheckpointError) as info:
        import_official(path, "ttvsr")
    message = str(info.value)
    assert str(path) in message and "ttvsr" in message
    assert "missing (1):\n    conv_last.bias" in message
    assert "unexpected (1):\n    LTAM.extra_conv.weight" in message
    assert "wrong shape (1):\n    fusion.weight: file 8x16x1x1, model 8x24x1x1" in message


def test_wrong_arch_or_overrides_are_reported_with_what_would_fit(tmp_path):
    torch.save({"params": _official(build_model("vsrt", **VSRT_SMALL), "vsrt")}, tmp_path / "vsrt.pth")
    with pytest.raises(
        IncompatibleCheckpointError, match="does fit arch='vsrt' with depth=2, .*num_frames=2"
    ):
        import_official(tmp_path / "vsrt.pth", "ttvsr")
    _mmediting_file(tmp_path / "ttvsr.pth", _official(build_model("ttvsr", **TTVSR_SMALL), "ttvsr"))
    with pytest.raises(IncompatibleCheckpointError, match="names unknown to the converter") as info:
        import_official(tmp_path / "ttvsr.pth", "vsrt")
    assert "names unknown to the converter (" in str(info.value) and "\n    spynet.mean\n" in str(info.value)
    fits = "does fit arch='ttvsr' with num_extract_blocks=1, num_propagation_blocks=2, mid_channels=8"
    assert fits in str(info.value)
    with pytest.raises(
        IncompatibleCheckpointError, match=r"depth=3.*inferred from the file: depth=2"
    ) as info:
        import_official(tmp_path / "vsrt.pth", "vsrt", depth=3, patch_size=4)
    assert "missing (" in str(info.value) and "transformer.layers.2.0.fn.norm.weight" in str(info.value)
    # a wrong override on the right arch: the message names the config the file does fit
    with pytest.raises(IncompatibleCheckpointError, match=fits.replace("(", r"\(")):
        import_official(tmp_path / "ttvsr.pth", "ttvsr", num_propagation_blocks=3)


def test_unreadable_or_missing_files_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        import_official(tmp_path / "nope.pth", "ttvsr")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(IncompatibleCheckpointError, match="cannot read checkpoint .*garbage.pth"):
        import_official(tmp_path / "garbage.pth", "ttvsr")
    torch.save({"meta": {"note": "no weights"}}, tmp_path / "meta.pth")
    with pytest.raises(IncompatibleCheckpointError, match="found no state dict"):
        import_official(tmp_path / "meta.pth", "vsrt")


# -- own format ------------------------------------------------------------------------------------


def test_save_and_load_round_trip_keeps_weights_config_and_extra(tmp_path):
    model = build_model("ttvsr", **TTVSR_SMALL, key_frame_stride=2)
    optimizer = torch.optim.Adam(model.parameters(), betas=(0.9, 0.99))
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()  # creates the Adam state (step, exp_avg, exp_avg_sq) that extra must carry
    path = save_checkpoint(
        model, tmp_path / "runs" / "ckpt.pt", extra={"iteration": 7, "optimizer": optimizer.state_dict()}
    )

    loaded = load_checkpoint(path)
    assert model_arch(loaded) == "ttvsr"
    assert model_config(loaded) == model_config(model)
    _assert_same_weights(loaded, model)
    raw = read_checkpoint(path)
    assert raw["ray_vsr_version"] == importlib.metadata.version("ray-vsr")
    assert raw["torch_version"] == torch.__version__
    assert raw["extra"]["iteration"] == 7
    restored = torch.optim.Adam(loaded.parameters(), betas=(0.9, 0.99))
    restored.load_state_dict(raw["extra"]["optimizer"])
    assert list(tmp_path.joinpath("runs").iterdir()) == [path]  # no temporary file left


def test_failed_save_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = save_checkpoint(build_model("vsrt", **VSRT_SMALL), tmp_path / "ckpt.pt", extra={"iteration": 1})
    before = path.read_bytes()
    with pytest.raises(TypeError, match=r"extra\['callback'\] is a function"):
        save_checkpoint(build_model("vsrt", **VSRT_SMALL), path, extra={"callback": lambda: None})

    def failing_save(obj, file):
        file.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(build_model("vsrt", **VSRT_SMALL), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_load_checkpoint_points_official_files_to_import_official(tmp_path):
    torch.save({"params": _official(build_model("vsrt", **VSRT_SMALL), "vsrt")}, tmp_path / "release.pth")
    with pytest.raises(IncompatibleCheckpointError, match="use vsr_models.import_official"):
        load_checkpoint(tmp_path / "release.pth")


def test_load_checkpoint_reports_weights_that_do_not_fit_the_stored_config(tmp_path):
    path = save_checkpoint(build_model("ttvsr", **TTVSR_SMALL), tmp_path / "ckpt.pt")
    raw = torch.load(path, weights_only=True)
    raw["config"]["num_propagation_blocks"] = 3
    torch.save(raw, path)
    with pytest.raises(
        IncompatibleCheckpointError, match=r"missing \(4\):\n    propagation.main.2.2.conv1.weight"
    ):
        load_checkpoint(path)


@pytest.mark.parametrize(("arch", "small"), [("ttvsr", TTVSR_SMALL), ("vsrt", VSRT_SMALL)])
def test_spynet_weights_path_only_initialises_and_is_not_needed_to_load(tmp_path, arch, small):
    spynet = tmp_path / "spynet.pth"
    torch.save(build_model(arch, **small).spynet.state_dict(), spynet)
    model = build_model(arch, **small, spynet_pretrained=str(spynet))
    path = save_checkpoint(model, tmp_path / "ckpt.pt")
    spynet.unlink()  # e.g. a run resumed on another machine
    loaded = load_checkpoint(path)
    assert model_config(loaded)["spynet_pretrained"] is None
    _assert_same_weights(loaded, model)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda raw: raw.pop("config"), "damaged ray-vsr checkpoint: no 'config'"),
        (lambda raw: raw.update(state_dict=[1, 2]), "'state_dict' is not a dict"),
        (lambda raw: raw.pop("arch"), "no 'arch'"),
    ],
)
def test_a_project_checkpoint_missing_its_config_or_weights_is_one_clear_error(tmp_path, damage, message):
    path = save_checkpoint(build_model("ttvsr", **TTVSR_SMALL), tmp_path / "model.pt")
    raw = torch.load(path, weights_only=True)
    damage(raw)
    torch.save(raw, path)
    with pytest.raises(IncompatibleCheckpointError, match=message):
        load_checkpoint(path)


def test_a_pickled_object_in_a_checkpoint_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class RunsAShellCommand:
        def __reduce__(self):
            import os

            return os.system, (f"touch {marker}",)

    torch.save({"format": "ray-vsr", "payload": RunsAShellCommand()}, tmp_path / "model.pt")
    with pytest.raises(
        IncompatibleCheckpointError, match="objects other than tensors and plain values"
    ) as err:
        load_checkpoint(tmp_path / "model.pt")
    assert "weights_only" not in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()
