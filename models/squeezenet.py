"""SqueezeNet with simple bypass (Iandola et al. 2016) for 32x32 inputs.

As in the reference code: a 3x3 conv of 96 channels and 2x2 max pool replace the 7x7/2 stem;
fire modules 2-9 (1x1 squeeze, then 1x1 and 3x3 expands concatenated; every conv followed by BN
and ReLU) with max pools after fire4 and fire8 and identity bypasses around fire3, fire5 and
fire7; a 1x1 conv to the classes and global average pool make the logits.  0.78M parameters at
100 classes.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn_relu(in_planes, planes, kernel_size):
    return nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size, padding=kernel_size // 2),
                         nn.BatchNorm2d(planes), nn.ReLU(inplace=True))


class Fire(nn.Module):
    def __init__(self, in_planes, planes, squeeze_planes):
        super().__init__()
        self.squeeze = conv_bn_relu(in_planes, squeeze_planes, 1)
        self.expand_1x1 = conv_bn_relu(squeeze_planes, planes // 2, 1)
        self.expand_3x3 = conv_bn_relu(squeeze_planes, planes // 2, 3)

    def forward(self, x):
        s = self.squeeze(x)
        return torch.cat([self.expand_1x1(s), self.expand_3x3(s)], 1)


class SqueezeNet(nn.Module):
    def __init__(self, num_classes=10, in_channels=3):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn_relu(in_channels, 96, 3), nn.MaxPool2d(2))
        for i, (in_planes, planes, squeeze) in enumerate(
                [(96, 128, 16), (128, 128, 16), (128, 256, 32), (256, 256, 32),
                 (256, 384, 48), (384, 384, 48), (384, 512, 64), (512, 512, 64)], 2):
            setattr(self, f'fire{i}', Fire(in_planes, planes, squeeze))
        self.conv10 = nn.Conv2d(512, num_classes, 1)

    def forward(self, x):
        f2 = self.fire2(self.stem(x))
        f3 = self.fire3(f2) + f2
        f4 = F.max_pool2d(self.fire4(f3), 2)
        f5 = self.fire5(f4) + f4
        f6 = self.fire6(f5)
        f7 = self.fire7(f6) + f6
        f8 = F.max_pool2d(self.fire8(f7), 2)
        return F.adaptive_avg_pool2d(self.conv10(self.fire9(f8)), 1).flatten(1)


def squeezenet(num_classes=10, in_channels=3):
    """SqueezeNet v1.0 with simple bypass."""
    return SqueezeNet(num_classes, in_channels)
