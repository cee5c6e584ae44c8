"""Inception-v4 and Inception-ResNet-v2 (Szegedy et al. 2017) for 32x32 inputs, with the module
names and layer choices of the DLDR reference code (from weiaicunzai/pytorch-cifar100).

Shared stem: an unpadded 3x3 conv (32 -> 30) and two 'same' 3x3 convs (32, 64 channels), then three
stride-1 concatenations (3x3 conv | max pool; 1x1-7x1-1x7-3x3 | 1x1-3x3; max pool | 3x3 conv)
giving 384x30x30.  Every conv is conv-BN-ReLU without bias (BasicConv2d).

inceptionv4: 4x Inception-A, Reduction-A (k, l, m, n = 192, 224, 256, 384; 30 -> 14), 7x
Inception-B, Reduction-B (padded; 14 -> 7), 3x Inception-C, 7x7 average pool, channel dropout 0.2
and FC.  41.3M parameters at 100 classes.

inceptionresnetv2: 5x Inception-ResNet-A, Reduction-A (256, 256, 384, 384), 10x Inception-ResNet-B,
Reduction-B (unpadded; 14 -> 6), 5x Inception-ResNet-C, global pool, channel dropout 0.2 and FC.
As in the reference, a residual block sums a biased 1x1-conv shortcut and the biased 1x1 projection
of its concatenated branches (scaled by 0.1 in B and C, unscaled in A), then applies BN and ReLU;
block widths are 384, 1154 and 2048.  65.4M parameters at 100 classes.
"""
import torch
import torch.nn as nn

from .inception_v3 import H3, H7, V3, V7, BasicConv2d, chain


class Mixed(nn.Module):
    """Parallel branches concatenated along channels in the order ``order`` (the branches are
    registered, and so appear in the state_dict, in keyword order)."""

    def __init__(self, order, **branches):
        super().__init__()
        for name, branch in branches.items():
            self.add_module(name, branch)
        self.order = order

    def forward(self, x):
        return torch.cat([self._modules[name](x) for name in self.order], 1)


class Split(nn.Module):
    """``stem`` followed by two heads whose outputs are concatenated (1x3 and 3x1 in Inception-C)."""

    def __init__(self, stem, head_a, head_b):
        super().__init__()
        self.stem, self.head_a, self.head_b = stem, head_a, head_b

    def forward(self, x):
        x = self.stem(x)
        return torch.cat([self.head_a(x), self.head_b(x)], 1)


