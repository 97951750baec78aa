# Joint classification + detection (RetinaNet) + segmentation (UPerNet) on the
# bundled synthetic data (tools/dataset_converters/make_synthetic.py), with a small
# ModSquadViT, on CPU in minutes. Every foreign component is built in its own scope.
# The full recipe on real data is its sibling,
# mod-squad_vit-b-p16_mask-rcnn_upernet_8xb64-2-2-160k_in1k-coco-ade20k.py.
_base_ = [
    './_base_/models/mod-squad_vit-demo_retinanet_upernet.py',
    './_base_/datasets/synthetic_cls-det-seg.py',
    './_base_/schedules/schedule_2k.py', './_base_/default_runtime.py'
]

default_hooks = dict(checkpoint=dict(save_best='cls/accuracy/top1', rule='greater'))
# tools/train.py --auto-scale-lr: the lr above is for 32 cls images per iteration
# (1 process); with one task per iteration the batch counted is the cls one.
auto_scale_lr = dict(enable=False, base_batch_size=32, task='cls')
