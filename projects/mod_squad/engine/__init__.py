from .checkpoint_loader import load_from_local
from .moe_aux_loss_hook import MoEAuxLossHook

__all__ = ['load_from_local', 'MoEAuxLossHook']