class Inception_Stem(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.conv1 = chain((in_channels, 32, 3), (32, 32, 3, 1, 1), (32, 64, 3, 1, 1))
        self.branch3x3_conv = BasicConv2d(64, 96, 3, 1, 1)
        self.branch3x3_pool = nn.MaxPool2d(3, 1, 1)
        self.branch7x7a = chain((160, 64, 1), (64, 64, *V7), (64, 64, *H7), (64, 96, 3, 1, 1))
        self.branch7x7b = chain((160, 64, 1), (64, 96, 3, 1, 1))
        self.branchpoola = nn.MaxPool2d(3, 1, 1)
        self.branchpoolb = BasicConv2d(192, 192, 3, 1, 1)

    def forward(self, x):
        x = self.conv1(x)
        x = torch.cat([self.branch3x3_conv(x), self.branch3x3_pool(x)], 1)
        x = torch.cat([self.branch7x7a(x), self.branch7x7b(x)], 1)
        return torch.cat([self.branchpoola(x), self.branchpoolb(x)], 1)


def inception_a(in_planes):
    return Mixed(('branch3x3stack', 'branch3x3', 'branch1x1', 'branchpool'),
                 branch3x3stack=chain((in_planes, 64, 1), (64, 96, 3, 1, 1), (96, 96, 3, 1, 1)),
                 branch3x3=chain((in_planes, 64, 1), (64, 96, 3, 1, 1)),
                 branch1x1=BasicConv2d(in_planes, 96, 1),
                 branchpool=nn.Sequential(nn.AvgPool2d(3, 1, 1), BasicConv2d(in_planes, 96, 1)))


def reduction_a(in_planes, k, l, m, n):
    """Output in_planes + m + n channels."""
    return Mixed(('branch3x3stack', 'branch3x3', 'branchpool'),
                 branch3x3stack=chain((in_planes, k, 1), (k, l, 3, 1, 1), (l, m, 3, 2)),
                 branch3x3=BasicConv2d(in_planes, n, 3, 2),
                 branchpool=nn.MaxPool2d(3, 2))


def inception_b(in_planes):
    return Mixed(('branch1x1', 'branch7x7', 'branch7x7stack', 'branchpool'),
                 branch7x7stack=chain((in_planes, 192, 1), (192, 192, *H7), (192, 224, *V7),
                                      (224, 224, *H7), (224, 256, *V7)),
                 branch7x7=chain((in_planes, 192, 1), (192, 224, *H7), (224, 256, *V7)),
                 branch1x1=BasicConv2d(in_planes, 384, 1),
                 branchpool=nn.Sequential(nn.AvgPool2d(3, 1, 1), BasicConv2d(in_planes, 128, 1)))


def reduction_b(in_planes):
    return Mixed(('branch3x3', 'branch7x7', 'branchpool'),
                 branch7x7=chain((in_planes, 256, 1), (256, 256, *H7), (256, 320, *V7), (320, 320, 3, 2, 1)),
                 branch3x3=chain((in_planes, 192, 1), (192, 192, 3, 2, 1)),
                 branchpool=nn.MaxPool2d(3, 2, 1))


class InceptionC(nn.Module):
    """1x1 | 1x1-(3x1 & 1x3) | 1x1-1x3-3x1-(1x3 & 3x1) | avg pool-1x1; output 1536 channels."""

    def __init__(self, in_planes):
        super().__init__()
        self.branch3x3stack = chain((in_planes, 384, 1), (384, 448, *H3), (448, 512, *V3))
        self.branch3x3stacka = BasicConv2d(512, 256, *H3)
        self.branch3x3stackb = BasicConv2d(512, 256, *V3)
        self.branch3x3 = BasicConv2d(in_planes, 384, 1)
        self.branch3x3a = BasicConv2d(384, 256, *V3)
        self.branch3x3b = BasicConv2d(384, 256, *H3)
        self.branch1x1 = BasicConv2d(in_planes, 256, 1)
        self.branchpool = nn.Sequential(nn.AvgPool2d(3, 1, 1), BasicConv2d(in_planes, 256, 1))

    def forward(self, x):
        s, t = self.branch3x3stack(x), self.branch3x3(x)
        return torch.cat([self.branch1x1(x), self.branch3x3a(t), self.branch3x3b(t),
                          self.branch3x3stacka(s), self.branch3x3stackb(s), self.branchpool(x)], 1)


def named_repeat(name, block, n, in_planes, planes):
    """``n`` blocks named ``<name>_<i>``; the first takes ``in_planes`` channels, the others ``planes``."""
    seq = nn.Sequential()
    for i in range(n):
        seq.add_module(f'{name}_{i}', block(in_planes if i == 0 else planes))
    return seq


class InceptionV4(nn.Module):
    def __init__(self, num_classes=10, in_channels=3):
        super().__init__()
        self.stem = Inception_Stem(in_channels)
        self.inception_a = named_repeat('InceptionA', inception_a, 4, 384, 384)
        self.reduction_a = reduction_a(384, 192, 224, 256, 384)
        self.inception_b = named_repeat('InceptionB', inception_b, 7, 1024, 1024)
        self.reduction_b = reduction_b(1024)
        self.inception_c = named_repeat('InceptionC', InceptionC, 3, 1536, 1536)
        self.dropout = nn.Dropout2d(0.2)
        self.linear = nn.Linear(1536, num_classes)

    def forward(self, x):
        for stage in list(self.children())[:-2]:
            x = stage(x)
        x = self.dropout(nn.functional.avg_pool2d(x, 7))
        return self.linear(x.flatten(1))


class ResidualBlock(Mixed):
    """``relu(bn(shortcut(x) + scale * reduction1x1(concat(branches))))``, with biased 1x1 convs as
    shortcut (named ``shortcut_name``) and ``reduction1x1``; ``width`` is the concatenation's."""

    def __init__(self, in_planes, planes, width, scale, order, shortcut_name='shortcut', **branches):
        super().__init__(order, **branches)
        self.reduction1x1 = nn.Conv2d(width, planes, 1)
        self.add_module(shortcut_name, nn.Conv2d(in_planes, planes, 1))
        self.bn = nn.BatchNorm2d(planes)
        self.shortcut_name, self.scale = shortcut_name, scale

    def forward(self, x):
        residual = self.reduction1x1(super().forward(x))
        if self.scale != 1:
            residual = residual * self.scale
        return torch.relu_(self.bn(self._modules[self.shortcut_name](x) + residual))


def inception_resnet_a(in_planes):
    return ResidualBlock(
        in_planes, 384, 128, 1, ('branch1x1', 'branch3x3', 'branch3x3stack'),
        branch3x3stack=chain((in_planes, 32, 1), (32, 48, 3, 1, 1), (48, 64, 3, 1, 1)),
        branch3x3=chain((in_planes, 32, 1), (32, 32, 3, 1, 1)),
        branch1x1=BasicConv2d(in_planes, 32, 1))


def inception_resnet_b(in_planes):
    return ResidualBlock(
        in_planes, 1154, 384, 0.1, ('branch1x1', 'branch7x7'),
        branch7x7=chain((in_planes, 128, 1), (128, 160, *H7), (160, 192, *V7)),
        branch1x1=BasicConv2d(in_planes, 192, 1))


def inception_resnet_c(in_planes):
    # 'shorcut' (sic): the reference's name for this block's shortcut conv.
    return ResidualBlock(
        in_planes, 2048, 448, 0.1, ('branch1x1', 'branch3x3'), shortcut_name='shorcut',
        branch3x3=chain((in_planes, 192, 1), (192, 224, *H3), (224, 256, *V3)),
        branch1x1=BasicConv2d(in_planes, 192, 1))


def inception_resnet_reduction_b(in_planes):
    """Output in_planes + 384 + 288 + 320 channels."""
    return Mixed(('branch3x3a', 'branch3x3b', 'branch3x3stack', 'branchpool'),
                 branchpool=nn.MaxPool2d(3, 2),
                 branch3x3a=chain((in_planes, 256, 1), (256, 384, 3, 2)),
                 branch3x3b=chain((in_planes, 256, 1), (256, 288, 3, 2)),
                 branch3x3stack=chain((in_planes, 256, 1), (256, 288, 3, 1, 1), (288, 320, 3, 2)))


class InceptionResNetV2(nn.Module):
    def __init__(self, num_classes=10, in_channels=3):
        super().__init__()
        self.stem = Inception_Stem(in_channels)
        self.inception_resnet_a = named_repeat('InceptionResNetA', inception_resnet_a, 5, 384, 384)
        self.reduction_a = reduction_a(384, 256, 256, 384, 384)
        self.inception_resnet_b = named_repeat('InceptionResNetB', inception_resnet_b, 10, 1152, 1154)
        self.reduction_b = inception_resnet_reduction_b(1154)
        self.inception_resnet_c = named_repeat('InceptionResNetC', inception_resnet_c, 5, 2146, 2048)
        self.dropout = nn.Dropout2d(0.2)
        self.linear = nn.Linear(2048, num_classes)

    def forward(self, x):
        for stage in list(self.children())[:-2]:
            x = stage(x)
        x = self.dropout(nn.functional.adaptive_avg_pool2d(x, 1))
        return self.linear(x.flatten(1))


def inceptionv4(num_classes=10, in_channels=3):
    """Inception-v4."""
    return InceptionV4(num_classes, in_channels)


def inceptionresnetv2(num_classes=10, in_channels=3):
    """Inception-ResNet-v2."""
    return InceptionResNetV2(num_classes, in_channels)
