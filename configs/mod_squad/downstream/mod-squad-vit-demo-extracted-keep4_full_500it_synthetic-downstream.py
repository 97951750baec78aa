# Fine-tuning the EXTRACTED cls model: the extraction tool writes the demo's 'cls'
# task as a stock mmpretrain model with the 4 of 8 experts per MoE MLP and MoA the
# task uses most (the checkpoint's running usage):
#   python tools/model_converters/extract_task_model.py \
#       configs/mod_squad/mod-squad_vit-demo_2k_synthetic-cls-det-seg.py \
#       work_dirs/demo/iter_2000.pth --task cls --keep 4 \
#       --out-dir work_dirs/downstream/extract
# This is the model of its cls_extracted.py (the same backbone with 4 experts per
# layer), loaded from its cls_extracted.pth, with a new head; everything trains.
_base_ = ['./_base_/mod-squad-vit-demo_synthetic-downstream.py']

load_from = 'work_dirs/downstream/extract/cls_extracted.pth'
model = dict(backbone=dict(num_experts=4, num_attn_experts=4))
