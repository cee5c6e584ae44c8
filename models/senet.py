"""SE-ResNets (Hu et al. 2018, "Squeeze-and-Excitation Networks") for 32x32 inputs.

The ResNets of :mod:`models.resnet` with biased convs, a ReLU ending each residual branch and a
squeeze-and-excitation gate (global average pool, FC reduce by 16, ReLU, FC, sigmoid) rescaling
its channels before the addition, as in the reference code: seresnet18 has 11.3M parameters at
100 classes (11.4M in the paper's table).
"""
import torch.nn as nn
import torch.nn.functional as F

from .resnet import ResNet, conv_bn, projection


def excitation(channels, reduction=16):
    return nn.Sequential(nn.Linear(channels, channels // reduction), nn.ReLU(inplace=True),
                         nn.Linear(channels // reduction, channels), nn.Sigmoid())


class BasicResidualSEBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.residual = nn.Sequential(*conv_bn(in_planes, planes, 3, stride, bias=True), nn.ReLU(inplace=True),
                                      *conv_bn(planes, planes, 3, bias=True), nn.ReLU(inplace=True))
        self.shortcut = projection(in_planes, planes, stride, bias=True)
        self.excitation = excitation(planes)

    def forward(self, x):
        residual = self.residual(x)
        gate = self.excitation(F.adaptive_avg_pool2d(residual, 1).flatten(1))
        return F.relu(residual * gate[:, :, None, None] + self.shortcut(x))


class BottleneckResidualSEBlock(BasicResidualSEBlock):
    expansion = 4

    def __init__(self, in_planes, planes, stride=1):
        nn.Module.__init__(self)
        out = planes * self.expansion
        self.residual = nn.Sequential(
            *conv_bn(in_planes, planes, 1, bias=True), nn.ReLU(inplace=True),
            *conv_bn(planes, planes, 3, stride, bias=True), nn.ReLU(inplace=True),
            *conv_bn(planes, out, 1, bias=True), nn.ReLU(inplace=True))
        self.excitation = excitation(out)  # registered before the shortcut, as in the reference
        self.shortcut = projection(in_planes, out, stride, bias=True)


class SEResNet(ResNet):
    stem, stages, head = 'pre', ('stage1', 'stage2', 'stage3', 'stage4'), 'linear'
    stem_bias = True


def seresnet18(num_classes=10, in_channels=3):
    """SE-ResNet-18: SE basic blocks [2, 2, 2, 2]."""
    return SEResNet(BasicResidualSEBlock, (2, 2, 2, 2), num_classes, in_channels)


def seresnet34(num_classes=10, in_channels=3):
    """SE-ResNet-34: SE basic blocks [3, 4, 6, 3]."""
    return SEResNet(BasicResidualSEBlock, (3, 4, 6, 3), num_classes, in_channels)


def seresnet50(num_classes=10, in_channels=3):
    """SE-ResNet-50: SE bottleneck blocks [3, 4, 6, 3]."""
    return SEResNet(BottleneckResidualSEBlock, (3, 4, 6, 3), num_classes, in_channels)


def seresnet101(num_classes=10, in_channels=3):
    """SE-ResNet-101: SE bottleneck blocks [3, 4, 23, 3]."""
    return SEResNet(BottleneckResidualSEBlock, (3, 4, 23, 3), num_classes, in_channels)


def seresnet152(num_classes=10, in_channels=3):
    """SE-ResNet-152: SE bottleneck blocks [3, 8, 36, 3]."""
    return SEResNet(BottleneckResidualSEBlock, (3, 8, 36, 3), num_classes, in_channels)
