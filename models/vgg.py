"""VGG with batch norm (Simonyan & Zisserman 2015), CIFAR variant as in weiaicunzai/pytorch-cifar100.

The 3x3 conv stacks of configurations A/B/D/E (each conv followed by BN and ReLU, 'M' a 2x2 max
pool) bring a 32x32 input to 512x1x1, followed by the full 512-4096-4096 classifier with dropout:
vgg11 has 28.5M parameters at 100 classes, as in the paper's CIFAR-100 table.
"""
import torch.nn as nn

_M = 'M'
_VGG11 = (64, _M, 128, _M, 256, 256, _M, 512, 512, _M, 512, 512, _M)
_VGG13 = (64, 64, _M, 128, 128, _M, 256, 256, _M, 512, 512, _M, 512, 512, _M)
_VGG16 = (64, 64, _M, 128, 128, _M, 256, 256, 256, _M, 512, 512, 512, _M, 512, 512, 512, _M)
_VGG19 = (64, 64, _M, 128, 128, _M, 256, 256, 256, 256, _M, 512, 512, 512, 512, _M,
          512, 512, 512, 512, _M)


class VGG(nn.Module):
    def __init__(self, cfg, num_classes=10, in_channels=3):
        super().__init__()
        layers, channels = [], in_channels
        for v in cfg:
            if v == _M:
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                channels = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(512, 4096), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Linear(4096, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def vgg11(num_classes=10, in_channels=3):
    """VGG-11 (configuration A) with batch norm."""
    return VGG(_VGG11, num_classes, in_channels)


def vgg13(num_classes=10, in_channels=3):
    """VGG-13 (configuration B) with batch norm."""
    return VGG(_VGG13, num_classes, in_channels)


def vgg16(num_classes=10, in_channels=3):
    """VGG-16 (configuration D) with batch norm."""
    return VGG(_VGG16, num_classes, in_channels)


def vgg19(num_classes=10, in_channels=3):
    """VGG-19 (configuration E) with batch norm."""
    return VGG(_VGG19, num_classes, in_channels)
