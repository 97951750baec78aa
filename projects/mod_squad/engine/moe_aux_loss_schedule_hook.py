"""Ramp the weights of the MoE auxiliary losses during training."""
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from mod_squad.moe import RouterAuxLoss
from mod_squad.registry import HOOKS

WEIGHTS = ('mi_weight', 'switch_weight', 'z_weight')


@HOOKS.register_module()
class MoEAuxLossScheduleHook(Hook):
    """Scale every configured auxiliary-loss weight (mutual information, switch,
    z-loss) linearly from ``start_factor`` x to 1 x between iterations ``begin``
    and ``end``; before ``begin`` the start factor applies, after ``end`` the full
    weight. Only losses configured with a positive weight are scheduled.

    Args:
        begin (int): First iteration of the ramp. Defaults to 0.
        end (int): Iteration reaching the configured weights.
        start_factor (float): Factor at ``begin``. Defaults to 0.
    """
    priority = 'HIGH'

    def __init__(self, end: int, begin: int = 0, start_factor: float = 0.):
        if end <= begin:
            raise ValueError(f'end ({end}) must be after begin ({begin}).')
        self.begin, self.end, self.start_factor = begin, end, start_factor
        self._configs = []  # (loss config, its configured weights)

    def factor(self, iteration: int) -> float:
        progress = min(max((iteration - self.begin) / (self.end - self.begin), 0.), 1.)
        return self.start_factor + (1. - self.start_factor) * progress

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        configs = {id(m.cfg): m.cfg for m in model.modules()
                   if isinstance(m, RouterAuxLoss)}  # layers may share a config
        self._configs = [(cfg, {w: getattr(cfg, w) for w in WEIGHTS})
                         for cfg in configs.values()]

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        factor = self.factor(runner.iter)
        for cfg, weights in self._configs:
            for name, weight in weights.items():
                setattr(cfg, name, weight * factor)
