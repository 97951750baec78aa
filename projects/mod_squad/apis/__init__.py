"""Inference with a multi-task model: every task's prediction and pictures of its
predictions and routing. Above :mod:`mod_squad.models` and :mod:`mod_squad.engine`;
``tools/demo.py`` and ``tools/analysis_tools/routing_map.py`` are its command lines."""
from .multi_task_inferencer import MultiTaskInferencer, load_image, pred_to_dict
from .routing_map import RoutingRecorder, draw_routing_map, routing_maps

__all__ = ['MultiTaskInferencer', 'load_image', 'pred_to_dict', 'RoutingRecorder',
           'draw_routing_map', 'routing_maps']
