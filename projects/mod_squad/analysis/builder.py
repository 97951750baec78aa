"""Build a config's model for analysis: the one builder of the analysis tools."""
from typing import Optional

import torch.nn as nn
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import MODELS, init_default_scope
from mmengine.runner import load_checkpoint


def build_model(cfg: Config,
                checkpoint: Optional[str] = None,
                device: str = 'cpu') -> nn.Module:
    """``cfg.model`` as the toolboxes' analysis tools build it: in the config's
    default scope, SyncBN reverted (one process), with the weights of
    ``checkpoint`` if given (mmengine's ``load_checkpoint``, strict), in eval mode
    on ``device``. mmpretrain keeps ``data_preprocessor`` at the config's top
    level: it is moved into the model."""
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    model_cfg = cfg.model.copy()
    if cfg.get('data_preprocessor') is not None:
        model_cfg.setdefault('data_preprocessor', cfg.data_preprocessor)
    model = revert_sync_batchnorm(MODELS.build(model_cfg))
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, map_location='cpu', strict=True)
    return model.to(device).eval()
