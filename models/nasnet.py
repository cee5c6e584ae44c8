"""NASNet-A (Zoph et al. 2018, "Learning Transferable Architectures") for 32x32 inputs, with the
module names, cell wiring and forward pass of the DLDR reference code (from
weiaicunzai/pytorch-cifar100).

NASNet-A 4@1056: a 3x3 conv-BN stem of 44 channels, then 4 normal cells, a reduction cell, 4 normal
cells, a reduction cell and 4 normal cells with 44, 88 and 176 filters per branch (a normal cell
concatenates six tensors, a reduction cell four), ReLU, global pool and FC.  A separable branch is
two ReLU-separable conv-BN layers (the first carries the stride); as in the reference the pointwise
convs and all but the normal cells' first depthwise convs have a bias.

Each cell brings the previous cell's output to its own filters and resolution with a ``fit``
module, choosing at run time, as in the reference: the input itself for the first cell, a factorised
reduction (``p1``, ``p2``: 1x1 convs on the even and the odd pixel grid, then ``bn``) when the
resolutions differ, a ReLU-1x1 conv-BN (``dim_reduce``) when only the widths differ, else the
identity.  Every ``fit`` builds all of these, so the parameters of the paths a cell does not take
(0.89M of 5.22M at 100 classes) never receive a gradient; they are kept to match the reference's
state_dict and parameter count.  4.33M parameters are used.
"""
import torch
import torch.nn as nn


class SeperableConv2d(nn.Module):
    """Depthwise conv then a biased pointwise 1x1 conv (the reference's spelling)."""

    def __init__(self, in_planes, planes, kernel_size, stride=1, depthwise_bias=True):
        super().__init__()
        self.depthwise = nn.Conv2d(in_planes, in_planes, kernel_size, stride, kernel_size // 2,
                                   groups=in_planes, bias=depthwise_bias)
        self.pointwise = nn.Conv2d(in_planes, planes, 1)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


class SeperableBranch(nn.Module):
    """(ReLU, separable conv, BN) twice; the first carries the stride."""

    def __init__(self, planes, kernel_size, stride=1, first_bias=True):
        super().__init__()
        self.block1 = nn.Sequential(nn.ReLU(), SeperableConv2d(planes, planes, kernel_size, stride, first_bias),
                                    nn.BatchNorm2d(planes))
        self.block2 = nn.Sequential(nn.ReLU(), SeperableConv2d(planes, planes, kernel_size), nn.BatchNorm2d(planes))

    def forward(self, x):
        return self.block2(self.block1(x))


class Fit(nn.Module):
    """Adapt the previous cell's output ``prev`` to the cell input ``x`` (see the module docstring)."""

    def __init__(self, prev_planes, planes):
        super().__init__()
        half = planes // 2
        self.p1 = nn.Sequential(nn.AvgPool2d(1, 2), nn.Conv2d(prev_planes, half, 1))
        # Shift by one pixel (drop the first row and column, zero-pad the last), then subsample.
        self.p2 = nn.Sequential(nn.ConstantPad2d((0, 1, 0, 1), 0), nn.ConstantPad2d((-1, 0, -1, 0), 0),
                                nn.AvgPool2d(1, 2), nn.Conv2d(prev_planes, half, 1))
        self.bn = nn.BatchNorm2d(planes)
        self.dim_reduce = nn.Sequential(nn.ReLU(), nn.Conv2d(prev_planes, planes, 1), nn.BatchNorm2d(planes))
        self.planes = planes

    def forward(self, x, prev):
        if prev is None:
            return x
        if x.size(2) != prev.size(2):
            prev = torch.relu(prev)
            return self.bn(torch.cat([self.p1(prev), self.p2(prev)], 1))
        if prev.size(1) != self.planes:
            return self.dim_reduce(prev)
        return prev


