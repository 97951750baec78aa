"""Generate the bundled synthetic classification, detection and segmentation
data (see :mod:`mod_squad.datasets.synthetic`).

Example:
    python tools/dataset_converters/make_synthetic.py --out data/synthetic
"""
import argparse
import inspect

from mod_squad.datasets.synthetic import GENERATORS, generate_all

# Flag of a ``generate_<task>`` keyword: ``--<task>-<name>``, where the name
# is looked up here or is the keyword with dashes.
FLAG_NAMES = dict(num_train='train', num_val='val', img_size='size')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Generate the synthetic cls/det/seg dataset.')
    parser.add_argument('--out', default='data/synthetic', help='output root')
    parser.add_argument('--seed', type=int, default=0, help='random seed')
    for task, generate in GENERATORS.items():
        for key, param in inspect.signature(generate).parameters.items():
            if key in ('out_dir', 'seed', 'log'):
                continue
            name = FLAG_NAMES.get(key, key.replace('_', '-'))
            parser.add_argument(
                f'--{task}-{name}',
                type=int,
                metavar='N',
                dest=f'{task}.{key}',
                help=f'{key} (default: {param.default})')
    parser.add_argument(
        '--force',
        action='store_true',
        help='regenerate even if meta.json records the same options')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    options = {task: {} for task in GENERATORS}
    for dest, value in vars(args).items():
        if '.' in dest and value is not None:
            task, key = dest.split('.')
            options[task][key] = value
    meta = generate_all(
        args.out, seed=args.seed, force=args.force, log=print, **options)
    for task, summary in meta['summary'].items():
        print(f"{task}: {summary['train']} train / {summary['val']} val, "
              f"{meta['options'][task]['img_size']} px, "
              f"{len(summary['classes'])} classes -> {args.out}/{task}")


if __name__ == '__main__':
    main()
