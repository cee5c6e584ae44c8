"""MobileNet (Howard et al. 2017) and MobileNetV2 (Sandler et al. 2018) for 32x32 inputs, as in
the DLDR reference code.

MobileNet: a 3x3 conv of 32 channels, then 13 depthwise-separable units (depthwise 3x3-BN-ReLU
without bias, pointwise 1x1 with bias-BN-ReLU) widening to 1024 with four stride-2 units, global
pool and FC: 3.3M parameters at 100 classes.

MobileNetV2: a 1x1 conv of 32 channels with padding 1 (so the maps grow to 34x34, a quirk kept
from the reference), 17 inverted-residual bottlenecks (1x1 expand by t, depthwise 3x3, linear 1x1
project; ReLU6; identity skip where the shape is kept; every conv biased), a 1x1 conv to 1280,
global pool and a 1x1 conv to the classes: 2.37M parameters at 100 classes.
"""
import torch.nn as nn
import torch.nn.functional as F


class DepthSeperabelConv2d(nn.Module):  # sic, the reference's name
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.depthwise = nn.Sequential(nn.Conv2d(in_planes, in_planes, 3, stride, 1, groups=in_planes, bias=False),
                                       nn.BatchNorm2d(in_planes), nn.ReLU(inplace=True))
        self.pointwise = nn.Sequential(nn.Conv2d(in_planes, planes, 1), nn.BatchNorm2d(planes), nn.ReLU(inplace=True))

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


class BasicConv2d(nn.Module):
    def __init__(self, in_planes, planes, kernel_size, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_planes, planes, kernel_size, **kwargs)
        self.bn = nn.BatchNorm2d(planes)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class MobileNet(nn.Module):
    def __init__(self, num_classes=10, in_channels=3):
        super().__init__()
        self.stem = nn.Sequential(BasicConv2d(in_channels, 32, 3, padding=1, bias=False),
                                  DepthSeperabelConv2d(32, 64))
        # (output channels, stride) of each separable unit, by group
        groups = {'conv1': [(128, 2), (128, 1)], 'conv2': [(256, 2), (256, 1)],
                  'conv3': [(512, 2)] + [(512, 1)] * 5, 'conv4': [(1024, 2), (1024, 1)]}
        in_planes = 64
        for name, units in groups.items():
            layers = []
            for planes, stride in units:
                layers.append(DepthSeperabelConv2d(in_planes, planes, stride))
                in_planes = planes
            setattr(self, name, nn.Sequential(*layers))
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x):
        x = self.conv4(self.conv3(self.conv2(self.conv1(self.stem(x)))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class LinearBottleNeck(nn.Module):
    def __init__(self, in_planes, planes, stride, t=6):
        super().__init__()
        hidden = in_planes * t
        self.residual = nn.Sequential(
            nn.Conv2d(in_planes, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, planes, 1), nn.BatchNorm2d(planes))
        self.skip = stride == 1 and in_planes == planes

    def forward(self, x):
        out = self.residual(x)
        return out + x if self.skip else out


class MobileNetV2(nn.Module):
    def __init__(self, num_classes=10, in_channels=3):
        super().__init__()
        self.pre = nn.Sequential(nn.Conv2d(in_channels, 32, 1, padding=1), nn.BatchNorm2d(32), nn.ReLU6(inplace=True))
        self.stage1 = LinearBottleNeck(32, 16, 1, t=1)
        # (repeats, input channels, output channels, first stride) of stages 2-6
        for i, (n, in_planes, planes, stride) in enumerate(
                [(2, 16, 24, 2), (3, 24, 32, 2), (4, 32, 64, 2), (3, 64, 96, 1), (3, 96, 160, 1)], 2):
            setattr(self, f'stage{i}', nn.Sequential(*(LinearBottleNeck(in_planes if j == 0 else planes, planes,
                                                                        stride if j == 0 else 1) for j in range(n))))
        self.stage7 = LinearBottleNeck(160, 320, 1)
        self.conv1 = nn.Sequential(nn.Conv2d(320, 1280, 1), nn.BatchNorm2d(1280), nn.ReLU6(inplace=True))
        self.conv2 = nn.Conv2d(1280, num_classes, 1)

    def forward(self, x):
        x = self.pre(x)
        for i in range(1, 8):
            x = getattr(self, f'stage{i}')(x)
        return self.conv2(F.adaptive_avg_pool2d(self.conv1(x), 1)).flatten(1)


def mobilenet(num_classes=10, in_channels=3):
    """MobileNet v1, width 1."""
    return MobileNet(num_classes, in_channels)


def mobilenetv2(num_classes=10, in_channels=3):
    """MobileNetV2, width 1."""
    return MobileNetV2(num_classes, in_channels)
