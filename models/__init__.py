"""Model registry: every architecture is reachable by its ``--arch`` name through :func:`get_model`.

Each entry maps a name to a constructor ``ctor(num_classes=..., in_channels=...) -> nn.Module``
for 32x32 inputs (CIFAR / MNIST padded to 32).  The table is the single source of truth:
scripts, tests and the ``--help`` text all read it.
"""
from types import MappingProxyType

from . import resnet_cifar

ARCHS = MappingProxyType({
    # CIFAR ResNets (He et al. 2016, option-A shortcuts)
    'resnet8': resnet_cifar.resnet8,
    'resnet20': resnet_cifar.resnet20,
    'resnet32': resnet_cifar.resnet32,
    'resnet44': resnet_cifar.resnet44,
    'resnet56': resnet_cifar.resnet56,
    'resnet110': resnet_cifar.resnet110,
    'resnet1202': resnet_cifar.resnet1202,
})


def available_archs():
    """Sorted list of every registered ``--arch`` name."""
    return sorted(ARCHS)


def get_model(arch, num_classes=10, in_channels=3):
    """Build ``arch`` for ``num_classes`` classes and ``in_channels`` input channels.

    Raises ``ValueError`` naming the valid choices for an unknown name.
    """
    try:
        ctor = ARCHS[arch]
    except KeyError:
        raise ValueError(f"unknown arch {arch!r}; valid names: {', '.join(available_archs())}") from None
    return ctor(num_classes=num_classes, in_channels=in_channels)
