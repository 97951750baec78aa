"""Dense ViT and ModSquadViT checkpoints -> ModSquadViT state dicts.

Dense checkpoints (mmpretrain ``VisionTransformer`` keys, timm/DeiT or MAE keys) are
*upcycled*: patch/position embeddings, attention and norms are copied; each MLP expert
takes a slice of the dense MLP's hidden units (wrapping round, so experts as wide as the
MLP are copies); each attention head-expert takes a dense head's query and output
projections, and the shared key/value head is the mean of the dense heads (as in
multi-query uptraining). Routers and task embeddings stay freshly initialised.
"""
import re
from typing import Dict, List, Tuple

import torch
from mmpretrain.models.utils import resize_pos_embed

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


def _rename_timm(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    renamed = {}
    for key, value in state_dict.items():
        for pattern, replacement in TIMM_TO_MMPRETRAIN:
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
    """Check (or expand, in place) the expert count of MoE tensors."""
    for key, value in list(state_dict.items()):
        if key not in target or '.experts.' not in key and not re.search(
                r'\.(q_proj|q_bias|o_proj)$', key):
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


def convert_to_mod_squad(checkpoint: dict, model,
                         expand_experts: bool = False) -> Tuple[dict, str]:
    """Turn a checkpoint into a state dict for ``model`` (a ModSquadViT).

    Returns:
        (state_dict, description of the source format). Tensors whose shape still
        differs from the model's (e.g. routers of other tasks) are left out, so
        ``load_state_dict(strict=False)`` reports them as missing.
    """
    state_dict = _unwrap(checkpoint)
    if any(k.startswith('blocks.') for k in state_dict):
        state_dict, source = _rename_timm(state_dict), 'timm/DeiT/MAE ViT'
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
