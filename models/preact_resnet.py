"""Pre-activation ResNets (He et al. 2016, "Identity Mappings in Deep Residual Networks").

BN and ReLU come before each conv and nothing follows the addition; a final BN-ReLU precedes
the pool.  Same 32x32 layout as :mod:`models.resnet` (3x3 stem of 64 channels, stages of
64/128/256/512 planes, 1x1 projection shortcuts): preactresnet18 has 11.2M parameters at 100
classes (11.3M in weiaicunzai/pytorch-cifar100).
"""
import torch.nn as nn

from .resnet import make_stages


def bn_relu_conv(in_planes, planes, kernel_size, stride=1):
    return nn.Sequential(nn.BatchNorm2d(in_planes), nn.ReLU(inplace=True),
                         nn.Conv2d(in_planes, planes, kernel_size, stride, kernel_size // 2, bias=False))


def shortcut(in_planes, planes, stride):
    """1x1 conv where the shape changes, identity otherwise."""
    if stride != 1 or in_planes != planes:
        return nn.Conv2d(in_planes, planes, 1, stride, bias=False)
    return nn.Identity()


class PreActResidualBlock(nn.Module):
    """``residual(x) + shortcut(x)``, no activation after the addition."""

    def forward(self, x):
        return self.residual(x) + self.shortcut(x)


class PreActBlock(PreActResidualBlock):
    """BN-ReLU-conv3x3 twice."""
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.residual = nn.Sequential(bn_relu_conv(in_planes, planes, 3, stride),
                                      bn_relu_conv(planes, planes, 3))
        self.shortcut = shortcut(in_planes, planes, stride)


class PreActBottleneck(PreActResidualBlock):
    """BN-ReLU-conv for 1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4."""
    expansion = 4

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.residual = nn.Sequential(
            bn_relu_conv(in_planes, planes, 1), bn_relu_conv(planes, planes, 3, stride),
            bn_relu_conv(planes, planes * 4, 1))
        self.shortcut = shortcut(in_planes, planes * 4, stride)


class PreActResNet(nn.Module):
    def __init__(self, block, blocks_per_stage, num_classes=10, in_channels=3,
                 stem_planes=64, widths=(64, 128, 256, 512)):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, stem_planes, 3, 1, 1, bias=False)
        self.layers, channels = make_stages(block, blocks_per_stage, stem_planes, widths)
        self.head = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.fc(self.head(self.layers(self.stem(x))))


def preactresnet18(num_classes=10, in_channels=3):
    """PreAct-ResNet-18: basic blocks [2, 2, 2, 2]."""
    return PreActResNet(PreActBlock, (2, 2, 2, 2), num_classes, in_channels)


def preactresnet34(num_classes=10, in_channels=3):
    """PreAct-ResNet-34: basic blocks [3, 4, 6, 3]."""
    return PreActResNet(PreActBlock, (3, 4, 6, 3), num_classes, in_channels)


def preactresnet50(num_classes=10, in_channels=3):
    """PreAct-ResNet-50: bottleneck blocks [3, 4, 6, 3]."""
    return PreActResNet(PreActBottleneck, (3, 4, 6, 3), num_classes, in_channels)


def preactresnet101(num_classes=10, in_channels=3):
    """PreAct-ResNet-101: bottleneck blocks [3, 4, 23, 3]."""
    return PreActResNet(PreActBottleneck, (3, 4, 23, 3), num_classes, in_channels)


def preactresnet152(num_classes=10, in_channels=3):
    """PreAct-ResNet-152: bottleneck blocks [3, 8, 36, 3]."""
    return PreActResNet(PreActBottleneck, (3, 8, 36, 3), num_classes, in_channels)
