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
