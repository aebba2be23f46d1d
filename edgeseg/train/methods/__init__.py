"""Training methods by name (``method.name`` in a recipe)."""

from __future__ import annotations

from edgeseg.config import ConfigError
from edgeseg.train.methods.base import Method, MethodContext, NoParams, set_requires_grad
from edgeseg.train.methods.cyclegan_fl import CycleGANFL
from edgeseg.train.methods.dania import DANIA
from edgeseg.train.methods.domain_extension import DomainExtension
from edgeseg.train.methods.mobilenet_uda import MobileNetUDA
from edgeseg.train.methods.mutual_gan import MutualGAN
from edgeseg.train.methods.sait_segment import SaitSegment
from edgeseg.train.methods.sait_translate import SaitTranslate
from edgeseg.train.methods.source_only import SourceOnly

METHODS: dict[str, type[Method]] = {m.name: m for m in (SourceOnly, MobileNetUDA, MutualGAN, DANIA,
                                                    CycleGANFL, DomainExtension, SaitTranslate,
                                                    SaitSegment)}


def get_method(name: str) -> type[Method]:
    """The method class of ``method.name``; a `ConfigError` (one line) for an unknown one."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"method.name: unknown method {name!r}; one of "
                          f"{', '.join(sorted(METHODS))}") from None


__all__ = ["METHODS", "Method", "MethodContext", "NoParams", "get_method", "set_requires_grad"]
