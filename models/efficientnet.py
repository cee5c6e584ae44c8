"""EfficientNet-B0 (Tan & Le 2019) for 32x32 inputs.

The B0 baseline: a 3x3 conv of 32 channels, 16 MBConv blocks (1x1 expand, depthwise kxk,
squeeze-and-excitation to a quarter of the block's input width, linear 1x1 project, identity skip
where the shape is kept; BN and swish throughout) in seven stages of 16/24/40/80/112/192/320
channels, a 1x1 conv to 1280, global pool, dropout 0.2 and FC.  As in the DLDR reference code,
the stem and the 192-channel stage keep stride 1 (resolution 32 -> 4).  4.14M parameters at
100 classes.
"""
import torch.nn as nn


def conv_bn_act(in_planes, planes, kernel_size, stride=1, groups=1, act=True):
    layers = [nn.Conv2d(in_planes, planes, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
              nn.BatchNorm2d(planes)]
    return nn.Sequential(*layers, nn.SiLU(inplace=True)) if act else nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    def __init__(self, channels, reduced):
        super().__init__()
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, reduced, 1), nn.SiLU(inplace=True),
            nn.Conv2d(reduced, channels, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.gate(x)


class MBConv(nn.Module):
    def __init__(self, in_planes, planes, expansion, kernel_size, stride):
        super().__init__()
        hidden = in_planes * expansion
        expand = [conv_bn_act(in_planes, hidden, 1)] if expansion != 1 else []
        self.branch = nn.Sequential(
            *expand, conv_bn_act(hidden, hidden, kernel_size, stride, groups=hidden),
            SqueezeExcite(hidden, max(1, in_planes // 4)), conv_bn_act(hidden, planes, 1, act=False))
        self.use_residual = stride == 1 and in_planes == planes

    def forward(self, x):
        return x + self.branch(x) if self.use_residual else self.branch(x)


# (expansion, output channels, repeats, kernel size, stride) of B0's stages
_B0_STAGES = ((1, 16, 1, 3, 1), (6, 24, 2, 3, 2), (6, 40, 2, 5, 2), (6, 80, 3, 3, 2),
              (6, 112, 3, 5, 1), (6, 192, 4, 5, 1), (6, 320, 1, 3, 1))


class EfficientNet(nn.Module):
    def __init__(self, stages=_B0_STAGES, num_classes=10, in_channels=3, dropout=0.2):
        super().__init__()
        layers, channels = [conv_bn_act(in_channels, 32, 3)], 32
        for t, c, n, k, s in stages:
            for i in range(n):
                layers.append(MBConv(channels, c, t, k, s if i == 0 else 1))
                channels = c
        layers += [conv_bn_act(channels, 1280, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout)]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(1280, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


def efficientnet(num_classes=10, in_channels=3):
    """EfficientNet-B0."""
    return EfficientNet(num_classes=num_classes, in_channels=in_channels)
