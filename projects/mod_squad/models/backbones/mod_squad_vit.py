"""ModSquadViT: a vision transformer whose blocks are task-routed mixtures of experts."""
import math
import warnings
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks.transformer import PatchEmbed
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from mmengine.model.weight_init import trunc_normal_
from mmengine.runner.checkpoint import CheckpointLoader
from mmpretrain.models.utils import resize_pos_embed

from mod_squad.moe import (MoAttention, RoutedLayer, RouterConfig, check_task_names,
                           routed_layers)
from mod_squad.moe.adapter import AdapterConfig
from mod_squad.registry import register_model
from ..continual import (ContinualConfig, check_continual, grow_checkpoint,
                         grow_counts, narrow_old_routers)
from ..fine_tuning import TrainableConfig, apply_trainable
from .mod_squad_block import ModSquadBlock
from .vit_checkpoint import check_state_dict, convert_to_mod_squad
from .vit_outputs import ViTOutputs


@register_model()
class ModSquadViT(BaseModule):
    """Mod-Squad vision transformer: MoE MLPs and mixtures of attention heads routed
    per task (Chen et al., CVPR 2023; "An Efficient General-Purpose Modular Vision
    Model via Multi-Task Heterogeneous Training", 2023).

    Every mixture has one router per task; the task of a forward is given by the
    ``task`` argument or :meth:`set_task` (the only task by default). Dense parts keep
    mmpretrain ``VisionTransformer`` parameter names, so a dense ViT checkpoint
    (mmpretrain, timm/DeiT or MAE keys) upcycles into it (``init_cfg=dict(
    type='Pretrained', checkpoint=...)``).

    Args:
        arch (str | dict): ``'tiny'``, ``'small'``, ``'base'``, ``'large'`` or a dict
            with ``embed_dims``, ``num_layers``, ``num_heads``, ``feedforward_channels``.
        task_names (Sequence[str]): Tasks with their own routers (and task embedding).
        img_size (int | tuple): Size the position embedding is stored at; any input
            size works (the embedding is interpolated).
        patch_size (int): Patch size (stride of the token grid). Defaults to 16.
        out_indices (int | Sequence[int]): Blocks whose output is returned.
        out_type (str): ``'cls_token'`` (B, C) or ``'avg_featmap'`` (B, C) for
            classification heads, ``'featmap'`` (B, C, H/16, W/16) for an external
            neck, ``'featmap_cls_token'`` [(B, C, H/16, W/16), (B, C)] for mmseg's
            ``DPTHead``, ``'pyramid'`` for strides 4/8/16/32 (B, C, H/s, W/s) from
            the built-in :class:`SimplePyramid`, ``'raw'`` (B, N, C). Shaped by
            :attr:`outputs` (:class:`ViTOutputs`); the README's table says which
            neck or head takes which.
        frozen_stages (int): As mmpretrain's ``VisionTransformer``: for n > 0 the
            stem (patch and position embeddings, cls token, and the task
            embeddings, which get the stem's depth in :meth:`get_layer_depth` too)
            and the first n blocks with all their routers stop getting gradients
            and stay in eval mode (no dropout, drop path, noisy gating or auxiliary
            losses); n = ``num_layers`` also freezes the final norm and the
            ``'avg_featmap'`` norm. -1 (default) or 0 freeze nothing.
        trainable (dict, optional): Fine-tuning mode, the fields of
            :class:`mod_squad.models.fine_tuning.TrainableConfig`: what trains, set
            at build (``requires_grad``, some experts of a stack split off), e.g.
            ``dict(mode='routers')``, ``dict(mode='top_experts', task='cls',
            top_n=4, usage='iter_2000.pth')``, ``dict(mode='experts', last=2)``,
            ``dict(mode='heads')``. None (default): everything trains.
            ``frozen_stages`` applies on top.
        continual (dict, optional): A new task for a trained model, the fields of
            :class:`mod_squad.models.continual.ContinualConfig`: ``dict(task=...,
            num_experts=M, init='fresh' | 'copy', copy_from=..., usage=...)``.
            Every routed layer gets M new experts after its counts below (the
            trained model's) and the new task a router over all of them; the old
            tasks' routers keep their width, so they compute exactly as before.
            Only the new task's routers, embedding and new experts train (it sets
            ``trainable``); a checkpoint with the old counts grows as it loads.
        moe_layers (str | dict): Which blocks hold mixtures: ``'alternate'`` (MoA on
            even blocks, MoE MLP on odd, as Mod-Squad), ``'mlp'`` (MoE MLP in every
            block), ``'none'``, or ``dict(moa=[...], mlp=[...])``.
        num_experts (int | Sequence): MLP experts per MoE MLP. Defaults to 16.
        top_k (int | Sequence): Experts per token in an MoE MLP. Defaults to 4.
        expert_hidden (int, optional): Hidden width of an MLP expert
            (default: ``feedforward_channels // top_k``, so k experts cost one MLP).
        num_attn_experts (int | Sequence, optional): Head experts per MoA
            (default: 2 x heads).
        attn_top_k (int | Sequence, optional): Heads per token in an MoA
            (default: heads).
            These four counts take one int for every mixture, or one entry per
            block (``num_layers`` entries; those of blocks without that mixture
            are ignored and may be None, None elsewhere means the default), e.g.
            for a model extracted with a different number of experts per layer.
        attn_head_dims (int, optional): Width of a MoA head expert (default: C / heads;
            the authors' ViT-B: 2 x C / heads = 128).
        router_cfg (dict, optional): :class:`mod_squad.moe.RouterConfig` fields, built
            once and shared by every routed layer (kept as :attr:`router_cfg`):
            ``hidden``, ``noisy_gating``, ``renormalize``, ``init`` (``'zeros'``
            default, or ``'trunc_normal'``), ``bias``, ``eps``, ``impl`` and
            ``aux_loss`` (:class:`mod_squad.moe.MoEAuxLossConfig` fields: mutual
            information loss form and weight, switch and z losses, ``eps``).
        inference_top_k (dict, optional): Per task, the experts per token of every
            routed layer, ``dict(det=2)``, or per layer kind,
            ``dict(det=dict(mlp=2, attn=6))`` (a kind left out keeps its built
            k); tasks left out keep the built k. See :meth:`set_compute`.
        enabled_experts (dict, optional): Per task, the experts its routers may
            choose, by block index: ``dict(det={1: [0, 3, 5, 9]})``, or
            ``{0: dict(attn=[...], mlp=[...])}`` for a block holding both
            mixtures; blocks left out enable all experts. See :meth:`set_compute`.
            From ``--cfg-options``: ``model.backbone.inference_top_k.det=2``,
            ``model.backbone.enabled_experts.det.1=[0,3,5,9]``.
        task_embed (bool | dict): A learned embedding per task added to the tokens
            before every block. True (default) means ``dict(per_block=True,
            init_std=0.)``: one vector per block (``task_embed.<task>`` (L, C)),
            zero-initialised; ``per_block=False`` gives one (C,) vector shared by all
            blocks, and ``init_std`` > 0 a normal initialisation (the authors: shared,
            std 1). False for none.
        adapter (dict, optional): :class:`mod_squad.moe.adapter.AdapterConfig`
            fields: a VMT-Adapter in parallel to the MLP of every block (or of
            ``blocks``), ``dict(type='vmt' | 'vmt_lite', dims=r, task_module=
            'scale_shift' | 'linear')``; zero-initialised, so outputs equal the
            model's without it. ``trainable=dict(mode='adapters')`` trains only
            them. None (default) for none.
        window_size (int): Window attention in all blocks but ``global_attn_indexes``
            (ViTDet); 0 for global attention everywhere. Needs ``with_cls_token=False``.
        pyramid_scales (Sequence[float]): Scales of the ``'pyramid'`` output.
        with_cp (bool): Non-reentrant activation checkpointing of every block.
        pretrained (str, optional): Checkpoint path, as mmseg's backbones take it
            (its ``EncoderDecoder`` passes ``model.pretrained`` on): the same as
            ``init_cfg=dict(type='Pretrained', checkpoint=pretrained)``.
    """
    arch_zoo = {
        'tiny': dict(embed_dims=192, num_layers=12, num_heads=3,
                     feedforward_channels=768),
        'small': dict(embed_dims=384, num_layers=12, num_heads=6,
                      feedforward_channels=1536),
        'base': dict(embed_dims=768, num_layers=12, num_heads=12,
                     feedforward_channels=3072),
        'large': dict(embed_dims=1024, num_layers=24, num_heads=16,
                      feedforward_channels=4096),
    }
    DEFAULT_INIT_CFG = [
        dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.),
        dict(type='Kaiming', layer='Conv2d', mode='fan_in', nonlinearity='linear'),
    ]
    # Published settings as data: ``ModSquadViT(**ModSquadViT.presets[name],
    # task_names=...)``, or the same keys in a config's backbone dict.
    presets = {
        # The authors' Mod-Squad ViT-B (``mtvit_taskgate_att_mlp_base_MI_twice`` in
        # their code): 24 head experts of width 128, top-12, on even blocks; 16 MLP
        # experts (hidden 768), top-4, on odd blocks; linear routers without bias
        # that start truncated-normal; one task embedding shared by the blocks
        # (std 1); batch-form MI loss 0.005 per layer.
        'mod-squad-b': dict(
            arch='base',
            moe_layers='alternate',
            num_experts=16,
            top_k=4,
            num_attn_experts=24,
            attn_top_k=12,
            attn_head_dims=128,
            task_embed=dict(per_block=False, init_std=1.),
            router_cfg=dict(
                init='trunc_normal',
                bias=False,
                aux_loss=dict(mi_weight=0.005, mi_form='batch'))),
    }

    def __init__(self,
                 arch: Union[str, dict] = 'base',
                 task_names: Sequence[str] = ('default', ),
                 img_size: Union[int, Tuple[int, int]] = 224,
                 patch_size: int = 16,
                 in_channels: int = 3,
                 out_indices: Union[int, Sequence[int]] = -1,
                 out_type: str = 'cls_token',
                 with_cls_token: bool = True,
                 final_norm: bool = True,
                 frozen_stages: int = -1,
                 trainable: Optional[dict] = None,
                 continual: Optional[dict] = None,
                 moe_layers: Union[str, dict] = 'alternate',
                 num_experts: Union[int, Sequence[Optional[int]]] = 16,
                 top_k: Union[int, Sequence[Optional[int]]] = 4,
                 expert_hidden: Optional[int] = None,
                 num_attn_experts: Union[None, int, Sequence[Optional[int]]] = None,
                 attn_top_k: Union[None, int, Sequence[Optional[int]]] = None,
                 attn_head_dims: Optional[int] = None,
                 router_cfg: Optional[dict] = None,
                 inference_top_k: Optional[dict] = None,
                 enabled_experts: Optional[dict] = None,
                 task_embed: Union[bool, dict] = True,
                 adapter: Optional[dict] = None,
                 drop_rate: float = 0.,
                 attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 qkv_bias: bool = True,
                 window_size: int = 0,
                 global_attn_indexes: Sequence[int] = (),
                 pyramid_scales: Sequence[float] = (4, 2, 1, 0.5),
                 with_cp: bool = False,
                 interpolate_mode: str = 'bicubic',
                 norm_cfg: dict = dict(type='LN', eps=1e-6),
                 pretrained: Optional[str] = None,
                 init_cfg: Optional[dict] = None):
        init_cfg = self._pretrained_init_cfg(pretrained, init_cfg)
        super().__init__(init_cfg=init_cfg or self.DEFAULT_INIT_CFG)
        self.arch_settings = self._arch_settings(arch)
        embed_dims = self.embed_dims = self.arch_settings['embed_dims']
        num_layers = self.num_layers = self.arch_settings['num_layers']
        num_heads = self.arch_settings['num_heads']
        feedforward_channels = self.arch_settings['feedforward_channels']

        self.task_names = check_task_names(task_names)
        self._task = self.task_names[0]
        if window_size > 0 and with_cls_token:
            raise ValueError('Window attention works on the patch grid only: set '
                             'with_cls_token=False with window_size > 0.')

        self.patch_embed = PatchEmbed(
            in_channels=in_channels,
            embed_dims=embed_dims,
            conv_type='Conv2d',
            kernel_size=patch_size,
            stride=patch_size,
            input_size=img_size)
        self.patch_resolution = self.patch_embed.init_out_size
        self.num_extra_tokens = int(with_cls_token)
        self.cls_token = nn.Parameter(torch.zeros(
            1, 1, embed_dims)) if with_cls_token else None
        self.interpolate_mode = interpolate_mode
        self.pos_embed = nn.Parameter(
            torch.zeros(1, self.num_extra_tokens + math.prod(self.patch_resolution),
                        embed_dims))
        self.drop_after_pos = nn.Dropout(p=drop_rate)
        # One embedding per task, by name: absent tasks get no gradient.
        self.task_embed = self._build_task_embed(task_embed, num_layers, embed_dims)

        moa_layers, mlp_layers = self._moe_layout(moe_layers, num_layers)
        moa = {
            i: dict(num_experts=e, top_k=k,
                    head_dims=attn_head_dims or embed_dims // num_heads)
            for i, (e, k) in self._expert_counts(
                moa_layers, ('num_attn_experts', num_attn_experts, 2 * num_heads),
                ('attn_top_k', attn_top_k, num_heads)).items()
        }
        moe_mlp = {
            i: dict(num_experts=e, top_k=k,
                    hidden_features=expert_hidden or feedforward_channels // k)
            for i, (e, k) in self._expert_counts(
                mlp_layers, ('num_experts', num_experts, None),
                ('top_k', top_k, None)).items()
        }
        self.continual_cfg = ContinualConfig.build(continual)
        if self.continual_cfg is not None:
            check_continual(self.continual_cfg, self.task_names, dict(
                attn={i: s['num_experts'] for i, s in moa.items()},
                mlp={i: s['num_experts'] for i, s in moe_mlp.items()}))
            if trainable is not None:
                raise ValueError('continual sets what trains (the new task\'s routers, '
                                 'embedding and new experts): remove trainable.')
            trainable = self.continual_cfg.trainable()
            moa = grow_counts(self.continual_cfg, 'attn', moa)
            moe_mlp = grow_counts(self.continual_cfg, 'mlp', moe_mlp)
        self.router_cfg = RouterConfig.build(router_cfg)
        self.adapter_cfg = AdapterConfig.build(adapter) if adapter is not None else None
        adapter_blocks = self._adapter_blocks(self.adapter_cfg)
        dpr = torch.linspace(0, drop_path_rate, num_layers).tolist()
        self.layers = nn.ModuleList(
            ModSquadBlock(
                embed_dims,
                num_heads,
                feedforward_channels,
                task_names=self.task_names,
                moa=moa.get(i),
                moe_mlp=moe_mlp.get(i),
                router_cfg=self.router_cfg,
                window_size=0 if i in global_attn_indexes else window_size,
                adapter=self.adapter_cfg if i in adapter_blocks else None,
                drop_rate=drop_rate,
                attn_drop_rate=attn_drop_rate,
                drop_path_rate=dpr[i],
                qkv_bias=qkv_bias,
                norm_cfg=norm_cfg) for i in range(num_layers))
        self.with_cp = with_cp
        self.final_norm = final_norm
        if final_norm:
            self.ln1 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.outputs = ViTOutputs(
            out_type=out_type,
            out_indices=out_indices,
            embed_dims=embed_dims,
            num_layers=num_layers,
            num_extra_tokens=self.num_extra_tokens,
            pyramid_scales=pyramid_scales,
            norm_cfg=norm_cfg)
        if not -1 <= frozen_stages <= num_layers:
            raise ValueError(f'frozen_stages={frozen_stages} out of range: -1 or 0 '
                             f'(none) to num_layers={num_layers} (all).')
        self.frozen_stages = frozen_stages
        if self.continual_cfg is not None:
            narrow_old_routers(self)
        self.trainable_cfg = TrainableConfig.build(trainable)
        self.trained_experts = apply_trainable(self, self.trainable_cfg)
        self._freeze_stages()
        self._init_compute(inference_top_k, enabled_experts)

    @staticmethod
    def _pretrained_init_cfg(pretrained: Optional[str],
                             init_cfg: Optional[dict]) -> Optional[dict]:
        """mmseg's ``pretrained`` argument as an ``init_cfg`` (mmseg's own rules)."""
        if pretrained is None:
            return init_cfg
        if init_cfg is not None:
            raise ValueError('ModSquadViT: pretrained and init_cfg cannot be set at the '
                             f'same time (pretrained={pretrained!r}); use init_cfg=dict('
                             "type='Pretrained', checkpoint=...) only.")
        if not isinstance(pretrained, str):
            raise TypeError(f'ModSquadViT: pretrained must be a str or None, got '
                            f'{type(pretrained).__name__}.')
        warnings.warn('DeprecationWarning: pretrained is deprecated, please use '
                      '"init_cfg" instead')
        return dict(type='Pretrained', checkpoint=pretrained)

    @classmethod
    def _arch_settings(cls, arch) -> dict:
        keys = {'embed_dims', 'num_layers', 'num_heads', 'feedforward_channels'}
        if isinstance(arch, str):
            if arch not in cls.arch_zoo:
                raise ValueError(f'Unknown arch {arch!r}, choose from '
                                 f'{sorted(cls.arch_zoo)} or give a dict.')
            return dict(cls.arch_zoo[arch])
        if not isinstance(arch, dict) or set(arch) != keys:
            raise ValueError(f'A custom arch must be a dict with keys {sorted(keys)}.')
        return dict(arch)

    def _build_task_embed(self, task_embed: Union[bool, dict], num_layers: int,
                          embed_dims: int) -> Optional[nn.ParameterDict]:
        """``task_embed.<task>``: (L, C) per block or (C,) shared; None if off."""
        if task_embed is False or task_embed is None:
            return None
        cfg = dict(per_block=True, init_std=0.)
        if isinstance(task_embed, dict):
            unknown = sorted(set(task_embed) - set(cfg))
            if unknown:
                raise ValueError(f'Unknown task_embed keys {unknown}; valid keys are '
                                 f'{sorted(cfg)}.')
            cfg.update(task_embed)
        elif task_embed is not True:
            raise ValueError(f'task_embed must be a bool or a dict, got {task_embed!r}.')
        self.task_embed_per_block = cfg['per_block']
        shape = (num_layers, embed_dims) if cfg['per_block'] else (embed_dims, )
        embeds = nn.ParameterDict()
        for task in self.task_names:
            embeds[task] = nn.Parameter(torch.zeros(shape))
            if cfg['init_std'] > 0:
                nn.init.normal_(embeds[task], std=cfg['init_std'])
        return embeds

    def _adapter_blocks(self, cfg: Optional[AdapterConfig]) -> set:
        """Indices of the blocks with an adapter."""
        if cfg is None:
            return set()
        if cfg.blocks is None:
            return set(range(self.num_layers))
        bad = [i for i in cfg.blocks if isinstance(i, bool) or not isinstance(i, int)
               or not -self.num_layers <= i < self.num_layers]
        if bad or not cfg.blocks:
            raise ValueError(f'adapter blocks must be block indices in [0, '
                             f'{self.num_layers}), got {list(cfg.blocks)}.')
        return {i % self.num_layers for i in cfg.blocks}

    @staticmethod
    def _moe_layout(moe_layers, num_layers) -> Tuple[set, set]:
        """(blocks with MoA, blocks with an MoE MLP)."""
        if moe_layers == 'alternate':
            return set(range(0, num_layers, 2)), set(range(1, num_layers, 2))
        if moe_layers == 'mlp':
            return set(), set(range(num_layers))
        if moe_layers == 'none':
            return set(), set()
        if isinstance(moe_layers, dict) and set(moe_layers) <= {'moa', 'mlp'}:
            return (set(i % num_layers for i in moe_layers.get('moa', ())),
                    set(i % num_layers for i in moe_layers.get('mlp', ())))
        raise ValueError(f"moe_layers must be 'alternate', 'mlp', 'none' or "
                         f"dict(moa=[...], mlp=[...]), got {moe_layers!r}.")

    def _expert_counts(self, blocks: set, experts: tuple,
                       top_k: tuple) -> Dict[int, Tuple[int, int]]:
        """{block: (E, k)} of one mixture kind; ``experts`` and ``top_k`` are
        (argument name, value, default or None)."""
        num_experts, ks = (self._per_block(blocks, *arg) for arg in (experts, top_k))
        for i in sorted(blocks):
            if ks[i] > num_experts[i]:
                raise ValueError(f'Block {i}: {top_k[0]}={ks[i]} must be in [1, '
                                 f'{experts[0]}={num_experts[i]}].')
        return {i: (num_experts[i], ks[i]) for i in sorted(blocks)}

    def _per_block(self, blocks: set, name: str, value, default) -> Dict[int, int]:
        """{block: int} of an argument given as one int or one entry per block."""
        if isinstance(value, (list, tuple)):
            if len(value) != self.num_layers:
                raise ValueError(f'{name} must be an int or a sequence of one entry '
                                 f'per block ({self.num_layers}), got {len(value)} '
                                 f'entries: {list(value)}.')
            values = {i: value[i] for i in blocks}
        else:
            values = dict.fromkeys(blocks, value)
        for i, v in values.items():
            if v is None and default is not None:
                values[i] = default
            elif isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f'Block {i}: {name} must be a positive int, got {v!r}.')
        return values

    # --- task selection -------------------------------------------------------
    @property
    def task(self) -> str:
        """The task whose routers the next forward without ``task`` uses."""
        return self._task

    def set_task(self, task: str) -> None:
        self._task = self.check_task(task)

    def check_task(self, task: str) -> str:
        """``task`` if this backbone has routers for it, else a ValueError."""
        if task not in self.task_names:
            raise ValueError(f'Unknown task {task!r}; this ModSquadViT has tasks '
                             f'{list(self.task_names)}.')
        return task

    # --- compute control -------------------------------------------------------
    def routed_layers(self) -> Dict[str, RoutedLayer]:
        """Every mixture (MoA or MoE MLP) by name, ``'layers.<i>.attn'`` or
        ``'layers.<i>.ffn'``, in block order."""
        return routed_layers(self)

    def _init_compute(self, inference_top_k: Optional[dict],
                      enabled_experts: Optional[dict]) -> None:
        """Apply the constructor's ``inference_top_k`` and ``enabled_experts``."""
        settings = dict(inference_top_k=inference_top_k or {},
                        enabled_experts=enabled_experts or {})
        examples = dict(inference_top_k='inference_top_k.det=2',
                        enabled_experts='enabled_experts.det.1=[0,3]')
        for name, value in settings.items():
            if isinstance(value, str):
                raise ValueError(
                    f'{name} got the string {value!r}: --cfg-options does not parse '
                    f'dicts; give one key per task, e.g. model.backbone.'
                    f'{examples[name]}.')
            if not isinstance(value, dict):
                raise TypeError(f'{name} must be a dict by task, got {value!r}.')
            unknown = sorted(set(value) - set(self.task_names))
            if unknown:
                raise ValueError(f'{name} names unknown tasks {unknown}; this '
                                 f'ModSquadViT has tasks {list(self.task_names)}.')
        for task in self.task_names:
            if task in settings['inference_top_k'] or task in settings['enabled_experts']:
                self.set_compute(task, settings['inference_top_k'].get(task),
                                 settings['enabled_experts'].get(task))

    def set_compute(self,
                    task: str,
                    top_k: Union[None, int, dict] = None,
                    enabled_experts: Optional[dict] = None) -> None:
        """Set how much of every mixture ``task`` runs, without retraining.

        Replaces the task's previous settings; the routers apply them in training
        and evaluation alike, and report them by ``top_k_of(task)`` and
        ``enabled_experts_of(task)``. A lower k routes each token to fewer experts,
        so the experts (MLP rows, MoA queries) really compute less; disabled experts
        are left out of the softmax and never chosen.

        Args:
            task (str): Whose routers.
            top_k (int | dict, optional): Experts per token of every mixture, or
                ``dict(mlp=..., attn=...)`` per kind (a kind left out keeps its
                built k). None: the built k (capped at the enabled experts).
            enabled_experts (dict, optional): ``{block index: expert ids}`` for the
                block's one mixture, or ``{block index: dict(attn=ids, mlp=ids)}``;
                blocks left out enable all experts. Block keys may be strings of
                digits (as ``--cfg-options`` gives them).
        """
        task = self.check_task(task)
        top_ks = self._top_k_per_kind(task, top_k)
        enabled = self._enabled_per_layer(task, enabled_experts or {})
        layers = self.routed_layers()
        before = {n: (m.top_k_of(task), m.enabled_experts_of(task))
                  for n, m in layers.items()}
        try:
            for name, layer in layers.items():
                kind = 'attn' if isinstance(layer, MoAttention) else 'mlp'
                try:
                    layer.router.set_compute(task, top_ks[kind], enabled.get(name))
                except ValueError as error:
                    raise ValueError(f'{name}: {error}') from None
        except ValueError:
            for name, (k, experts) in before.items():  # all or nothing
                layers[name].router.set_compute(task, k, experts)
            raise

    @staticmethod
    def _top_k_per_kind(task: str, top_k: Union[None, int, dict]) -> dict:
        """``{'attn': k or None, 'mlp': k or None}`` from set_compute's ``top_k``."""
        if not isinstance(top_k, dict):
            return dict(attn=top_k, mlp=top_k)
        unknown = sorted(set(top_k) - {'attn', 'mlp'})
        if unknown:
            raise ValueError(f"top_k of task {task!r} has unknown layer kinds "
                             f"{unknown}; valid kinds are ['attn', 'mlp'].")
        return dict(attn=top_k.get('attn'), mlp=top_k.get('mlp'))

    def _enabled_per_layer(self, task: str, enabled: dict) -> Dict[str, list]:
        """``{'layers.<i>.<part>': expert ids}`` from set_compute's
        ``enabled_experts``."""
        if not isinstance(enabled, dict):
            raise TypeError(f'enabled_experts of task {task!r} must be a dict by block '
                            f'index, e.g. {{1: [0, 3]}}, got {enabled!r}.')
        parts = dict(attn='attn', mlp='ffn')
        out = {}
        for key, experts in enabled.items():
            where = f'enabled_experts of task {task!r}, block {key!r}'
            if not str(key).lstrip('-').isdigit() or not (
                    -self.num_layers <= int(key) < self.num_layers):
                raise ValueError(f'{where}: keys are block indices in [0, '
                                 f'{self.num_layers}).')
            i = int(key) % self.num_layers
            layer = self.layers[i]
            kinds = [k for k, is_moe in (('attn', layer.is_moa),
                                         ('mlp', layer.is_moe_mlp)) if is_moe]
            if not isinstance(experts, dict):
                if len(kinds) != 1:
                    raise ValueError(
                        f'{where}: the block has {len(kinds)} mixtures {kinds}; give '
                        "dict(attn=[...], mlp=[...]) for a block with both."
                        if kinds else f'{where}: the block has no mixture of experts.')
                experts = {kinds[0]: experts}
            for kind, ids in experts.items():
                if kind not in kinds:
                    raise ValueError(f'{where}: no {kind!r} mixture there (it has '
                                     f'{kinds}).')
                out[f'layers.{i}.{parts[kind]}'] = ids
        return out

    # --- frozen stages ---------------------------------------------------------
    def _frozen_modules(self) -> List[nn.Module]:
        """The modules ``frozen_stages`` freezes (kept in eval mode by :meth:`train`);
        in the ``'heads'`` mode, all but ``outputs``."""
        if self.trainable_cfg.mode == 'heads':
            return [m for name, m in self.named_children() if name != 'outputs']
        if self.frozen_stages <= 0:
            return []
        modules = [self.patch_embed, self.drop_after_pos,
                   *self.layers[:self.frozen_stages]]
        if self.frozen_stages == self.num_layers:
            modules += [getattr(self, 'ln1', None), getattr(self.outputs, 'ln2', None)]
        return [m for m in modules if m is not None]

    def _freeze_stages(self) -> None:
        """Stop the gradients of the frozen stem, blocks and norms."""
        if self.frozen_stages <= 0:
            return
        params = [self.pos_embed, self.cls_token]
        if self.task_embed is not None:
            params += list(self.task_embed.values())
        for module in self._frozen_modules():
            params += list(module.parameters())
        for param in params:
            if param is not None:
                param.requires_grad = False

    def train(self, mode: bool = True) -> 'ModSquadViT':
        """As ``nn.Module.train``; the frozen stages stay in eval mode."""
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    # --- weights ---------------------------------------------------------------
    def init_weights(self):
        if isinstance(self.init_cfg, dict) and self.init_cfg.get('type') == 'Pretrained':
            self.load_pretrained(
                self.init_cfg['checkpoint'],
                expand_experts=self.init_cfg.get('expand_experts', False))
            return
        super().init_weights()
        trunc_normal_(self.pos_embed, std=0.02)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # ``ln2.*`` / ``pyramid.*`` (mmpretrain, earlier versions) -> ``outputs.``
        self.outputs.rename_owner_keys(state_dict, prefix, f'{prefix}outputs.')
        if self.continual_cfg is not None:  # a checkpoint of the old layout grows
            grow_checkpoint(self, state_dict, prefix)
        # A clear error, not a partly random model, for checkpoints that do not fit.
        check_state_dict(state_dict, self, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def load_pretrained(self, checkpoint: Union[str, dict],
                        expand_experts: bool = False) -> None:
        """Load a dense ViT (upcycled) or a ModSquadViT checkpoint.

        Args:
            checkpoint (str | dict): Path/URL of a checkpoint, or a state dict.
            expand_experts (bool): Allow a MoE checkpoint with fewer experts than
                this model; the extra experts copy existing ones.
        """
        logger = MMLogger.get_current_instance()
        name = 'The checkpoint'
        if isinstance(checkpoint, str):
            logger.info(f'ModSquadViT: loading {checkpoint}')
            name, checkpoint = checkpoint, CheckpointLoader.load_checkpoint(
                checkpoint, map_location='cpu')
        state_dict, source = convert_to_mod_squad(
            checkpoint, self, expand_experts=expand_experts, name=name)
        missing, unexpected = self.load_state_dict(state_dict, strict=False)
        logger.info(f'ModSquadViT: loaded a {source} checkpoint.')
        if missing:
            logger.warning('ModSquadViT: weights not in the checkpoint (left at '
                           f'initialisation): {missing}')
        if unexpected:
            logger.warning(f'ModSquadViT: checkpoint weights not used: {unexpected}')

    # --- forward ---------------------------------------------------------------
    def forward(self, x: torch.Tensor,
                task: Optional[str] = None) -> Tuple[torch.Tensor, ...]:
        """x: (B, 3, H, W) images; returns one output per ``out_indices`` entry
        (four for ``'pyramid'`` from one index), shaped by ``out_type``."""
        tokens, hw = self.forward_tokens(x, task, self.outputs.out_indices)
        return self.outputs(tokens, hw)

    def forward_tokens(self, x: torch.Tensor, task: Optional[str],
                       out_indices: Sequence[int]
                       ) -> Tuple[List[torch.Tensor], Tuple[int, int]]:
        """Run the blocks with ``task``'s routers.

        Args:
            x: (B, 3, H, W) images.
            task: whose routers run (None: :attr:`task`).
            out_indices: blocks whose (B, N, C) tokens are returned; the last
                block's output is after the final norm.

        Returns:
            The tokens of the chosen blocks and the patch grid (H/16, W/16).
        """
        task = self.check_task(task) if task is not None else self._task
        out_indices = [i % self.num_layers for i in out_indices]
        B = x.shape[0]
        x, hw = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1)
        x = x + resize_pos_embed(
            self.pos_embed,
            self.patch_resolution,
            hw,
            mode=self.interpolate_mode,
            num_extra_tokens=self.num_extra_tokens)
        x = self.drop_after_pos(x)
        task_embed = None
        if self.task_embed is not None:
            task_embed = self.task_embed[task]

        tokens = []
        for i, layer in enumerate(self.layers):
            if task_embed is not None:
                x = x + (task_embed[i] if self.task_embed_per_block else task_embed)
            if self.with_cp and x.requires_grad:
                x = cp.checkpoint(layer, x, task, hw, use_reentrant=False)
            else:
                x = layer(x, task, hw)
            if i == self.num_layers - 1 and self.final_norm:
                x = self.ln1(x)
            if i in out_indices:
                tokens.append(x)
        return tokens, hw

    def get_layer_depth(self, param_name: str, prefix: str = '') -> Tuple[int, int]:
        """Layer depth of a parameter for layer-wise learning-rate decay (the
        interface of mmpretrain's ``LearningRateDecayOptimWrapperConstructor``).

        Returns:
            (depth, num_depths): 0 for the stem, ``i + 1`` for block i, last for
            everything after the blocks.
        """
        num_depths = self.num_layers + 2
        if not param_name.startswith(prefix):
            return num_depths - 1, num_depths
        name = param_name[len(prefix):]
        if name in ('cls_token', 'pos_embed') or name.startswith(
                ('patch_embed', 'task_embed.')):
            return 0, num_depths
        if name.startswith('layers.'):
            return int(name.split('.')[1]) + 1, num_depths
        return num_depths - 1, num_depths
