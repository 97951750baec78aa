"""Log per-task expert usage of the MoE layers and keep it in checkpoints."""
from collections import defaultdict
from typing import Dict

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from mod_squad.moe import (all_reduce_expert_usage, expert_usage_modules,
                           num_experts_used, reset_expert_usage, usage_entropy,
                           usage_share)
from mod_squad.registry import HOOKS


@HOOKS.register_module()
class ExpertUsageHook(Hook):
    """Every ``interval`` training iterations, sum the MoE layers' routing counts over
    ranks and log, per task, the mean over layers of the routing entropy (nats) and
    the share of experts used (above ``min_share`` of the tokens), as
    ``moe/<task>/entropy`` and ``moe/<task>/experts_used``, plus the task x expert
    share matrix averaged over the layers with the same number of experts. The
    counts since the start of training are saved in checkpoints
    (``checkpoint['expert_usage']``: layer name -> (T, E) tokens routed) for
    pruning and analysis.

    Args:
        interval (int): Iterations between logs. Defaults to 50.
        min_share (float): Share of a task's tokens an expert needs to count as used,
            relative to a uniform share (1 / E). Defaults to 0.1.
    """
    priority = 'LOW'

    def __init__(self, interval: int = 50, min_share: float = 0.1):
        self.interval = interval
        self.min_share = min_share
        self.total: Dict[str, torch.Tensor] = {}  # layer -> (T, E) since start

    @staticmethod
    def _model(runner):
        return runner.model.module if is_model_wrapper(runner.model) else runner.model

    def before_train(self, runner) -> None:
        reset_expert_usage(self._model(runner))

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if not self.every_n_train_iters(runner, self.interval):
            return
        model = self._model(runner)
        all_reduce_expert_usage(model)
        counts = {name: usage.counts.to('cpu', copy=True)
                  for name, usage in expert_usage_modules(model).items()}
        reset_expert_usage(model)
        if not counts:
            return
        for name, value in counts.items():
            self.total[name] = self.total[name] + value if name in self.total else value
        task_names = getattr(model, 'task_names', None) or model.backbone.task_names
        self._log(runner, task_names, counts)

    def _log(self, runner, task_names, counts: Dict[str, torch.Tensor]) -> None:
        """counts: layer name -> (T, E) tokens routed in this interval."""
        entropy, used, share = defaultdict(list), defaultdict(list), defaultdict(list)
        for layer_counts in counts.values():
            num_experts = layer_counts.shape[-1]
            layer_used = num_experts_used(layer_counts, self.min_share / num_experts)
            for t, task in enumerate(task_names):
                if layer_counts[t].sum() == 0:
                    continue
                entropy[task].append(usage_entropy(layer_counts[t]).item())
                used[task].append(layer_used[t].item() / num_experts)
                share[task, num_experts].append(usage_share(layer_counts[t]))
        for task in entropy:
            runner.message_hub.update_scalar(f'train/moe/{task}/entropy',
                                             sum(entropy[task]) / len(entropy[task]))
            runner.message_hub.update_scalar(f'train/moe/{task}/experts_used',
                                             sum(used[task]) / len(used[task]))
        rows = [
            f'{task:>8s} (E={num_experts:2d}) ' +
            ' '.join(f'{s:.2f}' for s in torch.stack(shares).mean(0).tolist())
            for (task, num_experts), shares in share.items()
        ]
        runner.logger.info('Expert share per task, mean over MoE layers:\n' +
                           '\n'.join(rows))

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self.total:
            checkpoint['expert_usage'] = dict(self.total)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self.total = dict(checkpoint.get('expert_usage', {}))
