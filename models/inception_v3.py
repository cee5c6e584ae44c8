"""Inception-v3 (Szegedy et al. 2016, "Rethinking the Inception Architecture") for 32x32 inputs,
with the module names and layer choices of the DLDR reference code (from weiaicunzai/pytorch-cifar100).

Stem: 3x3 convs of 32, 32, 64 channels ('same'), a 1x1 of 80 and an unpadded 3x3 of 192 (32 -> 30),
no pooling.  Then 3x InceptionA (whose pool branch ends in a 3x3 conv, as in the reference), the grid
reduction B (30 -> 14), 4x InceptionC (factorised 7x7), reduction D (with an average pool; 14 -> 6),
2x InceptionE, global pool, channel dropout and FC; no auxiliary head.  Every conv is
conv-BN-ReLU without bias.  22.3M parameters at 100 classes, as in the paper's CIFAR-100 table.
"""
import torch
import torch.nn as nn


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BN -> ReLU."""

    def __init__(self, in_planes, planes, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_planes, planes, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(planes)

    def forward(self, x):
        return torch.relu_(self.bn(self.conv(x)))


def chain(*specs):
    """A Sequential of BasicConv2d, one per ``(in, out, kernel, stride, padding)`` tuple."""
    return nn.Sequential(*(BasicConv2d(*s) for s in specs))


H7, V7 = ((1, 7), 1, (0, 3)), ((7, 1), 1, (3, 0))   # kernel, stride, padding of the 1x7 / 7x1 convs
H3, V3 = ((1, 3), 1, (0, 1)), ((3, 1), 1, (1, 0))


class InceptionA(nn.Module):
    """1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avg pool-3x3; output 224 + pool_planes channels."""

    def __init__(self, in_planes, pool_planes):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_planes, 64, 1)
        self.branch5x5 = chain((in_planes, 48, 1), (48, 64, 5, 1, 2))
        self.branch3x3 = chain((in_planes, 64, 1), (64, 96, 3, 1, 1), (96, 96, 3, 1, 1))
        self.branchpool = nn.Sequential(nn.AvgPool2d(3, 1, 1), BasicConv2d(in_planes, pool_planes, 3, 1, 1))

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5(x), self.branch3x3(x), self.branchpool(x)], 1)


class InceptionB(nn.Module):
    """Grid reduction: 3x3/2 | 1x1-3x3-3x3/2 | max pool/2; output in_planes + 480 channels."""

    def __init__(self, in_planes):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_planes, 384, 3, 2)
        self.branch3x3stack = chain((in_planes, 64, 1), (64, 96, 3, 1, 1), (96, 96, 3, 2))
        self.branchpool = nn.MaxPool2d(3, 2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch3x3stack(x), self.branchpool(x)], 1)


class InceptionC(nn.Module):
    """1x1 | 1x1-7x1-1x7 | 1x1-(7x1-1x7)x2 | avg pool-1x1; output 768 channels."""

    def __init__(self, in_planes, c7):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_planes, 192, 1)
        self.branch7x7 = chain((in_planes, c7, 1), (c7, c7, *V7), (c7, 192, *H7))
        self.branch7x7stack = chain((in_planes, c7, 1), (c7, c7, *V7), (c7, c7, *H7), (c7, c7, *V7), (c7, 192, *H7))
        self.branch_pool = nn.Sequential(nn.AvgPool2d(3, 1, 1), BasicConv2d(in_planes, 192, 1))

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch7x7(x), self.branch7x7stack(x), self.branch_pool(x)], 1)


class InceptionD(nn.Module):
    """Grid reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | avg pool/2; output in_planes + 512 channels."""

    def __init__(self, in_planes):
        super().__init__()
        self.branch3x3 = chain((in_planes, 192, 1), (192, 320, 3, 2))
        self.branch7x7 = chain((in_planes, 192, 1), (192, 192, *H7), (192, 192, *V7), (192, 192, 3, 2))
        self.branchpool = nn.AvgPool2d(3, 2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch7x7(x), self.branchpool(x)], 1)


class InceptionE(nn.Module):
    """1x1 | 1x1-(1x3 & 3x1) | 1x1-3x3-(1x3 & 3x1) | avg pool-1x1; output 2048 channels."""

    def __init__(self, in_planes):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_planes, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_planes, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, *H3)
        self.branch3x3_2b = BasicConv2d(384, 384, *V3)
        self.branch3x3stack_1 = BasicConv2d(in_planes, 448, 1)
        self.branch3x3stack_2 = BasicConv2d(448, 384, 3, 1, 1)
        self.branch3x3stack_3a = BasicConv2d(384, 384, *H3)
        self.branch3x3stack_3b = BasicConv2d(384, 384, *V3)
        self.branch_pool = nn.Sequential(nn.AvgPool2d(3, 1, 1), BasicConv2d(in_planes, 192, 1))

    def forward(self, x):
        a = self.branch3x3_1(x)
        b = self.branch3x3stack_2(self.branch3x3stack_1(x))
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(a), self.branch3x3_2b(a),
                          self.branch3x3stack_3a(b), self.branch3x3stack_3b(b), self.branch_pool(x)], 1)


class InceptionV3(nn.Module):
    def __init__(self, num_classes=10, in_channels=3):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(in_channels, 32, 3, 1, 1)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, 1, 1)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, 1, 1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, 32)
        self.Mixed_5c = InceptionA(256, 64)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128)
        self.Mixed_6c = InceptionC(768, 160)
        self.Mixed_6d = InceptionC(768, 160)
        self.Mixed_6e = InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048)
        self.dropout = nn.Dropout2d()
        self.linear = nn.Linear(2048, num_classes)

    def forward(self, x):
        for stage in list(self.children())[:-2]:   # the stem convs and inception modules, in order
            x = stage(x)
        x = self.dropout(nn.functional.adaptive_avg_pool2d(x, 1))
        return self.linear(x.flatten(1))


def inceptionv3(num_classes=10, in_channels=3):
    """Inception-v3 without the auxiliary classifier."""
    return InceptionV3(num_classes, in_channels)
