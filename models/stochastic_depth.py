"""ResNets with stochastic depth (Huang et al. 2016, "Deep Networks with Stochastic Depth").

The 32x32 ResNets of :mod:`models.resnet`; in training each residual branch is dropped for the
whole batch with probability ``1 - p_l``, where the survival probability decays linearly from 1
at the input to 0.5 at the last block; at evaluation the branch is scaled by ``p_l``.  Same
parameters as the plain ResNets (stochasticdepth18: 11.2M at 100 classes).
"""
import torch
import torch.nn.functional as F

from .resnet import BasicBlock, Bottleneck, ResNet

FINAL_SURVIVAL = 0.5


class StochasticDepthMixin:
    """Forward of a :class:`models.resnet.ResidualBlock` that keeps its branch with probability
    ``self.survival``."""
    survival = 1.0

    def forward(self, x):
        shortcut = self.shortcut(x)
        if not self.training:
            return F.relu(self.survival * self.residual(x) + shortcut)
        if torch.rand((), device='cpu') < self.survival:  # CPU draw: no device sync on a GPU
            return F.relu(self.residual(x) + shortcut)
        return F.relu(shortcut)


class StochasticBasicBlock(StochasticDepthMixin, BasicBlock):
    pass


class StochasticBottleneck(StochasticDepthMixin, Bottleneck):
    pass


def stochastic_resnet(block, blocks_per_stage, num_classes, in_channels):
    model = ResNet(block, blocks_per_stage, num_classes, in_channels)
    depth = len(model.layers)
    for l, layer in enumerate(model.layers, 1):
        layer.survival = 1 - l / depth * (1 - FINAL_SURVIVAL)
    return model


def stochasticdepth18(num_classes=10, in_channels=3):
    """ResNet-18 with stochastic depth."""
    return stochastic_resnet(StochasticBasicBlock, (2, 2, 2, 2), num_classes, in_channels)


def stochasticdepth34(num_classes=10, in_channels=3):
    """ResNet-34 with stochastic depth."""
    return stochastic_resnet(StochasticBasicBlock, (3, 4, 6, 3), num_classes, in_channels)


def stochasticdepth50(num_classes=10, in_channels=3):
    """ResNet-50 with stochastic depth."""
    return stochastic_resnet(StochasticBottleneck, (3, 4, 6, 3), num_classes, in_channels)


def stochasticdepth101(num_classes=10, in_channels=3):
    """ResNet-101 with stochastic depth."""
    return stochastic_resnet(StochasticBottleneck, (3, 4, 23, 3), num_classes, in_channels)
