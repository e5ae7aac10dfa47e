"""A small fake ``timm`` module for tests: real timm is not imported there (it needs torchvision matching torch),
so the tests that use it check mucosa's adapter contract (``models.backbones``), not timm itself.

Put it in place with ``monkeypatch.setitem(sys.modules, "timm", fake_timm())``; it builds one model, ``fakenet``,
refuses every other name, and refuses ImageNet weights as an offline machine would.
"""

import types

import torch
from torch import nn


class FakeNet(nn.Module):
    """The part of a timm model mucosa uses: forward_features, forward_head(pre_logits), num_features."""

    def __init__(self, in_chans: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, 8, 3, stride=4, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.num_features = 8
        self.fc = nn.Linear(8, num_classes)

    def forward_features(self, x):
        return torch.relu(self.bn(self.conv(x)))

    def forward_head(self, f, pre_logits: bool = False):
        pooled = f.mean(dim=(2, 3))
        return pooled if pre_logits else self.fc(pooled)

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = nn.Linear(8, num_classes)


def fake_timm() -> types.ModuleType:
    module = types.ModuleType("timm")
    module.calls = []

    def create_model(name, pretrained=False, in_chans=3, num_classes=1000):
        module.calls.append((name, pretrained, in_chans, num_classes))
        if name != "fakenet":
            raise RuntimeError(f"Unknown model ({name})")
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co' to load this file")
        return FakeNet(in_chans, num_classes)

    module.create_model = create_model
    module.is_model = lambda name: name == "fakenet"
    return module
