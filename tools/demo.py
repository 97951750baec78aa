"""Every task's prediction for an image (or a folder of images) with a multi-task
model: per-task and composite pictures under OUT_DIR/vis, JSON under OUT_DIR/preds.

Example (the README's picture)::

    python tools/demo.py data/synthetic/det/val/000000.jpg \\
        configs/mod_squad/mod-squad_vit-demo_2k_synthetic-cls-det-seg.py \\
        work_dirs/demo/iter_2000.pth --out-dir outputs --vis-scale 3
"""
import argparse

from mod_squad.apis import MultiTaskInferencer


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Multi-task inference demo')
    parser.add_argument('inputs', help='image file or folder')
    parser.add_argument('config', help='multi-task config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--task', nargs='+', help='only these tasks (default: all)')
    parser.add_argument('--out-dir', default='outputs', help='output directory')
    parser.add_argument('--device', default=None, help='e.g. cpu, cuda:0')
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--pred-score-thr', type=float, default=0.3,
                        help='boxes drawn above this score')
    parser.add_argument('--vis-scale', type=float, default=1.,
                        help='draw on the image rescaled by this factor')
    parser.add_argument('--show', action='store_true', help='display the pictures')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    inferencer = MultiTaskInferencer(args.config, args.checkpoint, device=args.device,
                                     tasks=args.task)
    return inferencer(args.inputs, batch_size=args.batch_size, out_dir=args.out_dir,
                      pred_score_thr=args.pred_score_thr, vis_scale=args.vis_scale,
                      show=args.show)


if __name__ == '__main__':
    main()
