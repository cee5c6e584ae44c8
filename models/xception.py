"""Xception (Chollet 2017, "Deep Learning with Depthwise Separable Convolutions") for 32x32 inputs,
with the module names and forward pass of the DLDR reference code (from weiaicunzai/pytorch-cifar100).

Entry flow: 3x3 convs of 32 and 64 channels (no stride), then three residual blocks of separable
convs with 128, 256 and 728 channels; the first two end in a 3x3/2 max pool and have a biased
1x1/2 conv-BN shortcut, the third a 3x3/1 max pool and a 1x1/1 shortcut.  Middle flow: 8 blocks of
three ReLU-separable conv-BN layers of 728 channels with identity shortcuts.  Exit flow: a 728-1024
reduction block, separable convs of 1536 and 2048 channels, global pool and FC.  21.0M parameters
at 100 classes.

As in the reference, the in-place ReLU that opens the residual branch of the entry blocks 2-3 and
of the middle blocks also rectifies the input seen by the shortcut: those blocks compute
``residual(relu(x)) + shortcut(relu(x))``; the exit block's shortcut takes the unrectified input.
"""
import torch.nn as nn


class SeperableConv2d(nn.Module):
    """Depthwise 3x3 then pointwise 1x1 conv, both without bias (the reference's spelling)."""

    def __init__(self, in_planes, planes):
        super().__init__()
        self.depthwise = nn.Conv2d(in_planes, in_planes, 3, padding=1, groups=in_planes, bias=False)
        self.pointwise = nn.Conv2d(in_planes, planes, 1, bias=False)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


def sep_stack(widths, relu_first=True, inplace=True, relu_last=False):
    """[ReLU] SepConv-BN (ReLU SepConv-BN)* [ReLU] through ``widths``."""
    layers = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        if i > 0 or relu_first:
            layers.append(nn.ReLU(inplace=inplace))
        layers += [SeperableConv2d(a, b), nn.BatchNorm2d(b)]
    return layers + [nn.ReLU(inplace=True)] if relu_last else layers


def conv_bn_relu(in_planes, planes):
    return nn.Sequential(nn.Conv2d(in_planes, planes, 3, padding=1, bias=False), nn.BatchNorm2d(planes),
                         nn.ReLU(inplace=True))


def conv_shortcut(in_planes, planes, stride):
    return nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride), nn.BatchNorm2d(planes))


class EntryFlow(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.conv1 = conv_bn_relu(in_channels, 32)
        self.conv2 = conv_bn_relu(32, 64)
        self.conv3_residual = nn.Sequential(*sep_stack((64, 128, 128), relu_first=False), nn.MaxPool2d(3, 2, 1))
        self.conv3_shortcut = conv_shortcut(64, 128, 2)
        self.conv4_residual = nn.Sequential(*sep_stack((128, 256, 256)), nn.MaxPool2d(3, 2, 1))
        self.conv4_shortcut = conv_shortcut(128, 256, 2)
        self.conv5_residual = nn.Sequential(*sep_stack((256, 728, 728)), nn.MaxPool2d(3, 1, 1))
        self.conv5_shortcut = conv_shortcut(256, 728, 1)

    def forward(self, x):
        x = self.conv2(self.conv1(x))
        for i in (3, 4, 5):
            residual = getattr(self, f'conv{i}_residual')(x)   # rectifies x in place for i = 4, 5
            x = residual + getattr(self, f'conv{i}_shortcut')(x)
        return x


class MiddleFLowBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.shortcut = nn.Sequential()
        self.conv1, self.conv2, self.conv3 = (nn.Sequential(*sep_stack((728, 728))) for _ in range(3))

    def forward(self, x):
        residual = self.conv3(self.conv2(self.conv1(x)))   # conv1 rectifies x in place
        return self.shortcut(x) + residual


class MiddleFlow(nn.Module):
    def __init__(self, blocks=8):
        super().__init__()
        self.middel_block = nn.Sequential(*[MiddleFLowBlock() for _ in range(blocks)])   # sic

    def forward(self, x):
        return self.middel_block(x)


class ExitFLow(nn.Module):
    def __init__(self):
        super().__init__()
        self.residual = nn.Sequential(*sep_stack((728, 728, 1024), inplace=False), nn.MaxPool2d(3, 2, 1))
        self.shortcut = conv_shortcut(728, 1024, 2)
        self.conv = nn.Sequential(*sep_stack((1024, 1536, 2048), relu_first=False, relu_last=True))

    def forward(self, x):
        return nn.functional.adaptive_avg_pool2d(self.conv(self.shortcut(x) + self.residual(x)), 1)


class Xception(nn.Module):
    def __init__(self, num_classes=10, in_channels=3):
        super().__init__()
        self.entry_flow = EntryFlow(in_channels)
        self.middel_flow = MiddleFlow()
        self.exit_flow = ExitFLow()
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x):
        return self.fc(self.exit_flow(self.middel_flow(self.entry_flow(x))).flatten(1))


def xception(num_classes=10, in_channels=3):
    """Xception (entry, 8x middle, exit flow)."""
    return Xception(num_classes, in_channels)
