"""Residual Attention Networks (Wang et al. 2017) for 32x32 inputs, with the module names and
forward pass of the DLDR reference code (from weiaicunzai/pytorch-cifar100).

A biased 3x3 conv-BN-ReLU stem of 64 channels; three stages, each a stride-2 pre-activation
bottleneck unit (256, 512, 1024 channels; 32 -> 16 -> 8 -> 4 pixels) followed by attention
modules of type 1, 2 and 3; then three units to 2048 channels (the first with stride 2), global
pool and FC (no final BN-ReLU).  attention56 has one module per stage, attention92 one, two and
three.  As in the reference every conv has a bias and every unit a 1x1-conv shortcut (stride-1
units included): attention56 has 55.7M parameters at 100 classes, attention92 105.4M.

An attention module multiplies its trunk (two units) by ``1 + mask`` between a ``pre`` and a
``last`` unit.  The mask branch max-pools its input once (3x3/2) and runs units on that grid; the
reference's type-1 module pools the same input for each of its three paths and uses
``soft_resdown3`` where ``shortcut_short`` was meant, and its type-3 module builds a ``shortcut``
unit as well.  These units are never used: their parameters (stage1.1.shortcut_short, 0.14M, and
stage3.<i>.shortcut, 2.17M each) get no gradient.  They are kept, so that state_dicts, parameter
counts and outputs match the reference.
"""
import torch.nn as nn
import torch.nn.functional as F


class PreActResidualUnit(nn.Module):
    """BN-ReLU-1x1-BN-ReLU-3x3-BN-ReLU-1x1 bottleneck (width planes/4, biased convs, stride on the
    first 1x1) plus a biased 1x1-conv shortcut."""

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        mid = planes // 4
        self.residual_function = nn.Sequential(
            nn.BatchNorm2d(in_planes), nn.ReLU(inplace=True), nn.Conv2d(in_planes, mid, 1, stride),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True), nn.Conv2d(mid, mid, 3, padding=1),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True), nn.Conv2d(mid, planes, 1))
        # The reference's test (stride != 2 or in != out) gives a conv shortcut to every unit here.
        self.shortcut = nn.Conv2d(in_planes, planes, 1, stride)

    def forward(self, x):
        return self.residual_function(x) + self.shortcut(x)


def units(planes, n=1):
    return nn.Sequential(*[PreActResidualUnit(planes, planes) for _ in range(n)])


def pool(x):
    return F.max_pool2d(x, 3, 2, 1)


def up(x, like):
    """Nearest-neighbour resize of ``x`` to the spatial size of ``like``."""
    return F.interpolate(x, size=like.shape[-2:])


class AttentionModule(nn.Module):
    """``pre``, then ``last((1 + sigmoid_head(mask(x))) * trunk(x))``; subclasses define ``mask``
    from ``levels`` soft_resdown / soft_resup units and the named shortcut units."""

    def __init__(self, planes, levels, shortcuts):
        super().__init__()
        self.pre, self.trunk = units(planes), units(planes, 2)
        for kind in ('down', 'up'):
            for i in range(1, levels + 1):
                self.add_module(f'soft_res{kind}{i}', units(planes))
        for name in shortcuts:
            self.add_module(name, PreActResidualUnit(planes, planes))
        self.sigmoid = nn.Sequential(
            nn.BatchNorm2d(planes), nn.ReLU(inplace=True), nn.Conv2d(planes, planes, 1),
            nn.BatchNorm2d(planes), nn.ReLU(inplace=True), nn.Conv2d(planes, planes, 1), nn.Sigmoid())
        self.last = units(planes)

    def forward(self, x):
        x = self.pre(x)
        trunk = self.trunk(x)
        return self.last((1 + self.sigmoid(up(self.mask(x), x))) * trunk)


class AttentionModule1(AttentionModule):
    def __init__(self, planes):
        super().__init__(planes, 4, ('shortcut_short', 'shortcut_long'))

    def mask(self, x):
        a = self.soft_resdown1(pool(x))
        long_skip = self.shortcut_long(a)
        b = self.soft_resdown2(pool(x))
        short_skip = self.soft_resdown3(b)   # sic: the reference's shortcut_short stays unused
        m = self.soft_resup2(self.soft_resup1(self.soft_resdown4(self.soft_resdown3(pool(x)))))
        m = self.soft_resup3(up(m, b) + short_skip)
        return self.soft_resup4(up(m, a) + long_skip)


class AttentionModule2(AttentionModule):
    def __init__(self, planes):
        super().__init__(planes, 3, ('shortcut',))

    def mask(self, x):
        a = self.soft_resdown1(pool(x))
        skip = self.shortcut(a)
        m = self.soft_resup2(self.soft_resup1(self.soft_resdown3(self.soft_resdown2(pool(x)))))
        return self.soft_resup3(up(m, a) + skip)


class AttentionModule3(AttentionModule):
    def __init__(self, planes):
        super().__init__(planes, 2, ('shortcut',))   # built but unused, as in the reference

    def mask(self, x):
        return self.soft_resup2(self.soft_resup1(self.soft_resdown2(self.soft_resdown1(pool(x)))))


class Attention(nn.Module):
    def __init__(self, modules_per_stage, num_classes=10, in_channels=3):
        super().__init__()
        self.pre_conv = nn.Sequential(nn.Conv2d(in_channels, 64, 3, padding=1), nn.BatchNorm2d(64),
                                      nn.ReLU(inplace=True))
        channels = 64
        for i, (planes, n, module) in enumerate(zip((256, 512, 1024), modules_per_stage,
                                                    (AttentionModule1, AttentionModule2, AttentionModule3)), 1):
            self.add_module(f'stage{i}', nn.Sequential(PreActResidualUnit(channels, planes, 2),
                                                       *[module(planes) for _ in range(n)]))
            channels = planes
        self.stage4 = nn.Sequential(PreActResidualUnit(1024, 2048, 2), *units(2048, 2))
        self.linear = nn.Linear(2048, num_classes)

    def forward(self, x):
        x = self.stage4(self.stage3(self.stage2(self.stage1(self.pre_conv(x)))))
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


def attention56(num_classes=10, in_channels=3):
    """Attention-56: one attention module per stage."""
    return Attention((1, 1, 1), num_classes, in_channels)


def attention92(num_classes=10, in_channels=3):
    """Attention-92: 1, 2 and 3 attention modules in stages 1-3."""
    return Attention((1, 2, 3), num_classes, in_channels)
