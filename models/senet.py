"""SE-ResNets (Hu et al. 2018, "Squeeze-and-Excitation Networks") for 32x32 inputs.

The ResNets of :mod:`models.resnet` with a squeeze-and-excitation gate (global average pool,
FC reduce by 16, ReLU, FC, sigmoid) rescaling the channels of every residual branch before the
addition, as in weiaicunzai/pytorch-cifar100: seresnet18 has 11.3M parameters at 100 classes
(11.4M in the paper's table).
"""
import torch.nn as nn

from .resnet import BasicBlock, Bottleneck, ResNet


class SqueezeExcite(nn.Module):
    """Channel gate ``x * sigmoid(W2 relu(W1 avgpool(x))))``."""

    def __init__(self, channels, reduction=16):
        super().__init__()
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(channels, channels // reduction), nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels), nn.Sigmoid())

    def forward(self, x):
        return x * self.gate(x)[:, :, None, None]


class SEBasicBlock(BasicBlock):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__(in_planes, planes, stride)
        self.residual.append(SqueezeExcite(planes * self.expansion))


class SEBottleneck(Bottleneck):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__(in_planes, planes, stride)
        self.residual.append(SqueezeExcite(planes * self.expansion))


def seresnet18(num_classes=10, in_channels=3):
    """SE-ResNet-18: SE basic blocks [2, 2, 2, 2]."""
    return ResNet(SEBasicBlock, (2, 2, 2, 2), num_classes, in_channels)


def seresnet34(num_classes=10, in_channels=3):
    """SE-ResNet-34: SE basic blocks [3, 4, 6, 3]."""
    return ResNet(SEBasicBlock, (3, 4, 6, 3), num_classes, in_channels)


def seresnet50(num_classes=10, in_channels=3):
    """SE-ResNet-50: SE bottleneck blocks [3, 4, 6, 3]."""
    return ResNet(SEBottleneck, (3, 4, 6, 3), num_classes, in_channels)


def seresnet101(num_classes=10, in_channels=3):
    """SE-ResNet-101: SE bottleneck blocks [3, 4, 23, 3]."""
    return ResNet(SEBottleneck, (3, 4, 23, 3), num_classes, in_channels)


def seresnet152(num_classes=10, in_channels=3):
    """SE-ResNet-152: SE bottleneck blocks [3, 8, 36, 3]."""
    return ResNet(SEBottleneck, (3, 8, 36, 3), num_classes, in_channels)
