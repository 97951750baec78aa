"""TrainableParamsHook: trainable / total parameters logged when training starts."""
import logging
import re
from types import SimpleNamespace

from mmengine.logging import MMLogger

from mod_squad.engine import TrainableParamsHook
from mod_squad.models import ModSquadViT


def test_logs_trainable_and_total_parameters():
    model = ModSquadViT(
        arch=dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64),
        task_names=('a', 'b'), img_size=32, patch_size=8, num_experts=8, top_k=2,
        trainable=dict(mode='routers', tasks=['a']))
    logger = MMLogger.get_instance('test_trainable_params_hook')
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    TrainableParamsHook().before_train(SimpleNamespace(model=model, logger=logger))
    logger.removeHandler(handler)
    total = sum(p.numel() for p in model.parameters())
    per_task = 2 * 32 + (32 * 4 + 4) + (32 * 8 + 8)  # task embedding, two routers
    messages = [r.getMessage() for r in records]
    assert messages[-1] == (f'Trainable parameters: {per_task:,} / {total:,} '
                            f'({100 * per_task / total:.2f}%)')
    assert re.search(rf'\| total +\| {per_task:,} +\| {total:,} +\|', messages[0])
