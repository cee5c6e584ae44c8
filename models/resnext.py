"""ResNeXt (Xie et al. 2017, "Aggregated Residual Transformations") for 32x32 inputs.

The bottleneck ResNets of :mod:`models.resnet` with 32 groups of width 4*planes/64 (32x4d):
as in the reference code both the 1x1 reduction and the 3x3 conv are grouped, which gives
resnext50 14.8M parameters at 100 classes (rather than 23M for the ungrouped 1x1).
"""
import torch.nn as nn
import torch.nn.functional as F

from .resnet import ResNet, conv_bn, projection

CARDINALITY = 32
BOTTLENECK_WIDTH = 4


class ResNextBottleNeckC(nn.Module):
    expansion = 4

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        width = CARDINALITY * BOTTLENECK_WIDTH * planes // 64
        out = planes * self.expansion
        self.split_transforms = nn.Sequential(
            *conv_bn(in_planes, width, 1, groups=CARDINALITY), nn.ReLU(inplace=True),
            *conv_bn(width, width, 3, stride, groups=CARDINALITY), nn.ReLU(inplace=True),
            *conv_bn(width, out, 1))
        self.shortcut = projection(in_planes, out, stride)

    def forward(self, x):
        return F.relu(self.split_transforms(x) + self.shortcut(x))


class ResNext(ResNet):
    stages = ('conv2', 'conv3', 'conv4', 'conv5')


def resnext50(num_classes=10, in_channels=3):
    """ResNeXt-50 (32x4d): blocks [3, 4, 6, 3]."""
    return ResNext(ResNextBottleNeckC, (3, 4, 6, 3), num_classes, in_channels)


def resnext101(num_classes=10, in_channels=3):
    """ResNeXt-101 (32x4d): blocks [3, 4, 23, 3]."""
    return ResNext(ResNextBottleNeckC, (3, 4, 23, 3), num_classes, in_channels)


def resnext152(num_classes=10, in_channels=3):
    """ResNeXt-152 (32x4d): blocks [3, 4, 36, 3]."""
    return ResNext(ResNextBottleNeckC, (3, 4, 36, 3), num_classes, in_channels)
