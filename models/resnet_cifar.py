"""CIFAR ResNets of He et al. (2016), depth 6n+2, with option-A (parameter-free) shortcuts.

Stages of 16/32/64 channels; a shortcut that changes shape subsamples by 2 and zero-pads the new
channels, so resnet20 has 0.27M parameters at 10 classes, as in the paper.
"""
import torch.nn as nn
import torch.nn.functional as F


class _PadShortcut(nn.Module):
    """Option A: stride-2 subsampling and zero channel padding (no parameters)."""

    def __init__(self, extra_channels):
        super().__init__()
        self.extra = extra_channels

    def forward(self, x):
        x = x[:, :, ::2, ::2]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class BasicBlock(nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut = _PadShortcut(planes - in_planes)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, blocks_per_stage, num_classes=10, in_channels=3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        # stages named layer1..layer3 as in the reference (Idelbayev's resnet.py), so state_dicts load
        for stage, planes in enumerate((16, 32, 64), 1):
            in_planes = max(planes // 2, 16)
            blocks = [BasicBlock(in_planes if i == 0 else planes, planes, 2 if i == 0 and stage > 1 else 1)
                      for i in range(blocks_per_stage)]
            setattr(self, f'layer{stage}', nn.Sequential(*blocks))
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        # a square pool over the whole (square) map, as in the reference: the same sums, bit for bit
        out = F.avg_pool2d(out, out.size(3)).flatten(1)
        return self.linear(out)


def _depth(depth):
    assert (depth - 2) % 6 == 0
    n = (depth - 2) // 6

    def ctor(num_classes=10, in_channels=3):
        return CifarResNet(n, num_classes, in_channels)
    ctor.__name__ = f'resnet{depth}'
    ctor.__doc__ = f'CIFAR ResNet-{depth} ({n} basic blocks per stage, option-A shortcuts).'
    return ctor


resnet8 = _depth(8)
resnet20 = _depth(20)
resnet32 = _depth(32)
resnet44 = _depth(44)
resnet56 = _depth(56)
resnet110 = _depth(110)
resnet1202 = _depth(1202)
