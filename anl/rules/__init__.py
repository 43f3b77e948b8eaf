"""Loss-weighting rules to compare with the Adaptive Normalization Loss, on the same base.

Each rule is a :class:`anl.LossWeighting` (the interface of :class:`anl.AdaptiveLossBalancer`:
``step``, ``combine``, ``weights``, ``history``, ``state_dict``), with the same guarantees:
host and device paths, no synchronisation on the device, masking of invalid losses, absent
losses, cross-rank averaging and exact resume. ``docs/methods.md`` compares them.

- :class:`DynamicWeightAverage`: Liu et al., CVPR 2019 (DWA);
- :class:`RandomLossWeighting`: Lin et al., TMLR 2022 (RLW);
- :class:`GeometricLossStrategy`: Chennupati et al., CVPRW 2019 (GLS);
- :class:`SoftAdapt`: Heydari et al., arXiv:1912.12355;
- :class:`ReLoBRaLo`: Bischof & Kraus, arXiv:2110.09813;
- :class:`UncertaintyWeighting`: Kendall et al., CVPR 2018 (learnable log-variances);
- :class:`IMTLL`: Liu et al., ICLR 2021, the loss-balance half of IMTL (learnable scales);
- :class:`FAMO`: Liu et al., NeurIPS 2023 (a second call, ``update``, after the optimiser step).
"""

from anl.rules.dwa import DynamicWeightAverage
from anl.rules.famo import FAMO
from anl.rules.gls import GeometricLossStrategy
from anl.rules.imtl import IMTLL
from anl.rules.relobralo import ReLoBRaLo
from anl.rules.rlw import RandomLossWeighting
from anl.rules.softadapt import SoftAdapt
from anl.rules.uncertainty import UncertaintyWeighting

__all__ = [
    "FAMO",
    "IMTLL",
    "DynamicWeightAverage",
    "GeometricLossStrategy",
    "RandomLossWeighting",
    "ReLoBRaLo",
    "SoftAdapt",
    "UncertaintyWeighting",
]
