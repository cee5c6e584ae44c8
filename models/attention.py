"""Residual Attention Networks (Wang et al. 2017) for 32x32 inputs.

A 3x3 stem of 64 channels, then three stages, each a stride-2 pre-activation bottleneck unit
(:class:`models.preact_resnet.PreActBottleneck`, 256/512/1024 channels) followed by attention
modules, then three bottleneck units to 2048 channels (the first with stride 2), BN-ReLU, pool and
FC.  An attention module (p=1, t=2, r=1) multiplies its trunk (two units) by ``1 + mask``; the
mask branch is an hourglass of max-pool/unit steps down 3, 2 or 1 times (stages 1-3), units and
upsampling back with a skip unit per level, and BN-ReLU-1x1-BN-ReLU-1x1-sigmoid.  attention56
has one module per stage, attention92 one, two and three.

The spatial plan follows weiaicunzai/pytorch-cifar100 (stages at 16, 8, 4 and 1 pixels); unlike
it, units whose shape is unchanged have identity shortcuts, as in the paper, so attention56 has
30.0M parameters at 100 classes (55.7M there) and attention92 50.6M (102.5M there).
"""
import torch.nn as nn
import torch.nn.functional as F

from .preact_resnet import PreActBottleNeck as PreActBottleneck


def unit(in_planes, planes, stride=1):
    """Pre-activation bottleneck residual unit with ``planes`` output channels."""
    return PreActBottleneck(in_planes, planes // 4, stride)


def units(planes, n):
    return nn.Sequential(*[unit(planes, planes) for _ in range(n)])


class AttentionModule(nn.Module):
    def __init__(self, planes, depth, p=1, t=2, r=1):
        super().__init__()
        self.pre, self.trunk, self.last = units(planes, p), units(planes, t), units(planes, p)
        self.down = nn.ModuleList(units(planes, r) for _ in range(depth))
        self.up = nn.ModuleList(units(planes, r) for _ in range(depth))
        self.skip = nn.ModuleList(unit(planes, planes) for _ in range(depth - 1))
        self.mask_head = nn.Sequential(
            nn.BatchNorm2d(planes), nn.ReLU(inplace=True), nn.Conv2d(planes, planes, 1, bias=False),
            nn.BatchNorm2d(planes), nn.ReLU(inplace=True), nn.Conv2d(planes, planes, 1), nn.Sigmoid())

    def forward(self, x):
        x = self.pre(x)
        mask, sizes, skips = x, [], []
        for level, down in enumerate(self.down):
            sizes.append(mask.shape[-2:])
            mask = down(F.max_pool2d(mask, 3, 2, 1))
            if level < len(self.skip):
                skips.append(self.skip[level](mask))
        for level in reversed(range(len(self.up))):
            mask = F.interpolate(self.up[level](mask), size=sizes[level])
            if level > 0:
                mask = mask + skips[level - 1]
        return self.last((1 + self.mask_head(mask)) * self.trunk(x))


class ResidualAttentionNet(nn.Module):
    def __init__(self, modules_per_stage, num_classes=10, in_channels=3):
        super().__init__()
        layers, channels = [nn.Conv2d(in_channels, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64),
                            nn.ReLU(inplace=True)], 64
        for planes, n, depth in zip((256, 512, 1024), modules_per_stage, (3, 2, 1)):
            layers.append(unit(channels, planes, 2))
            layers += [AttentionModule(planes, depth) for _ in range(n)]
            channels = planes
        layers += [unit(1024, 2048, 2), unit(2048, 2048), unit(2048, 2048),
                   nn.BatchNorm2d(2048), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


def attention56(num_classes=10, in_channels=3):
    """Attention-56: one attention module per stage."""
    return ResidualAttentionNet((1, 1, 1), num_classes, in_channels)


def attention92(num_classes=10, in_channels=3):
    """Attention-92: 1, 2 and 3 attention modules in stages 1-3."""
    return ResidualAttentionNet((1, 2, 3), num_classes, in_channels)
