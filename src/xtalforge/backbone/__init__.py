"""Network backbones (the inner networks that know nothing about the noise process)."""

from xtalforge.backbone.crysformer import Crysformer, CrysformerConfig

__all__ = ["Crysformer", "CrysformerConfig"]
