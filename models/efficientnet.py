"""EfficientNet-B0 (Tan & Le 2019) for 32x32 inputs, as in the DLDR reference code.

The B0 baseline: a 3x3 conv of 32 channels, 16 MBConv blocks (1x1 expand, depthwise kxk,
squeeze-and-excitation to a quarter of the block's input width, linear 1x1 project, identity skip
where the shape is kept; BN and swish throughout) in seven stages of 16/24/40/80/112/192/320
channels, a 1x1 conv to 1280, global pool, dropout 0.2 and FC.  The stem and the 192-channel
stage keep stride 1 (resolution 32 -> 4); convs pad like TensorFlow's "SAME" (the odd pixel on
the bottom/right).  4.14M parameters at 100 classes.

The reference's batch-norm settings are kept, quirks included (its ``efficientnet(1, 1, 100,
bn_momentum=0.9)`` call): the stem BN has momentum 0.9, the other conv-BN-swish units momentum
0.01, and the project BN and head BN get ``1 - 0.9`` and ``0.9`` as their *eps*.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

BN_MOMENTUM = 0.9


class SameConv(nn.Conv2d):
    """Conv with TensorFlow "SAME" padding: output size ceil(n / stride)."""

    def __init__(self, in_planes, planes, kernel_size, stride=1, groups=1):
        super().__init__(in_planes, planes, kernel_size, stride, groups=groups, bias=False)

    def forward(self, x):
        pads = []
        for n, k, s in zip(x.shape[:1:-1], self.kernel_size[::-1], self.stride[::-1]):
            total = max(0, (-(-n // s) - 1) * s + k - n)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


class ConvBNAct(nn.Module):
    def __init__(self, in_planes, planes, kernel_size, stride=1, groups=1):
        super().__init__()
        self.block = nn.Sequential(SameConv(in_planes, planes, kernel_size, stride, groups),
                                   nn.BatchNorm2d(planes, momentum=0.01), Swish())

    def forward(self, x):
        return self.block(x)


class SE(nn.Module):
    def __init__(self, channels, reduced):
        super().__init__()
        self.SEblock = nn.Sequential(nn.Linear(channels, reduced), Swish(), nn.Linear(reduced, channels))

    def forward(self, x):
        return x * torch.sigmoid(self.SEblock(F.adaptive_avg_pool2d(x, 1).flatten(1)))[:, :, None, None]


class MBConv(nn.Module):
    def __init__(self, in_planes, planes, expansion, kernel_size, stride):
        super().__init__()
        hidden = in_planes * expansion
        self.pointwise1 = ConvBNAct(in_planes, hidden, 1) if expansion != 1 else nn.Identity()
        self.depthwise = ConvBNAct(hidden, hidden, kernel_size, stride, groups=hidden)
        self.se = SE(hidden, in_planes // 4)
        self.pointwise2 = nn.Sequential(SameConv(hidden, planes, 1), nn.BatchNorm2d(planes, eps=1 - BN_MOMENTUM))
        self.skip = stride == 1 and in_planes == planes

    def forward(self, x):
        out = self.pointwise2(self.se(self.depthwise(self.pointwise1(x))))
        return out + x if self.skip else out


class MBblock(nn.Module):
    def __init__(self, in_planes, planes, expansion, kernel_size, stride, repeats):
        super().__init__()
        self.block = nn.Sequential(*(MBConv(in_planes if i == 0 else planes, planes, expansion, kernel_size,
                                            stride if i == 0 else 1) for i in range(repeats)))

    def forward(self, x):
        return self.block(x)


# (expansion, output channels, repeats, kernel size, stride) of B0's stages
_B0_STAGES = ((1, 16, 1, 3, 1), (6, 24, 2, 3, 2), (6, 40, 2, 5, 2), (6, 80, 3, 3, 2),
              (6, 112, 3, 5, 1), (6, 192, 4, 5, 1), (6, 320, 1, 3, 1))


class EfficientNet(nn.Module):
    def __init__(self, stages=_B0_STAGES, num_classes=10, in_channels=3, dropout=0.2):
        super().__init__()
        self.stage1 = nn.Sequential(SameConv(in_channels, 32, 3), nn.BatchNorm2d(32, momentum=BN_MOMENTUM), Swish())
        blocks, channels = [], 32
        for t, c, n, k, s in stages:
            blocks.append(MBblock(channels, c, t, k, s, n))
            channels = c
        self.stage2 = nn.Sequential(*blocks)
        self.stage3 = nn.Sequential(SameConv(channels, 1280, 1), nn.BatchNorm2d(1280, eps=BN_MOMENTUM), Swish(),
                                    nn.AdaptiveAvgPool2d(1), nn.Dropout(dropout))
        self.FC = nn.Linear(1280, num_classes)
        for m in self.modules():
            if isinstance(m, SameConv):
                nn.init.kaiming_normal_(m.weight, mode='fan_out')
            elif isinstance(m, nn.Linear):
                bound = 1 / int(m.in_features ** 0.5)
                nn.init.uniform_(m.weight, -bound, bound)

    def forward(self, x):
        return self.FC(self.stage3(self.stage2(self.stage1(x))).flatten(1))


def efficientnet(num_classes=10, in_channels=3):
    """EfficientNet-B0."""
    return EfficientNet(num_classes=num_classes, in_channels=in_channels)
