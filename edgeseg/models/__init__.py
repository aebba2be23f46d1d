"""Segmentation networks: MobileNet-v2/ResNet backbones, DeepLabv3+/DeepLabv2 heads."""

from .aspp import ASPP, conv_bn_relu, resize_to
from .deeplabv2 import DeepLabV2Head
from .deeplabv3plus import DeepLabV3PlusHead
from .mobilenetv2 import MobileNetV2Backbone, make_divisible, mobilenet_v2
from .pretrained import LoadReport, PretrainedWeightsError, load_pretrained_backbone
from .registry import BACKBONES, HEADS, SegmentationModel, build_model
from .resnet import ResNetBackbone, resnet50, resnet101

__all__ = [
    "ASPP",
    "BACKBONES",
    "HEADS",
    "DeepLabV2Head",
    "DeepLabV3PlusHead",
    "LoadReport",
    "MobileNetV2Backbone",
    "PretrainedWeightsError",
    "ResNetBackbone",
    "SegmentationModel",
    "build_model",
    "conv_bn_relu",
    "load_pretrained_backbone",
    "make_divisible",
    "mobilenet_v2",
    "resize_to",
    "resnet101",
    "resnet50",
]
