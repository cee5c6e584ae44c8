"""ResNets with stochastic depth (Huang et al. 2016, "Deep Networks with Stochastic Depth").

The 32x32 ResNets of :mod:`models.resnet` (biased stem; biased convs in the basic blocks) as in
the reference code: in training each residual branch is dropped for the whole batch with
probability ``1 - p``, where the survival probability ``p`` falls linearly from 1 at the first
block to 0.5 at the last; at evaluation the branch is scaled by ``p``.  As in the reference, no
ReLU follows the addition.  stochasticdepth18 has 11.2M parameters at 100 classes.
"""
import torch
import torch.nn as nn

from .resnet import ResNet, conv_bn, projection

FINAL_SURVIVAL = 0.5


class StochasticDepthBlock(nn.Module):
    p = 1.0  # survival probability, set by stochastic_resnet

    def forward(self, x):
        if not self.training:
            return self.residual(x) * self.p + self.shortcut(x)
        if torch.bernoulli(torch.tensor(self.p)):  # CPU draw: no device sync on a GPU
            return self.residual(x) + self.shortcut(x)
        return self.shortcut(x)


class StochasticDepthBasicBlock(StochasticDepthBlock):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.residual = nn.Sequential(*conv_bn(in_planes, planes, 3, stride, bias=True), nn.ReLU(inplace=True),
                                      *conv_bn(planes, planes, 3, bias=True))
        self.shortcut = projection(in_planes, planes, stride, bias=True)


class StochasticDepthBottleNeck(StochasticDepthBlock):
    expansion = 4

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        out = planes * self.expansion
        self.residual = nn.Sequential(
            *conv_bn(in_planes, planes, 1), nn.ReLU(inplace=True),
            *conv_bn(planes, planes, 3, stride), nn.ReLU(inplace=True), *conv_bn(planes, out, 1))
        self.shortcut = projection(in_planes, out, stride)


class StochasticDepthResNet(ResNet):
    stem_bias = True


def stochastic_resnet(block, blocks_per_stage, num_classes, in_channels):
    model = StochasticDepthResNet(block, blocks_per_stage, num_classes, in_channels)
    blocks = [b for name in model.stages for b in getattr(model, name)]
    for i, b in enumerate(blocks):
        b.p = 1 - i / (len(blocks) - 1) * (1 - FINAL_SURVIVAL)
    return model


def stochasticdepth18(num_classes=10, in_channels=3):
    """ResNet-18 with stochastic depth."""
    return stochastic_resnet(StochasticDepthBasicBlock, (2, 2, 2, 2), num_classes, in_channels)


def stochasticdepth34(num_classes=10, in_channels=3):
    """ResNet-34 with stochastic depth."""
    return stochastic_resnet(StochasticDepthBasicBlock, (3, 4, 6, 3), num_classes, in_channels)


def stochasticdepth50(num_classes=10, in_channels=3):
    """ResNet-50 with stochastic depth."""
    return stochastic_resnet(StochasticDepthBottleNeck, (3, 4, 6, 3), num_classes, in_channels)


def stochasticdepth101(num_classes=10, in_channels=3):
    """ResNet-101 with stochastic depth."""
    return stochastic_resnet(StochasticDepthBottleNeck, (3, 4, 23, 3), num_classes, in_channels)
