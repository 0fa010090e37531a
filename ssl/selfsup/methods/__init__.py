"""Self-supervised methods as LightningModules over the shared backbone API."""

from selfsup.methods.barlowtwins import BarlowTwins
from selfsup.methods.base import SSLMethod, StepOutput
from selfsup.methods.byol import BYOL
from selfsup.methods.cvrl import CVRL
from selfsup.methods.dino import DINO
from selfsup.methods.ibot import iBOT
from selfsup.methods.ijepa import IJEPA
from selfsup.methods.mae import MAE
from selfsup.methods.mocov3 import MoCoV3
from selfsup.methods.pixpro import PixPro
from selfsup.methods.rotnet import RotNet
from selfsup.methods.simclr import SimCLR
from selfsup.methods.simmim import SimMIM
from selfsup.methods.swav import SwAV
from selfsup.methods.vicreg import VICReg

__all__ = ["SSLMethod", "StepOutput", "BarlowTwins", "BYOL", "CVRL", "DINO", "iBOT", "IJEPA", "MAE", "MoCoV3",
           "PixPro", "RotNet", "SimCLR", "SimMIM", "SwAV", "VICReg"]
