"""Inception-v4 and Inception-ResNet-v2 (Szegedy et al. 2017) for 32x32 inputs.

Both share the paper's stem (Fig. 3) with every stride removed, so that it maps 32x32 to
384x32x32 as in weiaicunzai/pytorch-cifar100, and the 35->17 reduction (Fig. 7).  The two grid
reductions then bring 32x32 to 15x15 and 8x8.

inceptionv4 (Fig. 9): 4x Inception-A, Reduction-A (k, l, m, n = 192, 224, 256, 384), 7x
Inception-B, Reduction-B, 3x Inception-C, global pool, dropout 0.2 and FC: 41.3M parameters at
100 classes, as in weiaicunzai/pytorch-cifar100.

inceptionresnetv2 (Fig. 15): 5x Inception-ResNet-A, Reduction-A (256, 256, 384, 384), 10x
Inception-ResNet-B, Reduction-B (Fig. 18), 5x Inception-ResNet-C, pool, dropout and FC.  A
residual block adds its branches' linear 1x1 projection, scaled by 0.1-0.2 as the paper
suggests, to the identity and applies ReLU.  The paper's figures give projection widths (1154,
2048) that do not match the block inputs (1152, 2144); here the projection keeps the input width.
30.5M parameters at 100 classes (weiaicunzai's version, with 1x1-conv shortcuts and BN after
every addition, has 65.4M).
"""
import torch.nn as nn
import torch.nn.functional as F

from .inception_v3 import Branches, Split, avg_pool_conv, conv


def stem(in_channels):
    """Fig. 3 without strides: 3x3 convs (32, 32, 64), then three concatenations -> 384."""
    return nn.Sequential(
        conv(in_channels, 32, 3), conv(32, 32, 3), conv(32, 64, 3),
        Branches(nn.MaxPool2d(3, 1, 1), conv(64, 96, 3)),
        Branches(nn.Sequential(conv(160, 64, 1), conv(64, 96, 3)),
                 nn.Sequential(conv(160, 64, 1), conv(64, 64, (7, 1)), conv(64, 64, (1, 7)),
                               conv(64, 96, 3))),
        Branches(conv(192, 192, 3), nn.MaxPool2d(3, 1, 1)))


def reduction_a(in_planes, k, l, m, n):
    """Fig. 7: max pool/2; 3x3/2 (n); 1x1 (k)-3x3 (l)-3x3/2 (m).  Output in_planes + n + m."""
    return Branches(nn.MaxPool2d(3, 2), conv(in_planes, n, 3, 2, 0),
                    nn.Sequential(conv(in_planes, k, 1), conv(k, l, 3), conv(l, m, 3, 2, 0)))


def inception_a(in_planes):
    """Fig. 4: avg pool-1x1 (96); 1x1 (96); 1x1 (64)-3x3 (96); 1x1 (64)-3x3-3x3 (96).  Output 384."""
    return Branches(avg_pool_conv(in_planes, 96), conv(in_planes, 96, 1),
                    nn.Sequential(conv(in_planes, 64, 1), conv(64, 96, 3)),
                    nn.Sequential(conv(in_planes, 64, 1), conv(64, 96, 3), conv(96, 96, 3)))


def inception_b(in_planes):
    """Fig. 5: avg pool-1x1 (128); 1x1 (384); 1x1-1x7-7x1 (192, 224, 256);
    1x1-1x7-7x1-1x7-7x1 (192, 192, 224, 224, 256).  Output 1024."""
    return Branches(
        avg_pool_conv(in_planes, 128), conv(in_planes, 384, 1),
        nn.Sequential(conv(in_planes, 192, 1), conv(192, 224, (1, 7)), conv(224, 256, (7, 1))),
        nn.Sequential(conv(in_planes, 192, 1), conv(192, 192, (1, 7)), conv(192, 224, (7, 1)),
                      conv(224, 224, (1, 7)), conv(224, 256, (7, 1))))


def reduction_b(in_planes):
    """Fig. 8: max pool/2; 1x1 (192)-3x3/2 (192); 1x1-1x7-7x1 (256, 256, 320)-3x3/2 (320)."""
    return Branches(
        nn.MaxPool2d(3, 2, 1), nn.Sequential(conv(in_planes, 192, 1), conv(192, 192, 3, 2)),
        nn.Sequential(conv(in_planes, 256, 1), conv(256, 256, (1, 7)), conv(256, 320, (7, 1)),
                      conv(320, 320, 3, 2)))


