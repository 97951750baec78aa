"""Add the MoE auxiliary losses to the losses of a stock single-task model."""
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper

from mod_squad.moe import RouterAuxLoss, collect_aux_losses
from mod_squad.registry import HOOKS


@HOOKS.register_module()
class MoEAuxLossHook(Hook):
    """Put the auxiliary losses of every MoE layer (``loss_moe_mi``,
    ``loss_moe_switch``, ``loss_moe_z``) into the loss dict of ``forward(mode='loss')``,
    where mmengine's ``parse_losses`` sums them into the optimised loss.

    Stock mmdet/mmseg/mmpretrain models call the backbone and return only their
    heads' losses; this hook wraps the model's forward (also under DDP, whose
    ``train_step`` calls the wrapped module's forward) so that a ``ModSquadViT``
    built with ``router_cfg=dict(aux_loss=...)`` trains with its losses::

        custom_hooks = [dict(type='mod_squad.MoEAuxLossHook')]
    """
    priority = 'VERY_HIGH'

    def __init__(self):
        self._handle = None

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        if not any(isinstance(m, RouterAuxLoss) for m in model.modules()):
            print_log(
                'MoEAuxLossHook: the model has no MoE auxiliary losses (give the '
                'backbone a router_cfg.aux_loss with a positive weight); nothing to '
                'add.',
                logger='current', level=30)
            return
        self._handle = model.register_forward_hook(
            self._add_aux_losses, with_kwargs=True)

    def after_train(self, runner) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @staticmethod
    def _add_aux_losses(module, args, kwargs, output):
        if kwargs.get('mode') == 'loss' and isinstance(output, dict):
            output.update(collect_aux_losses(module))
        return output
