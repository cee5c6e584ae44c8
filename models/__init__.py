"""Model registry: every architecture is reachable by its ``--arch`` name through :func:`get_model`.

Two families.  ``cifar`` (CIFAR, MNIST, synthetic): each entry of :data:`ARCHS` maps a name to a
constructor ``ctor(num_classes=..., in_channels=...) -> nn.Module`` for 32x32 inputs.  ``imagenet``
(ImageFolder data): torchvision's classification models by their torchvision name, randomly
initialised (pretrained weights are loaded by ``utils.build_model``); torchvision is imported only
when this family is asked for.  The table and torchvision's list are the single source of truth:
scripts, tests and the ``--help`` text all read them.  Note ``resnet18`` exists in both families:
the CIFAR variant (3x3 stem) and torchvision's.
"""
from types import MappingProxyType

from . import (attention, densenet, efficientnet, googlenet, inception_v3, inception_v4, mobilenet, nasnet,
               preact_resnet, resnet, resnet_cifar, resnext, senet, shufflenet, squeezenet, stochastic_depth,
               vgg, wide_resnet, xception)

ARCHS = MappingProxyType({
    # CIFAR ResNets (He et al. 2016, option-A shortcuts)
    'resnet8': resnet_cifar.resnet8,
    'resnet20': resnet_cifar.resnet20,
    'resnet32': resnet_cifar.resnet32,
    'resnet44': resnet_cifar.resnet44,
    'resnet56': resnet_cifar.resnet56,
    'resnet110': resnet_cifar.resnet110,
    'resnet1202': resnet_cifar.resnet1202,
    # CIFAR-100 zoo of the DLDR paper (names as in weiaicunzai/pytorch-cifar100)
    'vgg11': vgg.vgg11,
    'vgg13': vgg.vgg13,
    'vgg16': vgg.vgg16,
    'vgg19': vgg.vgg19,
    'resnet18': resnet.resnet18,
    'resnet34': resnet.resnet34,
    'resnet50': resnet.resnet50,
    'resnet101': resnet.resnet101,
    'resnet152': resnet.resnet152,
    'preactresnet18': preact_resnet.preactresnet18,
    'preactresnet34': preact_resnet.preactresnet34,
    'preactresnet50': preact_resnet.preactresnet50,
    'preactresnet101': preact_resnet.preactresnet101,
    'preactresnet152': preact_resnet.preactresnet152,
    'seresnet18': senet.seresnet18,
    'seresnet34': senet.seresnet34,
    'seresnet50': senet.seresnet50,
    'seresnet101': senet.seresnet101,
    'seresnet152': senet.seresnet152,
    'resnext50': resnext.resnext50,
    'resnext101': resnext.resnext101,
    'resnext152': resnext.resnext152,
    'wideresnet': wide_resnet.wideresnet,
    'stochasticdepth18': stochastic_depth.stochasticdepth18,
    'stochasticdepth34': stochastic_depth.stochasticdepth34,
    'stochasticdepth50': stochastic_depth.stochasticdepth50,
    'stochasticdepth101': stochastic_depth.stochasticdepth101,
    'densenet121': densenet.densenet121,
    'densenet161': densenet.densenet161,
    'densenet169': densenet.densenet169,
    'densenet201': densenet.densenet201,
    'googlenet': googlenet.googlenet,
    'inceptionv3': inception_v3.inceptionv3,
    'inceptionv4': inception_v4.inceptionv4,
    'inceptionresnetv2': inception_v4.inceptionresnetv2,
    'xception': xception.xception,
    'mobilenet': mobilenet.mobilenet,
    'mobilenetv2': mobilenet.mobilenetv2,
    'shufflenet': shufflenet.shufflenet,
    'shufflenetv2': shufflenet.shufflenetv2,
    'squeezenet': squeezenet.squeezenet,
    'nasnet': nasnet.nasnet,
    'efficientnet': efficientnet.efficientnet,
    'attention56': attention.attention56,
    'attention92': attention.attention92,
})


FAMILIES = ('cifar', 'imagenet')

SOME_PARAMETERS_WITHOUT_GRADIENT = frozenset(
    ['nasnet', 'attention56', 'attention92',  # layers the reference builds but never uses
     'stochasticdepth18', 'stochasticdepth34', 'stochasticdepth50', 'stochasticdepth101'])  # skipped blocks
"""Archs of which a training step can leave parameters without a gradient (DDP must look for them)."""


def available_archs(family='cifar'):
    """Sorted list of every ``--arch`` name of ``family``."""
    if family == 'imagenet':
        import torchvision
        return sorted(torchvision.models.list_models(module=torchvision.models))
    if family != 'cifar':
        raise ValueError(f'unknown model family {family!r}; valid: {", ".join(FAMILIES)}')
    return sorted(ARCHS)


def get_model(arch, num_classes=10, in_channels=3, family='cifar'):
    """Build ``arch`` of ``family`` for ``num_classes`` classes and ``in_channels`` input channels
    (torchvision models take 3).  Raises ``ValueError`` naming the valid choices for an unknown name.
    """
    valid = available_archs(family)
    if arch not in valid:
        raise ValueError(f"unknown arch {arch!r}; valid names: {', '.join(valid)}")
    if family == 'imagenet':
        if in_channels != 3:
            raise ValueError(f'torchvision models take 3 input channels, not {in_channels}')
        import torchvision
        # (no auxiliary classifiers: their train-mode tuple outputs fit no loop here)
        extra = {'aux_logits': False, 'init_weights': True} if arch in ('googlenet', 'inception_v3') else {}
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **extra)
    return ARCHS[arch](num_classes=num_classes, in_channels=in_channels)
