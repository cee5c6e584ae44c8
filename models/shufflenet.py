"""ShuffleNet v1 (Zhang et al. 2018) and v2 (Ma et al. 2018) for 32x32 inputs, as in the DLDR
reference code (every conv biased).

shufflenet: g=3 groups, width 1x (stages of 240/480/960 channels, 4/8/4 units); each unit is
grouped 1x1 conv (bottleneck width out/4), channel shuffle, depthwise 3x3, grouped 1x1 conv, added
to the input, or concatenated with its 3x3/2 average pool when downsampling.  Unlike the paper,
stage 2's first 1x1 conv is grouped too (the reference's stage test never fires).  1.01M
parameters at 100 classes.

shufflenetv2: width 1x (stages of 116/232/464 channels, 4/8/4 units, then a 1x1 conv to 1024);
a unit splits the channels in two, passes the second half through 1x1-depthwise 3x3-1x1 and
concatenates, then shuffles; a downsampling unit feeds the whole input to both branches.  The
stem is a 3x3 conv of 24 channels and BN, without ReLU.  1.36M parameters at 100 classes (the
reference's README and the paper's table say 1.3M).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .mobilenet import BasicConv2d

GROUPS = 3


def channel_shuffle(x, groups):
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class DepthwiseConv2d(nn.Module):
    def __init__(self, planes, stride):
        super().__init__()
        self.depthwise = nn.Sequential(nn.Conv2d(planes, planes, 3, stride, 1, groups=planes), nn.BatchNorm2d(planes))

    def forward(self, x):
        return self.depthwise(x)


class PointwiseConv2d(nn.Module):
    def __init__(self, in_planes, planes, groups):
        super().__init__()
        self.pointwise = nn.Sequential(nn.Conv2d(in_planes, planes, 1, groups=groups), nn.BatchNorm2d(planes))

    def forward(self, x):
        return self.pointwise(x)


class ShuffleNetUnit(nn.Module):
    def __init__(self, in_planes, planes, stride):
        super().__init__()
        mid = planes // 4
        self.downsample = stride != 1 or in_planes != planes
        self.bottlneck = nn.Sequential(PointwiseConv2d(in_planes, mid, GROUPS), nn.ReLU(inplace=True))  # sic
        self.depthwise = DepthwiseConv2d(mid, stride)
        self.expand = PointwiseConv2d(mid, planes - in_planes if self.downsample else planes, GROUPS)

    def forward(self, x):
        out = self.expand(self.depthwise(channel_shuffle(self.bottlneck(x), GROUPS)))
        if self.downsample:
            return F.relu(torch.cat([F.avg_pool2d(x, 3, 2, 1), out], 1))
        return F.relu(x + out)


class ShuffleNet(nn.Module):
    def __init__(self, blocks=(4, 8, 4), widths=(240, 480, 960), num_classes=10, in_channels=3):
        super().__init__()
        self.conv1 = BasicConv2d(in_channels, 24, 3, padding=1)
        in_planes = 24
        for i, (n, planes) in enumerate(zip(blocks, widths), 2):
            units = [ShuffleNetUnit(in_planes if j == 0 else planes, planes, 2 if j == 0 else 1) for j in range(n)]
            setattr(self, f'stage{i}', nn.Sequential(*units))
            in_planes = planes
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        x = self.stage4(self.stage3(self.stage2(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def conv_bn(in_planes, planes, kernel_size, stride=1, groups=1):
    return (nn.Conv2d(in_planes, planes, kernel_size, stride, kernel_size // 2, groups=groups),
            nn.BatchNorm2d(planes))


class ShuffleUnit(nn.Module):
    def __init__(self, in_planes, planes, stride):
        super().__init__()
        self.split = stride == 1 and in_planes == planes
        if self.split:
            half = in_planes // 2
            self.shortcut = nn.Identity()
            self.residual = nn.Sequential(*conv_bn(half, half, 1), nn.ReLU(inplace=True),
                                          *conv_bn(half, half, 3, stride, groups=half),
                                          *conv_bn(half, half, 1), nn.ReLU(inplace=True))
        else:
            half = planes // 2
            self.residual = nn.Sequential(*conv_bn(in_planes, in_planes, 1), nn.ReLU(inplace=True),
                                          *conv_bn(in_planes, in_planes, 3, stride, groups=in_planes),
                                          *conv_bn(in_planes, half, 1), nn.ReLU(inplace=True))
            self.shortcut = nn.Sequential(*conv_bn(in_planes, in_planes, 3, stride, groups=in_planes),
                                          *conv_bn(in_planes, half, 1), nn.ReLU(inplace=True))

    def forward(self, x):
        shortcut, residual = x.chunk(2, 1) if self.split else (x, x)
        return channel_shuffle(torch.cat([self.shortcut(shortcut), self.residual(residual)], 1), 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, widths=(116, 232, 464, 1024), blocks=(3, 7, 3), num_classes=10, in_channels=3):
        super().__init__()
        self.pre = nn.Sequential(*conv_bn(in_channels, 24, 3))
        in_planes = 24
        for i, (n, planes) in enumerate(zip(blocks, widths), 2):  # a downsampling unit, then n more
            units = [ShuffleUnit(in_planes, planes, 2)] + [ShuffleUnit(planes, planes, 1) for _ in range(n)]
            setattr(self, f'stage{i}', nn.Sequential(*units))
            in_planes = planes
        self.conv5 = nn.Sequential(*conv_bn(in_planes, widths[3], 1), nn.ReLU(inplace=True))
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x):
        x = self.conv5(self.stage4(self.stage3(self.stage2(self.pre(x)))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def shufflenet(num_classes=10, in_channels=3):
    """ShuffleNet v1, g=3, 1x."""
    return ShuffleNet(num_classes=num_classes, in_channels=in_channels)


def shufflenetv2(num_classes=10, in_channels=3):
    """ShuffleNet v2, 1x."""
    return ShuffleNetV2(num_classes=num_classes, in_channels=in_channels)
