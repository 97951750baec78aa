"""Top-1 expert of each image patch at one routed layer, per task, overlaid on the
image side by side.

Example (the README's picture)::

    python tools/analysis_tools/routing_map.py data/synthetic/det/val/000000.jpg \\
        configs/mod_squad/mod-squad_vit-demo_2k_synthetic-cls-det-seg.py \\
        work_dirs/demo/iter_2000.pth --layer layers.1.ffn --out docs/routing_demo.png
"""
import argparse

import mmcv

from mod_squad.apis import MultiTaskInferencer, draw_routing_map, routing_maps


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Routing picture of one layer')
    parser.add_argument('image', help='image file')
    parser.add_argument('config', help='multi-task config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--layer', default='layers.1.ffn',
                        help="routed layer, 'layers.<i>.attn' or 'layers.<i>.ffn'")
    parser.add_argument('--task', nargs='+', help='only these tasks (default: all)')
    parser.add_argument('--out', default='routing.png', help='output picture')
    parser.add_argument('--size', type=int, default=256,
                        help='shorter side of each panel')
    parser.add_argument('--device', default=None, help='e.g. cpu, cuda:0')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    inferencer = MultiTaskInferencer(args.config, args.checkpoint, device=args.device,
                                     tasks=args.task, show_progress=False)
    maps = routing_maps(inferencer, args.image, args.layer)
    num_experts = inferencer.model.backbone.routed_layers()[args.layer].num_experts
    picture = draw_routing_map(mmcv.bgr2rgb(mmcv.imread(args.image)), maps,
                               num_experts, title=args.layer, size=args.size)
    mmcv.imwrite(mmcv.rgb2bgr(picture), args.out)
    print(f'Routing picture of {args.layer} written to {args.out}')
    return picture


if __name__ == '__main__':
    main()
