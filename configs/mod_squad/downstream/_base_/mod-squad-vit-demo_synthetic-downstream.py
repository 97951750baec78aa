# Fine-tuning the joint demo checkpoint (bash tools/run_demo.sh ->
# work_dirs/demo/iter_2000.pth) on a classification set it never saw, shared by every
# mode of configs/mod_squad/downstream/ (README, "Downstream: which part to
# fine-tune"): the data, the schedule, the runtime and the model, the demo's stock
# classifier for one task (mmpretrain ImageClassifier, the demo's ModSquadViT with
# its 'cls' routers, ../../baselines/) with a new head for the new classes. The data:
#   python tools/dataset_converters/make_synthetic.py --dataset downstream \
#       --out data/synthetic_downstream
# 12 classes, a new outline and a new fill texture each, in hue bands three classes
# wide (colour alone gives at most 1 in 3).
_base_ = ['../../baselines/mod-squad-vit-demo_linear_617it_synthetic-cls.py']

load_from = 'work_dirs/demo/iter_2000.pth'
data_root = 'data/synthetic_downstream/cls'
classes = ('bowtie-grid', 'bowtie-rings', 'bowtie-zigzag', 'chevron-grid',
           'chevron-rings', 'chevron-zigzag', 'diamond-grid', 'diamond-rings',
           'diamond-zigzag', 'tee-grid', 'tee-rings', 'tee-zigzag')

model = dict(
    data_preprocessor=dict(num_classes=len(classes)),
    head=dict(num_classes=len(classes)))

train_dataloader = dict(
    num_workers=1, dataset=dict(data_root=data_root, classes=classes))
val_dataloader = dict(
    num_workers=1, dataset=dict(data_root=data_root, classes=classes))
test_dataloader = val_dataloader

# one schedule for every mode: warm-up, then cosine
max_iters = 500
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
optim_wrapper = dict(optimizer=dict(lr=5e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=50, end=max_iters,
         eta_min=1e-5),
]
default_hooks = dict(checkpoint=dict(interval=max_iters, save_best=None))
custom_hooks = [dict(type='TrainableParamsHook')]
