"""Inception-v3 (Szegedy et al. 2016, "Rethinking the Inception Architecture") for 32x32 inputs.

As in weiaicunzai/pytorch-cifar100: the stem keeps the resolution (3x3 convs of 32, 32, 64
channels, 1x1 of 80, 3x3 of 192, no pooling), followed by the paper's modules without the
auxiliary head: 3x InceptionA (at 32x32 here), the grid reduction B (to 15x15), 4x InceptionC
(factorised 7x7), reduction D (to 7x7), 2x InceptionE, global pool, dropout and FC.  Every conv
is conv-BN-ReLU.  22.0M parameters at 100 classes (22.3M in the paper's CIFAR-100 table).
"""
import torch
import torch.nn as nn


def conv(in_planes, planes, kernel_size, stride=1, padding=None):
    """Conv-BN-ReLU; ``kernel_size`` may be a pair, padding defaults to 'same'."""
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    padding = (kh // 2, kw // 2) if padding is None else padding
    return nn.Sequential(nn.Conv2d(in_planes, planes, (kh, kw), stride, padding, bias=False),
                         nn.BatchNorm2d(planes), nn.ReLU(inplace=True))


class Branches(nn.Module):
    """Apply every branch to the input and concatenate the results along channels."""

    def __init__(self, *branches):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x):
        return torch.cat([branch(x) for branch in self.branches], 1)


class Split(nn.Module):
    """``stem`` followed by parallel ``heads`` whose outputs are concatenated (InceptionE)."""

    def __init__(self, stem, *heads):
        super().__init__()
        self.stem = stem
        self.heads = Branches(*heads)

    def forward(self, x):
        return self.heads(self.stem(x))


def avg_pool_conv(in_planes, planes):
    return nn.Sequential(nn.AvgPool2d(3, 1, 1), conv(in_planes, planes, 1))


def inception_a(in_planes, pool_planes):
    """1x1; 1x1-5x5; 1x1-3x3-3x3; avg pool-1x1.  Output 224 + pool_planes channels."""
    return Branches(
        conv(in_planes, 64, 1),
        nn.Sequential(conv(in_planes, 48, 1), conv(48, 64, 5)),
        nn.Sequential(conv(in_planes, 64, 1), conv(64, 96, 3), conv(96, 96, 3)),
        avg_pool_conv(in_planes, pool_planes))


def inception_b(in_planes):
    """Grid reduction: 3x3/2; 1x1-3x3-3x3/2; max pool/2.  Output in_planes + 480 channels."""
    return Branches(
        conv(in_planes, 384, 3, 2, 0),
        nn.Sequential(conv(in_planes, 64, 1), conv(64, 96, 3), conv(96, 96, 3, 2, 0)),
        nn.MaxPool2d(3, 2))


def inception_c(in_planes, c7):
    """Factorised 7x7: 1x1; 1x1-1x7-7x1; 1x1-(7x1-1x7)x2; avg pool-1x1.  Output 768 channels."""
    return Branches(
        conv(in_planes, 192, 1),
        nn.Sequential(conv(in_planes, c7, 1), conv(c7, c7, (1, 7)), conv(c7, 192, (7, 1))),
        nn.Sequential(conv(in_planes, c7, 1), conv(c7, c7, (7, 1)), conv(c7, c7, (1, 7)),
                      conv(c7, c7, (7, 1)), conv(c7, 192, (1, 7))),
        avg_pool_conv(in_planes, 192))


def inception_d(in_planes):
    """Grid reduction: 1x1-3x3/2; 1x1-1x7-7x1-3x3/2; max pool/2.  Output in_planes + 512."""
    return Branches(
        nn.Sequential(conv(in_planes, 192, 1), conv(192, 320, 3, 2, 0)),
        nn.Sequential(conv(in_planes, 192, 1), conv(192, 192, (1, 7)), conv(192, 192, (7, 1)),
                      conv(192, 192, 3, 2, 0)),
        nn.MaxPool2d(3, 2))


def inception_e(in_planes):
    """Expanded filter bank: 1x1; 1x1-(1x3|3x1); 1x1-3x3-(1x3|3x1); avg pool-1x1.  Output 2048."""
    return Branches(
        conv(in_planes, 320, 1),
        Split(conv(in_planes, 384, 1), conv(384, 384, (1, 3)), conv(384, 384, (3, 1))),
        Split(nn.Sequential(conv(in_planes, 448, 1), conv(448, 384, 3)),
              conv(384, 384, (1, 3)), conv(384, 384, (3, 1))),
        avg_pool_conv(in_planes, 192))


class InceptionV3(nn.Module):
    def __init__(self, num_classes=10, in_channels=3):
        super().__init__()
        self.features = nn.Sequential(
            conv(in_channels, 32, 3), conv(32, 32, 3), conv(32, 64, 3), conv(64, 80, 1), conv(80, 192, 3),
            inception_a(192, 32), inception_a(256, 64), inception_a(288, 64),
            inception_b(288),
            inception_c(768, 128), inception_c(768, 160), inception_c(768, 160), inception_c(768, 192),
            inception_d(768),
            inception_e(1280), inception_e(2048),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5))
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


def inceptionv3(num_classes=10, in_channels=3):
    """Inception-v3 without the auxiliary classifier."""
    return InceptionV3(num_classes, in_channels)
