"""Dense ViT and ModSquadViT checkpoints -> ModSquadViT state dicts, and the checks
that stop a checkpoint which does not fit from loading silently.

Dense checkpoints (mmpretrain ``VisionTransformer`` keys, timm/DeiT or MAE keys,
torchvision ``vit_*`` keys) are *upcycled*: patch/position embeddings, attention and
norms are copied; each MLP expert takes a slice of the dense MLP's hidden units
(wrapping round, so experts as wide as the MLP are copies); each attention head-expert
takes a dense head's query and output projections, and the shared key/value head is
the mean of the dense heads (as in multi-query uptraining). Routers and task
embeddings stay freshly initialised.
"""
import re
from typing import Dict, List, Sequence, Tuple

import torch
from mmpretrain.models.utils import resize_pos_embed

from mod_squad.moe import RoutedLayer

TIMM_TO_MMPRETRAIN = (
    (r'^patch_embed\.proj\.', 'patch_embed.projection.'),
    (r'^blocks\.(\d+)\.norm1\.', r'layers.\1.ln1.'),
    (r'^blocks\.(\d+)\.norm2\.', r'layers.\1.ln2.'),
    (r'^blocks\.(\d+)\.attn\.', r'layers.\1.attn.'),
    (r'^blocks\.(\d+)\.mlp\.fc1\.', r'layers.\1.ffn.layers.0.0.'),
    (r'^blocks\.(\d+)\.mlp\.fc2\.', r'layers.\1.ffn.layers.1.'),
    (r'^norm\.', 'ln1.'),
    (r'^fc_norm\.', 'ln2.'),
)
# torchvision ``VisionTransformer``: the same layout as mmpretrain's (qkv stacked as
# [q; k; v], heads contiguous), other names; ``mlp.linear_1/2`` are the names of
# torchvision < 0.14 checkpoints.
TORCHVISION_TO_MMPRETRAIN = (
    (r'^conv_proj\.', 'patch_embed.projection.'),
    (r'^class_token$', 'cls_token'),
    (r'^encoder\.pos_embedding$', 'pos_embed'),
    (r'^encoder\.layers\.encoder_layer_(\d+)\.ln_1\.', r'layers.\1.ln1.'),
    (r'^encoder\.layers\.encoder_layer_(\d+)\.ln_2\.', r'layers.\1.ln2.'),
    (r'^encoder\.layers\.encoder_layer_(\d+)\.self_attention\.in_proj_(weight|bias)$',
     r'layers.\1.attn.qkv.\2'),
    (r'^encoder\.layers\.encoder_layer_(\d+)\.self_attention\.out_proj\.',
     r'layers.\1.attn.proj.'),
    (r'^encoder\.layers\.encoder_layer_(\d+)\.mlp\.(0|linear_1)\.',
     r'layers.\1.ffn.layers.0.0.'),
    (r'^encoder\.layers\.encoder_layer_(\d+)\.mlp\.(3|linear_2)\.',
     r'layers.\1.ffn.layers.1.'),
    (r'^encoder\.ln\.', 'ln1.'),
)
# Tensors of a routed layer with the expert axis first (stacked experts) or last
# (per-task router outputs, running MI statistics), relative to the layer.
STACKED_EXPERTS = re.compile(r'(^|\.)(experts\.(w1|b1|w2|b2)|q_proj|q_bias|o_proj)$')
PER_EXPERT_ROUTING = re.compile(r'^(router\.(weight|bias|noise_weight)\.[^.]+|'
                                r'aux_loss\.mi_running)$')
# Below this share of the model's weights (by elements) a checkpoint "does not match":
# routers, task embeddings and position embeddings of another size are a few percent.
MIN_FILLED = 0.5
DENSE_INIT_HINT = ("A dense ViT checkpoint (mmpretrain, timm/DeiT/MAE or torchvision "
                   "keys) is converted and upcycled into the experts by the backbone's "
                   "init_cfg=dict(type='Pretrained', checkpoint=...), not by load_from, "
                   "tools/test.py, --resume or load_checkpoint.")
KEY_FORMATS_HINT = ("ModSquadViT's init_cfg reads mmpretrain ViT keys "
                    "(layers.0.attn.qkv.weight), timm/DeiT/MAE keys "
                    "(blocks.0.attn.qkv.weight), torchvision keys "
                    "(encoder.layers.encoder_layer_0.self_attention.in_proj_weight) and "
                    "ModSquadViT keys, optionally under 'state_dict', 'model' or "
                    "'module' and a 'backbone.' prefix.")
