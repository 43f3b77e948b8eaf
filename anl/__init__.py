"""anl: adaptive multi-loss weighting.

The core is :class:`AdaptiveLossBalancer`, the Adaptive Normalization Loss of Zhao et al.,
"Enhanced Accuracy and Robustness via Multi-Teacher Adversarial Distillation" (ECCV 2022),
Sec. 3.2, Eq. 6-11, whose arithmetic :mod:`anl.functional` states as pure functions.
:class:`ConstantWeights` is its fixed-weight sibling with the same interface, for baselines;
:class:`LossWeighting` is the base class of every rule. :mod:`anl.rules` holds the rules
users compare ANL with (DWA, RLW, GLS, SoftAdapt, ReLoBRaLo, uncertainty weighting, IMTL-L,
FAMO), exported here too.
"""

from anl import functional
from anl.balancer import AdaptiveLossBalancer
from anl.constant import ConstantWeights
from anl.rules import (
    FAMO,
    IMTLL,
    DynamicWeightAverage,
    GeometricLossStrategy,
    RandomLossWeighting,
    ReLoBRaLo,
    SoftAdapt,
    UncertaintyWeighting,
)
from anl.weighting import LossWeighting

__all__ = [
    "FAMO",
    "IMTLL",
    "AdaptiveLossBalancer",
    "ConstantWeights",
    "DynamicWeightAverage",
    "GeometricLossStrategy",
    "LossWeighting",
    "RandomLossWeighting",
    "ReLoBRaLo",
    "SoftAdapt",
    "UncertaintyWeighting",
    "functional",
]
__version__ = "0.2.0.dev0"
