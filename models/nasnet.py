"""NASNet-A (Zoph et al. 2018, "Learning Transferable Architectures") for 32x32 inputs.

NASNet-A 4@1056 as in weiaicunzai/pytorch-cifar100: a 3x3 conv-BN stem of 44 channels, then
4 normal cells, a reduction cell, 4 normal cells, a reduction cell and 4 normal cells with 44,
88 and 176 filters per branch (a normal cell concatenates six branches, a reduction cell four),
ReLU, global pool and FC.  Cells follow the paper's (and Keras') NASNet-A wiring; separable
branches are two ReLU-depthwise-pointwise-BN layers.  The previous cell's output is adapted to
the current cell's filters and resolution by a 1x1 conv, or a factorised reduction (two 1x1 convs
on pixel-shifted stride-2 grids) after a reduction cell.

4.31M parameters at 100 classes.  The paper's table says 5.2M: weiaicunzai's implementation
additionally builds, in every cell, the adapter it does not use (0.9M parameters that never receive
a gradient); this one builds only the adapter it uses.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def relu_conv_bn(in_planes, planes):
    return nn.Sequential(nn.ReLU(), nn.Conv2d(in_planes, planes, 1, bias=False), nn.BatchNorm2d(planes))


def separable(planes, kernel_size, stride=1):
    """Two ReLU-separable conv-BN layers; the first carries the stride."""
    def layer(s):
        return nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(planes, planes, kernel_size, s, kernel_size // 2, groups=planes, bias=False),
            nn.Conv2d(planes, planes, 1, bias=False), nn.BatchNorm2d(planes))
    return nn.Sequential(layer(stride), layer(1))


class FactorizedReduce(nn.Module):
    """Halve the resolution without discarding pixels: two 1x1 convs to half the channels each, on
    the even and on the odd (shifted by one) pixel grid, concatenated and batch-normalised."""

    def __init__(self, in_planes, planes):
        super().__init__()
        self.even = nn.Conv2d(in_planes, planes // 2, 1, 2, bias=False)
        self.odd = nn.Conv2d(in_planes, planes - planes // 2, 1, 2, bias=False)
        self.bn = nn.BatchNorm2d(planes)

    def forward(self, x):
        x = F.relu(x)
        shifted = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
        return self.bn(torch.cat([self.even(x), self.odd(shifted)], 1))


def adapter(in_planes, planes, halve):
    """Bring the previous cell's output to ``planes`` channels (and half its resolution)."""
    if halve:
        return FactorizedReduce(in_planes, planes)
    if in_planes != planes:
        return relu_conv_bn(in_planes, planes)
    return nn.Identity()


class NormalCell(nn.Module):
    """Five pairwise sums over the current (h) and previous (p) inputs, concatenated with p:
    6 * ``planes`` channels at the input's resolution."""

    def __init__(self, x_planes, prev_planes, planes, prev_halve):
        super().__init__()
        self.project = relu_conv_bn(x_planes, planes)
        self.adapt = adapter(prev_planes, planes, prev_halve)
        self.sep5_h, self.sep3_p = separable(planes, 5), separable(planes, 3)
        self.sep5_p, self.sep3_p2 = separable(planes, 5), separable(planes, 3)
        self.sep3_h = separable(planes, 3)

    def forward(self, x, prev):
        h, p = self.project(x), self.adapt(prev)
        avg = F.avg_pool2d
        return torch.cat([
            p,
            self.sep5_h(h) + self.sep3_p(p),
            self.sep5_p(p) + self.sep3_p2(p),
            avg(h, 3, 1, 1, count_include_pad=False) + p,
            2 * avg(p, 3, 1, 1, count_include_pad=False),
            self.sep3_h(h) + h,
        ], 1)


class ReductionCell(nn.Module):
    """Stride-2 pairwise sums (four concatenated): 4 * ``planes`` channels at half resolution."""

    def __init__(self, x_planes, prev_planes, planes):
        super().__init__()
        self.project = relu_conv_bn(x_planes, planes)
        self.adapt = adapter(prev_planes, planes, False)
        self.sep5_h, self.sep7_p = separable(planes, 5, 2), separable(planes, 7, 2)
        self.sep7_p2, self.sep5_p = separable(planes, 7, 2), separable(planes, 5, 2)
        self.sep3_x1 = separable(planes, 3)

    def forward(self, x, prev):
        h, p = self.project(x), self.adapt(prev)
        x1 = self.sep5_h(h) + self.sep7_p(p)
        x2 = F.max_pool2d(h, 3, 2, 1) + self.sep7_p2(p)
        x3 = F.avg_pool2d(h, 3, 2, 1, count_include_pad=False) + self.sep5_p(p)
        x4 = F.avg_pool2d(x1, 3, 1, 1, count_include_pad=False) + x2
        x5 = self.sep3_x1(x1) + F.max_pool2d(h, 3, 2, 1)
        return torch.cat([x2, x3, x4, x5], 1)


class NASNetA(nn.Module):
    def __init__(self, num_classes=10, in_channels=3, cells_per_stage=4, filters=44, stem_filters=44):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem_filters, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(stem_filters))
        cells, x_planes, prev_planes, prev_halve = [], stem_filters, stem_filters, False
        for stage in range(3):
            if stage > 0:
                filters *= 2
                cells.append(ReductionCell(x_planes, prev_planes, filters))
                x_planes, prev_planes, prev_halve = 4 * filters, x_planes, True
            for _ in range(cells_per_stage):
                cells.append(NormalCell(x_planes, prev_planes, filters, prev_halve))
                x_planes, prev_planes, prev_halve = 6 * filters, x_planes, False
        self.cells = nn.ModuleList(cells)
        self.fc = nn.Linear(x_planes, num_classes)

    def forward(self, x):
        x = prev = self.stem(x)
        for cell in self.cells:
            x, prev = cell(x, prev), x
        return self.fc(F.adaptive_avg_pool2d(F.relu(x), 1).flatten(1))


def nasnet(num_classes=10, in_channels=3):
    """NASNet-A 4@1056."""
    return NASNetA(num_classes, in_channels)
