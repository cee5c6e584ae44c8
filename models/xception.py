"""Xception (Chollet 2017, "Deep Learning with Depthwise Separable Convolutions") for 32x32 inputs.

The paper's network with the stride of the first conv removed (as in weiaicunzai/
pytorch-cifar100): entry flow (3x3 convs of 32 and 64 channels, then three residual blocks of
separable convs with 128/256/728 channels, each ending in a 3x3/2 max pool with a 1x1/2 conv
shortcut), middle flow (8 blocks of three 728-channel separable convs), exit flow (728-1024 block,
separable convs of 1536 and 2048), global pool and FC.  21.0M parameters at 100 classes.
"""
import torch.nn as nn


def separable(in_planes, planes):
    """Depthwise 3x3 then pointwise 1x1 conv, followed by BN."""
    return nn.Sequential(nn.Conv2d(in_planes, in_planes, 3, padding=1, groups=in_planes, bias=False),
                         nn.Conv2d(in_planes, planes, 1, bias=False), nn.BatchNorm2d(planes))


class Block(nn.Module):
    """Residual block of ReLU-separable conv layers; with ``reduce`` it ends in a 3x3/2 max pool
    and has a 1x1/2 conv-BN shortcut."""

    def __init__(self, widths, reduce=True, relu_first=True):
        super().__init__()
        layers = []
        for i, (a, b) in enumerate(zip(widths, widths[1:])):
            if i > 0 or relu_first:
                layers.append(nn.ReLU())
            layers.append(separable(a, b))
        if reduce:
            layers.append(nn.MaxPool2d(3, 2, 1))
            self.shortcut = nn.Sequential(nn.Conv2d(widths[0], widths[-1], 1, 2, bias=False),
                                          nn.BatchNorm2d(widths[-1]))
        else:
            self.shortcut = nn.Identity()
        self.residual = nn.Sequential(*layers)

    def forward(self, x):
        return self.residual(x) + self.shortcut(x)


class Xception(nn.Module):
    def __init__(self, num_classes=10, in_channels=3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            Block((64, 128, 128), relu_first=False), Block((128, 256, 256)), Block((256, 728, 728)),
            *[Block((728, 728, 728, 728), reduce=False) for _ in range(8)],
            Block((728, 728, 1024)),
            separable(1024, 1536), nn.ReLU(inplace=True), separable(1536, 2048), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


def xception(num_classes=10, in_channels=3):
    """Xception (entry, 8x middle, exit flow)."""
    return Xception(num_classes, in_channels)
