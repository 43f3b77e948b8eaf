"""anl: adaptive multi-loss weighting.

The core is :class:`AdaptiveLossBalancer`, the Adaptive Normalization Loss of Zhao et al.,
"Enhanced Accuracy and Robustness via Multi-Teacher Adversarial Distillation" (ECCV 2022),
Sec. 3.2, Eq. 6-11. :class:`ConstantWeights` is its fixed-weight sibling with the same
interface, for baselines.
"""

from anl.balancer import AdaptiveLossBalancer, relative_weights
from anl.constant import ConstantWeights

__all__ = ["AdaptiveLossBalancer", "ConstantWeights", "relative_weights"]
__version__ = "0.1.0"
