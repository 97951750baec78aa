"""Log per-task expert usage of the MoE layers and keep it in checkpoints."""
import logging
from collections import defaultdict
from typing import Dict

import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper

from mod_squad.moe import (all_reduce_expert_usage, expert_usage_modules,
                           num_experts_used, reset_expert_usage, usage_entropy,
                           usage_share)
from mod_squad.moe.stats import RUNNING_MOMENTUM
from mod_squad.registry import HOOKS


@HOOKS.register_module()
class ExpertUsageHook(Hook):
    """Every ``interval`` training iterations, sum the MoE layers' routing counts over
    ranks and log, per task, the mean over layers of the routing entropy (nats) and
    the share of experts used (above ``min_share`` of the tokens), as
    ``moe/<task>/entropy`` and ``moe/<task>/experts_used``, plus the task x expert
    share matrix averaged over the layers with the same number of experts.

    ``statistic`` picks what is logged: ``'counts'``, the picks of the interval, or
    ``'running_share'``, the layers' running average of each training forward's share
    of picks (momentum ``momentum`` per forward of the task, the authors' pruning
    statistic, see :class:`mod_squad.moe.ExpertUsage`), averaged over ranks at each
    interval. Checkpoints keep both (layer name -> (T, E)), for pruning and analysis:
    ``checkpoint['expert_usage']``, the picks since the start of training, and
    ``checkpoint['expert_usage_running']``, the running share, which resuming
    restores into the layers.

    Args:
        interval (int): Iterations between logs. Defaults to 50.
        min_share (float): Share of a task's tokens an expert needs to count as used,
            relative to a uniform share (1 / E). Defaults to 0.1.
        statistic (str): ``'counts'`` (default) or ``'running_share'``.
        momentum (float): Weight of the old running share at each training forward.
            Defaults to 0.95, the authors'; closer to 1 averages over more
            iterations.
    """
    priority = 'LOW'

    def __init__(self,
                 interval: int = 50,
                 min_share: float = 0.1,
                 statistic: str = 'counts',
                 momentum: float = RUNNING_MOMENTUM):
        if statistic not in ('counts', 'running_share'):
            raise ValueError("statistic must be 'counts' or 'running_share', got "
                             f'{statistic!r}.')
        if not 0. <= momentum < 1.:
            raise ValueError(f'momentum must be in [0, 1), got {momentum}.')
        self.interval = interval
        self.min_share = min_share
        self.statistic = statistic
        self.momentum = momentum
        self.total: Dict[str, torch.Tensor] = {}  # layer -> (T, E) since start
        self.running: Dict[str, torch.Tensor] = {}  # layer -> (T, E) from a checkpoint

    @staticmethod
    def _model(runner):
        return runner.model.module if is_model_wrapper(runner.model) else runner.model

    def before_train(self, runner) -> None:
        model = self._model(runner)
        reset_expert_usage(model)
        for name, usage in expert_usage_modules(model).items():
            usage.momentum = self.momentum
            if name not in self.running:
                continue
            saved = self.running[name]
            if saved.shape != usage.running_share.shape:
                # e.g. load_from a checkpoint that a new task grew (continual
                # learning): its usage belongs to another set of tasks and experts
                print_log(
                    f"checkpoint['expert_usage_running'][{name!r}] has shape "
                    f'{tuple(saved.shape)}, but the layer has (tasks, experts) = '
                    f'{tuple(usage.running_share.shape)}: its running usage starts '
                    'afresh.', logger='current', level=logging.WARNING)
                continue
            usage.running_share.copy_(saved)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if not self.every_n_train_iters(runner, self.interval):
            return
        model = self._model(runner)
        all_reduce_expert_usage(model)
        modules = expert_usage_modules(model)
        counts = {name: usage.counts.to('cpu', copy=True)
                  for name, usage in modules.items()}
        reset_expert_usage(model, running=False)
        if not counts:
            return
        for name, value in counts.items():
            self.total[name] = self.total[name] + value if name in self.total else value
        task_names = getattr(model, 'task_names', None) or model.backbone.task_names
        logged = counts if self.statistic == 'counts' else self._running(model)
        self._log(runner, task_names, logged)

    @staticmethod
    def _running(model) -> Dict[str, torch.Tensor]:
        """Layer name -> (T, E) running share, on the CPU."""
        return {name: usage.running_share.to('cpu', copy=True)
                for name, usage in expert_usage_modules(model).items()}

    def _log(self, runner, task_names, counts: Dict[str, torch.Tensor]) -> None:
        """counts: layer name -> (T, E) picks of this interval, or running shares."""
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
        runner.logger.info(f'Expert share per task ({self.statistic}), mean over MoE '
                           'layers:\n' +
                           '\n'.join(rows))

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self.total:
            checkpoint['expert_usage'] = dict(self.total)
        running = self._running(self._model(runner))
        if running:
            checkpoint['expert_usage_running'] = running

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self.total = dict(checkpoint.get('expert_usage', {}))
        self.running = dict(checkpoint.get('expert_usage_running', {}))