class NormalCell(nn.Module):
    """With h = dem_reduce(x) and p = fit(prev): concat(p, sep3(h) + h, sep3(p) + sep5(h),
    avg(h) + h, 2 avg(p), sep5(p) + sep3(p)), 6 * planes channels; returns (output, x)."""

    def __init__(self, x_planes, prev_planes, planes):
        super().__init__()
        self.dem_reduce = nn.Sequential(nn.ReLU(), nn.Conv2d(x_planes, planes, 1, bias=False), nn.BatchNorm2d(planes))
        self.block1_left = SeperableBranch(planes, 3, first_bias=False)
        self.block2_left = SeperableBranch(planes, 3, first_bias=False)
        self.block2_right = SeperableBranch(planes, 5, first_bias=False)
        self.block5_left = SeperableBranch(planes, 5, first_bias=False)
        self.block5_right = SeperableBranch(planes, 3, first_bias=False)
        self.fit = Fit(prev_planes, planes)

    def forward(self, inputs):
        x, prev = inputs
        p = self.fit(x, prev)
        h = self.dem_reduce(x)
        avg = nn.functional.avg_pool2d
        return torch.cat([
            p,
            self.block1_left(h) + h,
            self.block2_left(p) + self.block2_right(h),
            avg(h, 3, 1, 1) + h,
            avg(p, 3, 1, 1) + avg(p, 3, 1, 1),
            self.block5_left(p) + self.block5_right(p)], 1), x


class ReductionCell(nn.Module):
    """With h = dim_reduce(x) and p = fit(prev): a = sep7/2(p) + sep5/2(h), b = maxpool/2(h) + sep7/2(p),
    output concat(b, avgpool/2(h) + sep5/2(p), maxpool/2(h) + sep3(a), avgpool(a) + b),
    4 * planes channels at half resolution; returns (output, x)."""

    def __init__(self, x_planes, prev_planes, planes):
        super().__init__()
        self.dim_reduce = nn.Sequential(nn.ReLU(), nn.Conv2d(x_planes, planes, 1), nn.BatchNorm2d(planes))
        self.layer1block1_left = SeperableBranch(planes, 7, 2)
        self.layer1block1_right = SeperableBranch(planes, 5, 2)
        self.layer1block2_right = SeperableBranch(planes, 7, 2)
        self.layer1block3_right = SeperableBranch(planes, 5, 2)
        self.layer2block1_right = SeperableBranch(planes, 3)
        self.fit = Fit(prev_planes, planes)

    def forward(self, inputs):
        x, prev = inputs
        p = self.fit(x, prev)
        h = self.dim_reduce(x)
        F = nn.functional
        a = self.layer1block1_left(p) + self.layer1block1_right(h)
        b = F.max_pool2d(h, 3, 2, 1) + self.layer1block2_right(p)
        c = F.avg_pool2d(h, 3, 2, 1) + self.layer1block3_right(p)
        d = F.max_pool2d(h, 3, 2, 1) + self.layer2block1_right(a)
        return torch.cat([b, c, d, F.avg_pool2d(a, 3, 1, 1) + b], 1), x


class NasNetA(nn.Module):
    def __init__(self, num_classes=10, in_channels=3, cells_per_stage=4, filters=44, stem_filters=44):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem_filters, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(stem_filters))
        cells, x_planes, prev_planes = [], stem_filters, stem_filters
        for stage in range(3):
            if stage > 0:
                filters *= 2
                cells.append(ReductionCell(x_planes, prev_planes, filters))
                x_planes, prev_planes = 4 * filters, x_planes
            for _ in range(cells_per_stage):
                cells.append(NormalCell(x_planes, prev_planes, filters))
                x_planes, prev_planes = 6 * filters, x_planes
        self.cell_layers = nn.Sequential(*cells)
        self.fc = nn.Linear(x_planes, num_classes)

    def forward(self, x):
        x, _ = self.cell_layers((self.stem(x), None))
        return self.fc(nn.functional.adaptive_avg_pool2d(torch.relu(x), 1).flatten(1))


def nasnet(num_classes=10, in_channels=3):
    """NASNet-A 4@1056."""
    return NasNetA(num_classes, in_channels)
