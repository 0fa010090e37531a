"""Self-supervised methods as LightningModules over the shared backbone API."""

from selfsup.methods.base import SSLMethod, StepOutput
from selfsup.methods.cvrl import CVRL
from selfsup.methods.pixpro import PixPro
from selfsup.methods.rotnet import RotNet
from selfsup.methods.simclr import SimCLR
from selfsup.methods.simmim import SimMIM
from selfsup.methods.swav import SwAV

__all__ = ["SSLMethod", "StepOutput", "CVRL", "PixPro", "RotNet", "SimCLR", "SimMIM", "SwAV"]
