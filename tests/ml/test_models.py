"""The registry builds every architecture by name; each trains (forward and backward) on a tiny batch."""
from __future__ import annotations

import pytest
import torch

from ml import models

ARCHITECTURES = ["xception_bigru", "efficientnet_b3_bigru", "efficientnet_b3_vit", "mobilenetv3_lstm"]


def test_registry_lists_the_four_hybrid_architectures():
    assert set(ARCHITECTURES) <= set(models.list_models())


def test_unknown_name_is_a_clear_error():
    with pytest.raises(KeyError, match="unknown model 'resnet9000'"):
        models.create("resnet9000")


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_every_architecture_runs_forward_and_backward(name):
    torch.manual_seed(0)
    model = models.create(name, num_classes=4, input_size=96)
    x = torch.randn(2, 3, 96, 96)
    logits = model(x)
    assert logits.shape == (2, 4)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 3])).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)


def test_pretrained_backbone_weights_load_from_a_local_file(tmp_path):
    source = models.create("mobilenetv3_lstm", input_size=64)
    path = tmp_path / "backbone.pth"
    torch.save({"state_dict": source.backbone.state_dict()}, path)
    model = models.create("mobilenetv3_lstm", input_size=64, pretrained_weights=path)
    for key, value in source.backbone.state_dict().items():
        assert torch.equal(value, model.backbone.state_dict()[key]), key


def test_pretrained_weights_of_the_wrong_shape_are_refused(tmp_path):
    other = models.create("efficientnet_b3_bigru", input_size=64)
    path = tmp_path / "effnet.pth"
    torch.save(other.backbone.state_dict(), path)
    with pytest.raises(ValueError):
        models.create("mobilenetv3_lstm", input_size=64, pretrained_weights=path)


def test_efficientnet_pytorch_keys_map_in_order_onto_timm_lite0():
    import collections

    model = models.create("efficientnet_lite0_bigru", input_size=64)
    own = model.backbone.state_dict()
    # Rebuild the EfficientNet-PyTorch layout from timm's tensors: new names, same order, plus the
    # BN counters and ImageNet classifier that the mapping must skip.
    foreign = collections.OrderedDict()
    for index, (key, value) in enumerate(own.items()):
        foreign[f"_layer{index}.{key.rsplit('.', 1)[-1]}"] = value + 1.0 if value.is_floating_point() else value
    foreign["_fc.weight"], foreign["_fc.bias"] = torch.zeros(1000, 1280), torch.zeros(1000)
    mapped = models.map_efficientnet_pytorch_keys(foreign, model.backbone)
    assert set(mapped) == {k for k in own if not k.endswith("num_batches_tracked")}
    assert torch.equal(mapped["conv_stem.weight"], own["conv_stem.weight"] + 1.0)
    shuffled = collections.OrderedDict(reversed(list(foreign.items())))
    with pytest.raises(ValueError):
        models.map_efficientnet_pytorch_keys(shuffled, model.backbone)


def test_the_shipped_imagenet_lite0_weights_load_into_the_backbone():
    try:
        path = models.efficientnet_lite0_imagenet_file()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    model = models.create("efficientnet_lite0_bigru", input_size=64, pretrained_weights=path)
    source = torch.load(path, map_location="cpu", weights_only=True)
    assert torch.equal(model.backbone.conv_stem.weight, source["_conv_stem.weight"])
    assert torch.equal(model.backbone.conv_head.weight, source["_conv_head.weight"])
