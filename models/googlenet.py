"""GoogLeNet (Szegedy et al. 2015) for 32x32 inputs, as in the DLDR reference code.

A stem of three 3x3 conv-BN-ReLU (64, 64, 192 channels, the first two without bias), then
inception modules 3a-5b (1x1; 1x1 -> 3x3; 1x1 -> two 3x3 in place of the 5x5; 3x3 max pool ->
1x1; biased convs, each followed by BN and ReLU) with 3x3/2 max pools after the stem, 3b and 4e,
global pool, channel dropout (p=0.4) and FC.  The reference gives the BN after the first 3x3 of
the 5x5 branch an *eps* equal to its channel count (a slip kept here).  6.4M parameters at 100
classes.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn_relu(in_planes, planes, kernel_size, bias=True, eps=1e-5):
    return (nn.Conv2d(in_planes, planes, kernel_size, padding=kernel_size // 2, bias=bias),
            nn.BatchNorm2d(planes, eps=eps), nn.ReLU(inplace=True))


class Inception(nn.Module):
    def __init__(self, in_planes, n1x1, n3x3_reduce, n3x3, n5x5_reduce, n5x5, pool_proj):
        super().__init__()
        self.b1 = nn.Sequential(*conv_bn_relu(in_planes, n1x1, 1))
        self.b2 = nn.Sequential(*conv_bn_relu(in_planes, n3x3_reduce, 1), *conv_bn_relu(n3x3_reduce, n3x3, 3))
        self.b3 = nn.Sequential(*conv_bn_relu(in_planes, n5x5_reduce, 1), *conv_bn_relu(n5x5_reduce, n5x5, 3, eps=n5x5),
                                *conv_bn_relu(n5x5, n5x5, 3))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), *conv_bn_relu(in_planes, pool_proj, 1))

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


class GoogleNet(nn.Module):
    def __init__(self, num_classes=10, in_channels=3):
        super().__init__()
        self.prelayer = nn.Sequential(*conv_bn_relu(in_channels, 64, 3, bias=False),
                                      *conv_bn_relu(64, 64, 3, bias=False), *conv_bn_relu(64, 192, 3, bias=False))
        self.a3 = Inception(192, 64, 96, 128, 16, 32, 32)
        self.b3 = Inception(256, 128, 128, 192, 32, 96, 64)
        self.a4 = Inception(480, 192, 96, 208, 16, 48, 64)
        self.b4 = Inception(512, 160, 112, 224, 24, 64, 64)
        self.c4 = Inception(512, 128, 128, 256, 24, 64, 64)
        self.d4 = Inception(512, 112, 144, 288, 32, 64, 64)
        self.e4 = Inception(528, 256, 160, 320, 32, 128, 128)
        self.a5 = Inception(832, 256, 160, 320, 32, 128, 128)
        self.b5 = Inception(832, 384, 192, 384, 48, 128, 128)
        self.dropout = nn.Dropout2d(0.4)
        self.linear = nn.Linear(1024, num_classes)

    def forward(self, x):
        pool = F.max_pool2d
        x = pool(self.prelayer(x), 3, 2, 1)
        x = pool(self.b3(self.a3(x)), 3, 2, 1)
        x = pool(self.e4(self.d4(self.c4(self.b4(self.a4(x))))), 3, 2, 1)
        x = self.b5(self.a5(x))
        return self.linear(self.dropout(F.adaptive_avg_pool2d(x, 1)).flatten(1))


def googlenet(num_classes=10, in_channels=3):
    """GoogLeNet (Inception v1)."""
    return GoogleNet(num_classes, in_channels)
