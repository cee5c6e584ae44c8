"""Wide ResNets (Zagoruyko & Komodakis 2016), WRN-d-k for 32x32 inputs, as in the reference code.

A biased 3x3 stem conv of 16 channels, then three stages of (d-4)/6 pre-activation basic blocks
of 16k, 32k and 64k channels (stride 2 at the start of stages 2 and 3) with dropout (p=0.5)
between their two convs, final BN-ReLU, pool and FC.  ``wideresnet`` is WRN-40-10: 55.9M
parameters at 100 classes.
"""
import torch.nn as nn
import torch.nn.functional as F

from .preact_resnet import bn_relu_conv


class WideBasic(nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        conv1, conv2 = bn_relu_conv(in_planes, planes, 3, stride), bn_relu_conv(planes, planes, 3)
        self.residual = nn.Sequential(*conv1, *conv2[:2], nn.Dropout(), conv2[2])
        self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride)) \
            if stride != 1 or in_planes != planes else nn.Identity()

    def forward(self, x):
        return self.residual(x) + self.shortcut(x)


class WideResNet(nn.Module):
    def __init__(self, depth, widen_factor, num_classes=10, in_channels=3):
        super().__init__()
        assert (depth - 4) % 6 == 0, 'WRN depth must be 6n+4'
        n, k = (depth - 4) // 6, widen_factor
        self.init_conv = nn.Conv2d(in_channels, 16, 3, 1, 1)
        in_planes = 16
        for name, planes, stride in (('conv2', 16 * k, 1), ('conv3', 32 * k, 2), ('conv4', 64 * k, 2)):
            blocks = [WideBasic(in_planes if i == 0 else planes, planes, stride if i == 0 else 1) for i in range(n)]
            setattr(self, name, nn.Sequential(*blocks))
            in_planes = planes
        self.bn = nn.BatchNorm2d(in_planes)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        x = self.conv4(self.conv3(self.conv2(self.init_conv(x))))
        return self.linear(F.adaptive_avg_pool2d(F.relu(self.bn(x)), 1).flatten(1))


def wideresnet(num_classes=10, in_channels=3):
    """WRN-40-10."""
    return WideResNet(40, 10, num_classes, in_channels)