EXPAND_HINT = ("load_from, tools/test.py, --resume and load_checkpoint need the same "
               "counts: build the model with the checkpoint's num_experts / "
               "num_attn_experts, or start from a checkpoint with fewer experts through "
               "the backbone's init_cfg=dict(type='Pretrained', checkpoint=..., "
               "expand_experts=True) (new experts copy existing ones).")


def _unwrap(checkpoint: dict) -> Dict[str, torch.Tensor]:
    """The backbone's tensors of a checkpoint, without wrapper prefixes."""
    for key in ('state_dict', 'model', 'module'):
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    state_dict = {k[len('module.'):] if k.startswith('module.') else k: v
                  for k, v in checkpoint.items()}
    if any(k.startswith('backbone.') for k in state_dict):
        state_dict = {k[len('backbone.'):]: v for k, v in state_dict.items()
                      if k.startswith('backbone.')}
    return state_dict


def _rename(state_dict: Dict[str, torch.Tensor],
            rules: Sequence[Tuple[str, str]]) -> Dict[str, torch.Tensor]:
    """Keys renamed by the (pattern, replacement) ``rules`` (to mmpretrain names)."""
    renamed = {}
    for key, value in state_dict.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        renamed[key] = value
    return renamed


def _upcycle_mlp(dense: Dict[str, torch.Tensor], prefix: str, moe) -> Dict[str, torch.Tensor]:
    """Dense ``ffn.layers`` weights -> stacked expert weights of an MoE MLP."""
    fc1_w = dense.pop(f'{prefix}.layers.0.0.weight')  # (F, C)
    fc1_b = dense.pop(f'{prefix}.layers.0.0.bias')  # (F, )
    fc2_w = dense.pop(f'{prefix}.layers.1.weight')  # (C, F)
    fc2_b = dense.pop(f'{prefix}.layers.1.bias')  # (C, )
    num_experts, _, hidden = moe.experts.w1.shape
    units = (torch.arange(num_experts)[:, None] * hidden +
             torch.arange(hidden)) % fc1_w.shape[0]  # (E, H) hidden units
    return {
        f'{prefix}.experts.w1': fc1_w[units].transpose(1, 2),  # (E, C, H)
        f'{prefix}.experts.b1': fc1_b[units],  # (E, H)
        f'{prefix}.experts.w2': fc2_w[:, units].permute(1, 2, 0),  # (E, H, C)
        f'{prefix}.experts.b2': fc2_b.expand(num_experts, -1).clone(),  # (E, C)
    }


def _upcycle_attention(dense: Dict[str, torch.Tensor], prefix: str,
                       moa, num_heads: int) -> Dict[str, torch.Tensor]:
    """Dense ``attn.qkv``/``attn.proj`` weights -> MoA head-experts."""
    qkv_w = dense.pop(f'{prefix}.qkv.weight')  # (3C, C)
    qkv_b = dense.pop(f'{prefix}.qkv.bias', None)  # (3C, )
    proj_w = dense.pop(f'{prefix}.proj.weight')  # (C, C)
    proj_b = dense.pop(f'{prefix}.proj.bias')  # (C, )
    C = proj_w.shape[0]
    head_dims = C // num_heads
    if moa.head_dims != head_dims:
        raise ValueError(
            f'{prefix}: a dense attention upcycles into head experts of its own head '
            f'width C / heads = {head_dims}, but this ModSquadViT has '
            f'attn_head_dims={moa.head_dims}. Use attn_head_dims=None to start from a '
            f'dense checkpoint, or train this layout from scratch.')
    num_experts = moa.q_proj.shape[0]
    heads = torch.arange(num_experts) % num_heads
    q_w, k_w, v_w = qkv_w.view(3, num_heads, head_dims, C)
    out = {
        f'{prefix}.q_proj': q_w[heads].transpose(1, 2),  # (E, C, hd)
        f'{prefix}.kv_proj.weight': torch.cat([k_w.mean(0), v_w.mean(0)]),  # (2hd, C)
        # proj columns of head h -> (E, hd, C)
        f'{prefix}.o_proj': proj_w.view(C, num_heads, head_dims)[:, heads].permute(1, 2, 0),
        f'{prefix}.o_bias': proj_b,
    }
    if qkv_b is not None:
        q_b, k_b, v_b = qkv_b.view(3, num_heads, head_dims)
        out[f'{prefix}.q_bias'] = q_b[heads]  # (E, hd)
        out[f'{prefix}.kv_proj.bias'] = torch.cat([k_b.mean(0), v_b.mean(0)])
    return out


