"""Log the trainable and total parameters of the model when training starts."""
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from terminaltables import AsciiTable

from mod_squad.models.fine_tuning import parameter_summary
from mod_squad.registry import HOOKS


@HOOKS.register_module()
class TrainableParamsHook(Hook):
    """Before training, log a table of trainable / total parameters per part of the
    model (backbone, each branch or neck and head), as the fine-tuning mode
    (``model.backbone.trainable``) and ``frozen_stages`` left them, and the totals
    as ``Trainable parameters: 1,840 / 70,288 (2.62%)``."""
    priority = 'VERY_LOW'

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        rows = parameter_summary(model)
        table = [['part', 'trainable', 'total', 'share']] + [
            [name, f'{trainable:,}', f'{total:,}', f'{100 * trainable / total:.2f}%']
            for name, trainable, total in rows]
        _, trainable, total = rows[-1]
        runner.logger.info('Parameters:\n' + AsciiTable(table).table)
        runner.logger.info(f'Trainable parameters: {trainable:,} / {total:,} '
                           f'({100 * trainable / total:.2f}%)')
