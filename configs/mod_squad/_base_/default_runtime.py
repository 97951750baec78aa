custom_imports = dict(imports=['mod_squad'], allow_failed_imports=False)
default_scope = 'mod_squad'

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'))
model_wrapper_cfg = dict(type='MMDistributedDataParallel', find_unused_parameters=True)
log_processor = dict(by_epoch=False, window_size=50)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0)