def _match_experts(state_dict: Dict[str, torch.Tensor], target: Dict[str, torch.Tensor],
                   expand_experts: bool) -> None:
    """Check (or expand, in place) the expert count of stacked expert tensors."""
    for key, value in list(state_dict.items()):
        if key not in target or not STACKED_EXPERTS.search(key):
            continue
        have, want = value.shape[0], target[key].shape[0]
        if have == want:
            continue
        if have > want or not expand_experts:
            raise ValueError(
                f'Checkpoint tensor {key} has {have} experts but the model has '
                f'{want}. Pass expand_experts=True to grow a checkpoint with fewer '
                'experts (new experts copy existing ones); shrinking is not supported.')
        state_dict[key] = value[torch.arange(want) % have].clone()


def convert_to_mod_squad(checkpoint: dict, model, expand_experts: bool = False,
                         name: str = 'The checkpoint') -> Tuple[dict, str]:
    """Turn a checkpoint into a state dict for ``model`` (a ModSquadViT).

    Args:
        checkpoint (dict): A loaded checkpoint or state dict.
        model (ModSquadViT): The model to fill.
        expand_experts (bool): Let a checkpoint with fewer experts fill the model
            (the extra experts copy existing ones).
        name (str): The checkpoint's file, for the error messages.

    Raises:
        ValueError: if the converted tensors fill less than :data:`MIN_FILLED` of the
            model's weights, or a checkpoint has another number of experts (more, or
            fewer without ``expand_experts``).

    Returns:
        (state_dict, description of the source format). Tensors whose shape still
        differs from the model's (e.g. routers of other tasks) are left out, so
        ``load_state_dict(strict=False)`` reports them as missing.
    """
    state_dict = _unwrap(checkpoint)
    if any(k.startswith('blocks.') for k in state_dict):
        state_dict, source = _rename(state_dict, TIMM_TO_MMPRETRAIN), 'timm/DeiT/MAE ViT'
    elif any(k.startswith('encoder.layers.encoder_layer_') for k in state_dict):
        state_dict = _rename(state_dict, TORCHVISION_TO_MMPRETRAIN)
        source = 'torchvision ViT'
    elif any('.experts.' in k for k in state_dict):
        source = 'ModSquadViT'
    else:
        source = 'mmpretrain ViT'

    num_heads = model.arch_settings['num_heads']
    for i, layer in enumerate(model.layers):
        if layer.is_moe_mlp and f'layers.{i}.ffn.layers.0.0.weight' in state_dict:
            state_dict.update(_upcycle_mlp(state_dict, f'layers.{i}.ffn', layer.ffn))
        if layer.is_moa and f'layers.{i}.attn.qkv.weight' in state_dict:
            state_dict.update(
                _upcycle_attention(state_dict, f'layers.{i}.attn', layer.attn, num_heads))

    target = model.state_dict()
    _match_experts(state_dict, target, expand_experts)
    if 'pos_embed' in state_dict:
        state_dict['pos_embed'] = _resize_pos_embed(state_dict['pos_embed'], model)
    mismatched: List[str] = [
        k for k, v in state_dict.items() if k in target and v.shape != target[k].shape
    ]
    for key in mismatched:
        del state_dict[key]
    check_filled(state_dict, model, f'{name} (read as a {source} checkpoint)',
                 KEY_FORMATS_HINT)
    return state_dict, source


def _resize_pos_embed(pos_embed: torch.Tensor, model) -> torch.Tensor:
    """(1, extra + h*w, C) of the checkpoint -> the model's token grid."""
    extra = model.num_extra_tokens
    ckpt_extra = pos_embed.shape[1] - int(pos_embed.shape[1]**0.5)**2
    if ckpt_extra > extra:  # drop the cls token's embedding
        pos_embed = pos_embed[:, ckpt_extra - extra:]
    side = int((pos_embed.shape[1] - extra)**0.5)
    if (side, side) == tuple(model.patch_resolution):
        return pos_embed
    return resize_pos_embed(pos_embed, (side, side), model.patch_resolution,
                            model.interpolate_mode, extra)