def inception_c(in_planes):
    """Fig. 6: avg pool-1x1 (256); 1x1 (256); 1x1 (384)-(1x3|3x1) (256 each);
    1x1-1x3-3x1 (384, 448, 512)-(1x3|3x1) (256 each).  Output 1536."""
    return Branches(
        avg_pool_conv(in_planes, 256), conv(in_planes, 256, 1),
        Split(conv(in_planes, 384, 1), conv(384, 256, (1, 3)), conv(384, 256, (3, 1))),
        Split(nn.Sequential(conv(in_planes, 384, 1), conv(384, 448, (1, 3)), conv(448, 512, (3, 1))),
              conv(512, 256, (1, 3)), conv(512, 256, (3, 1))))


class InceptionV4(nn.Module):
    def __init__(self, num_classes=10, in_channels=3):
        super().__init__()
        self.features = nn.Sequential(
            stem(in_channels),
            *[inception_a(384) for _ in range(4)], reduction_a(384, 192, 224, 256, 384),
            *[inception_b(1024) for _ in range(7)], reduction_b(1024),
            *[inception_c(1536) for _ in range(3)],
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2))
        self.fc = nn.Linear(1536, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


class InceptionResidual(nn.Module):
    """``relu(x + scale * conv1x1(concat(branches(x))))``; ``width`` is the concatenation's."""

    def __init__(self, planes, width, scale, *branches):
        super().__init__()
        self.branches = Branches(*branches)
        self.project = nn.Conv2d(width, planes, 1)
        self.scale = scale

    def forward(self, x):
        return F.relu(x + self.scale * self.project(self.branches(x)))


def inception_resnet_a(planes):
    """Fig. 16: 1x1 (32); 1x1-3x3 (32, 32); 1x1-3x3-3x3 (32, 48, 64)."""
    return InceptionResidual(
        planes, 128, 0.17, conv(planes, 32, 1),
        nn.Sequential(conv(planes, 32, 1), conv(32, 32, 3)),
        nn.Sequential(conv(planes, 32, 1), conv(32, 48, 3), conv(48, 64, 3)))


def inception_resnet_b(planes):
    """Fig. 17: 1x1 (192); 1x1-1x7-7x1 (128, 160, 192)."""
    return InceptionResidual(
        planes, 384, 0.1, conv(planes, 192, 1),
        nn.Sequential(conv(planes, 128, 1), conv(128, 160, (1, 7)), conv(160, 192, (7, 1))))


def inception_resnet_c(planes):
    """Fig. 19: 1x1 (192); 1x1-1x3-3x1 (192, 224, 256)."""
    return InceptionResidual(
        planes, 448, 0.2, conv(planes, 192, 1),
        nn.Sequential(conv(planes, 192, 1), conv(192, 224, (1, 3)), conv(224, 256, (3, 1))))


def inception_resnet_reduction_b(in_planes):
    """Fig. 18: max pool/2; 1x1-3x3/2 (256, 384); 1x1-3x3/2 (256, 288); 1x1-3x3-3x3/2 (256, 288, 320)."""
    return Branches(
        nn.MaxPool2d(3, 2, 1),
        nn.Sequential(conv(in_planes, 256, 1), conv(256, 384, 3, 2)),
        nn.Sequential(conv(in_planes, 256, 1), conv(256, 288, 3, 2)),
        nn.Sequential(conv(in_planes, 256, 1), conv(256, 288, 3), conv(288, 320, 3, 2)))


class InceptionResNetV2(nn.Module):
    def __init__(self, num_classes=10, in_channels=3):
        super().__init__()
        b, c = 384 + 384 + 384, 1152 + 384 + 288 + 320
        self.features = nn.Sequential(
            stem(in_channels),
            *[inception_resnet_a(384) for _ in range(5)], reduction_a(384, 256, 256, 384, 384),
            *[inception_resnet_b(b) for _ in range(10)], inception_resnet_reduction_b(b),
            *[inception_resnet_c(c) for _ in range(5)],
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2))
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


def inceptionv4(num_classes=10, in_channels=3):
    """Inception-v4."""
    return InceptionV4(num_classes, in_channels)


def inceptionresnetv2(num_classes=10, in_channels=3):
    """Inception-ResNet-v2."""
    return InceptionResNetV2(num_classes, in_channels)
