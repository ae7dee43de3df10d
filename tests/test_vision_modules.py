"""Vision modules: shapes, declared input/normalisation, tapped stage, registry, weights loading."""
import socket
import textwrap

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from eeg_core.errors import FormatError
from vision_modules import (
    VisionOutput,
    create_vision_module,
    list_vision_modules,
    register_vision_module,
)
from vision_modules.registry import temporary_vision_modules, unregister_vision_module


def _forward(model, batch=2):
    c, h, w = model.input_size
    torch.manual_seed(0)
    with torch.no_grad():
        return model.eval()(torch.randn(batch, c, h, w))


@pytest.mark.parametrize(
    "name, kw, channels",
    [
        ("resnet18", dict(image_size=(32, 96)), 256),  # layer3
        ("convnext_base", dict(image_size=(32, 32)), 512),  # stage 2
        ("timm:vit_small_patch16_224", dict(image_size=(32, 64)), 384),  # a transformer, block 10
        ("timm:mambaout_tiny", dict(image_size=(32, 32)), 384),  # channels-last feature maps
    ],
)
def test_module_returns_feature_token_and_logits(name, kw, channels):
    model = create_vision_module(name, feature_dim=1024, num_classes=5, **kw)
    out = _forward(model)
    assert isinstance(out, VisionOutput)
    assert out.features.shape == (2, 1, 1024) and out.features.dtype == torch.float32
    assert out.logits.shape == (2, 5)
    assert torch.isfinite(out.features).all()
    assert model.input_size == (3, *kw["image_size"]) and model.feature_dim == 1024
    assert len(model.mean) == 3 and len(model.std) == 3
    assert model.expand[0].in_channels == channels  # the default tap is the second-to-last stage


def test_channels_last_maps_are_permuted():
    model = create_vision_module("timm:mambaout_tiny", image_size=(32, 64))
    assert model.channels_last_maps
    fmap = model.backbone(torch.randn(1, 3, 32, 64))[-1]
    assert fmap.shape[-1] == model.expand[0].in_channels  # timm gives [B, H, W, C] here


def test_tap_and_feature_dim_are_arguments():
    model = create_vision_module("resnet18", feature_dim=64, tap=-1, image_size=(32, 32))
    assert model.expand[0].in_channels == 512  # layer4
    assert _forward(model).features.shape == (2, 1, 64)
    model = create_vision_module("resnet18", tap=2, image_size=32)
    assert model.expand[0].in_channels == 128  # layer2


def test_default_input_size_is_wide():
    model = create_vision_module("resnet18")
    assert model.input_size == (3, 64, 192)


def test_unknown_names_give_one_line_errors():
    with pytest.raises(FormatError, match="unknown vision module 'nope'"):
        create_vision_module("nope")
    with pytest.raises(FormatError, match="not_a_timm_model"):
        create_vision_module("timm:not_a_timm_model")


def documented_example() -> str:
    """The code block of vision_modules.registry's docstring: the example users copy."""
    from vision_modules import registry

    block = registry.__doc__.split("::\n", 1)[1].split("\n\n\n", 1)[0].split("\nThe builder is called")[0]
    return textwrap.dedent(block)


def test_user_module_registers_in_a_few_lines(scratch_registry):
    """The documented example, as written, registers a module that builds and runs."""
    exec(compile(documented_example().replace('"tiny_cnn"', '"test_tiny_cnn"'), "registry example", "exec"), {})
    assert "test_tiny_cnn" in list_vision_modules()
    model = create_vision_module("test_tiny_cnn", feature_dim=32, image_size=(16, 48))
    assert _forward(model).features.shape == (2, 1, 32)
    with pytest.raises(FormatError, match=r"vision module 'test_tiny_cnn' does not take these settings \(.*'tap'"):
        create_vision_module("test_tiny_cnn", tap=2)  # its builder has no taps
    with pytest.raises(ValueError, match="already registered"):
        register_vision_module("test_tiny_cnn")(nn.Identity)
    with pytest.raises(ValueError, match="reserved"):
        register_vision_module("timm:x")


def test_module_without_declarations_is_refused(scratch_registry):
    register_vision_module("test_bare")(lambda **kw: nn.Identity())
    with pytest.raises(FormatError, match="does not declare"):
        create_vision_module("test_bare")


def test_temporary_registrations_are_undone():
    before = list_vision_modules()
    with temporary_vision_modules():
        register_vision_module("test_temporary")(nn.Identity)
        unregister_vision_module("resnet18")
        assert "test_temporary" in list_vision_modules() and "resnet18" not in list_vision_modules()
    assert list_vision_modules() == before and "resnet18" in before
    with pytest.raises(RuntimeError), temporary_vision_modules():  # undone when the block fails too
        register_vision_module("test_temporary")(nn.Identity)
        raise RuntimeError
    assert list_vision_modules() == before
    unregister_vision_module("test_never_registered")  # nothing to remove: no error


def test_hub_weights_offline_fail_fast(monkeypatch):
    """Hub weights that are not cached, with no hub: a one-line error naming --pretrained PATH, without a
    connection when the environment says offline, and after one short probe (no retries) otherwise."""
    probes = []

    def unreachable(address, timeout=None, *args, **kwargs):
        probes.append((address, timeout))
        raise OSError("unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    with pytest.raises(FormatError, match="not cached and the hub is offline.*--pretrained PATH"):
        create_vision_module("resnet18", pretrained=True, image_size=32)
    assert probes == []  # HF_HUB_OFFLINE=1 (conftest)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(FormatError, match="--pretrained PATH"):
        create_vision_module("resnet18", pretrained=True, image_size=32)
    assert len(probes) == 1 and probes[0][1] is not None and probes[0][1] <= 1.0


def test_local_pretrained_weights_are_loaded(tmp_path):
    torch.manual_seed(123)
    reference = timm.create_model("resnet18")
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(tmp_path / "model.safetensors"))
    for where in (tmp_path / "model.safetensors", tmp_path):  # a file or a downloaded model folder
        model = create_vision_module("resnet18", pretrained=where, image_size=32)
        assert torch.equal(model.backbone.conv1.weight, reference.conv1.weight)
        assert torch.equal(model.backbone.layer3[1].conv2.weight, reference.layer3[1].conv2.weight)
    random_init = create_vision_module("resnet18", image_size=32)
    assert not torch.equal(random_init.backbone.conv1.weight, reference.conv1.weight)
    with pytest.raises(FormatError, match="not found"):
        create_vision_module("resnet18", pretrained=tmp_path / "missing.safetensors")