def check_filled(state_dict: Dict[str, torch.Tensor], model, source: str,
                 hint: str) -> None:
    """Raise a ValueError naming ``source`` if ``state_dict`` fills less than
    :data:`MIN_FILLED` of ``model``'s weights (by elements) in name and shape."""
    target = model.state_dict()
    filled = [k for k, v in target.items()
              if k in state_dict and state_dict[k].shape == v.shape]
    share = (sum(target[k].numel() for k in filled) /
             sum(v.numel() for v in target.values()))
    if share >= MIN_FILLED:
        return
    unmatched = [k for k in state_dict if k not in filled]
    found = (f'its unmatched keys look like {unmatched[:4]}' if unmatched else
             'it has no other key')
    raise ValueError(
        f"{source} fills only {share:.0%} of the ModSquadViT's weights ({len(filled)} "
        f'of {len(target)} tensors match in name and shape); {found}. {hint}')


def _check_layout(state_dict: Dict[str, torch.Tensor], model, prefix: str) -> None:
    """Dense attention/MLP tensors where ``model`` has mixtures, or the reverse."""
    dense_in_moe, moe_in_dense = [], []
    for i, layer in enumerate(model.layers):
        for part, is_moe, dense_key, moe_key in (
                ('attn', layer.is_moa, 'qkv.weight', 'q_proj'),
                ('ffn', layer.is_moe_mlp, 'layers.0.0.weight', 'experts.w1')):
            part = f'layers.{i}.{part}'
            if is_moe and f'{part}.{dense_key}' in state_dict:
                dense_in_moe.append(prefix + part)
            if not is_moe and f'{part}.{moe_key}' in state_dict:
                moe_in_dense.append(prefix + part)
    if dense_in_moe:
        raise ValueError(f'The checkpoint has dense layers where this ModSquadViT has '
                         f'mixtures of experts: {dense_in_moe}. {DENSE_INIT_HINT}')
    if moe_in_dense:
        raise ValueError(f'The checkpoint has mixtures of experts where this '
                         f'ModSquadViT has dense layers: {moe_in_dense}. Build the '
                         "model with the checkpoint's moe_layers.")


def _checkpoint_experts(state_dict: Dict[str, torch.Tensor], layer: str) -> int:
    """Experts of the routed layer named ``layer`` in a checkpoint (0: none there):
    its expert stacks' count, else its routers' widest (a continual model's old
    tasks' routers are narrower than the layer)."""
    stacks, routers = 0, 0
    for key, value in state_dict.items():
        name = key[len(layer) + 1:]
        if not key.startswith(f'{layer}.') or value.dim() == 0:
            continue
        if STACKED_EXPERTS.match(name):
            stacks = stacks or value.shape[0]
        elif PER_EXPERT_ROUTING.match(name):
            routers = max(routers, value.shape[-1])
    return stacks or routers


def _check_expert_counts(state_dict: Dict[str, torch.Tensor], model,
                         prefix: str) -> None:
    """Routed layers whose expert count differs between checkpoint and model."""
    differ = []
    for name, module in model.named_modules():
        if isinstance(module, RoutedLayer):
            have = _checkpoint_experts(state_dict, name)
            if have and have != module.num_experts:
                differ.append(f'{prefix}{name} has {have} experts in the checkpoint, '
                              f'{module.num_experts} in the model')
    if differ:
        more = f' (and {len(differ) - 2} more)' if len(differ) > 2 else ''
        raise ValueError(f"The checkpoint's expert counts differ from this "
                         f"ModSquadViT's: {'; '.join(differ[:2])}{more}. {EXPAND_HINT}")


def check_state_dict(state_dict: Dict[str, torch.Tensor], model, prefix: str) -> None:
    """Raise a ValueError if the tensors of ``state_dict`` under ``prefix`` cannot
    load into ``model`` (a ModSquadViT) as they are: dense layers where the model
    has mixtures (or the reverse), other expert counts, or (almost) none of the
    model's weights. Called by ``ModSquadViT._load_from_state_dict``, so it guards
    every path that loads a state dict (``load_from``, ``load_checkpoint``,
    ``--resume``), whatever the backbone's prefix in the whole model."""
    own = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    _check_layout(own, model, prefix)
    _check_expert_counts(own, model, prefix)
    source = f'The checkpoint (keys under {prefix!r})' if prefix else 'The checkpoint'
    check_filled(own, model, source, DENSE_INIT_HINT)
