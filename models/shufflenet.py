"""ShuffleNet v1 (Zhang et al. 2018) and v2 (Ma et al. 2018) for 32x32 inputs.

shufflenet: g=3 groups, width 1x (stages of 240/480/960 channels, 4/8/4 units); each unit is
grouped 1x1 conv (bottleneck width out/4), channel shuffle, depthwise 3x3, grouped 1x1 conv, added
to the input, or concatenated with its 3x3/2 average pool when downsampling.  Stage 2's first
1x1 conv is not grouped, as in the paper.  1.0M parameters at 100 classes.

shufflenetv2: width 1x (stages of 116/232/464 channels, 4/8/4 units, then a 1x1 conv to 1024);
a unit splits the channels in two, passes one half through 1x1-depthwise 3x3-1x1 and
concatenates, then shuffles; a downsampling unit feeds the whole input to both branches.
1.36M parameters at 100 classes, as in weiaicunzai/pytorch-cifar100 (whose README, and the
paper's table, say 1.3M).

Both keep the resolution in the stem (a 3x3 conv of 24 channels, no max pool).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn(in_planes, planes, kernel_size, stride=1, groups=1, relu=False):
    layers = [nn.Conv2d(in_planes, planes, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
              nn.BatchNorm2d(planes)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class ChannelShuffle(nn.Module):
    def __init__(self, groups):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNet v1 unit; when downsampling its branch produces ``planes - in_planes`` channels."""

    def __init__(self, in_planes, planes, groups, stride, group_first=True):
        super().__init__()
        self.downsample = stride == 2
        out = planes - in_planes if self.downsample else planes
        mid = planes // 4
        self.branch = nn.Sequential(
            conv_bn(in_planes, mid, 1, groups=groups if group_first else 1, relu=True),
            ChannelShuffle(groups),
            conv_bn(mid, mid, 3, stride, groups=mid),
            conv_bn(mid, out, 1, groups=groups))

    def forward(self, x):
        if self.downsample:
            return F.relu(torch.cat([F.avg_pool2d(x, 3, 2, 1), self.branch(x)], 1))
        return F.relu(x + self.branch(x))


class ShuffleNet(nn.Module):
    def __init__(self, num_classes=10, in_channels=3, groups=3, widths=(240, 480, 960), units=(4, 8, 4)):
        super().__init__()
        layers, channels = [conv_bn(in_channels, 24, 3, relu=True)], 24
        for stage, (planes, n) in enumerate(zip(widths, units)):
            for i in range(n):
                layers.append(ShuffleUnit(channels, planes, groups, 2 if i == 0 else 1,
                                          group_first=stage > 0 or i > 0))
                channels = planes
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


class ShuffleV2Unit(nn.Module):
    def __init__(self, in_planes, planes, stride):
        super().__init__()
        self.downsample = stride == 2
        half = planes // 2
        branch_in = in_planes if self.downsample else half
        self.branch = nn.Sequential(
            conv_bn(branch_in, half, 1, relu=True), conv_bn(half, half, 3, stride, groups=half),
            conv_bn(half, half, 1, relu=True))
        self.side = nn.Sequential(
            conv_bn(in_planes, in_planes, 3, stride, groups=in_planes),
            conv_bn(in_planes, half, 1, relu=True)) if self.downsample else nn.Identity()
        self.shuffle = ChannelShuffle(2)

    def forward(self, x):
        if self.downsample:
            left, right = x, x
        else:
            left, right = x.chunk(2, dim=1)
        return self.shuffle(torch.cat([self.side(left), self.branch(right)], 1))


class ShuffleNetV2(nn.Module):
    def __init__(self, num_classes=10, in_channels=3, widths=(116, 232, 464), units=(4, 8, 4)):
        super().__init__()
        layers, channels = [conv_bn(in_channels, 24, 3, relu=True)], 24
        for planes, n in zip(widths, units):
            for i in range(n):
                layers.append(ShuffleV2Unit(channels, planes, 2 if i == 0 else 1))
                channels = planes
        layers += [conv_bn(channels, 1024, 1, relu=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


def shufflenet(num_classes=10, in_channels=3):
    """ShuffleNet v1, g=3, 1x."""
    return ShuffleNet(num_classes, in_channels)


def shufflenetv2(num_classes=10, in_channels=3):
    """ShuffleNet v2, 1x."""
    return ShuffleNetV2(num_classes, in_channels)
