# Full fine-tuning: every parameter of the demo's backbone and the new head trains
# (the baseline of the other modes).
_base_ = ['./_base_/mod-squad-vit-demo_synthetic-downstream.py']
