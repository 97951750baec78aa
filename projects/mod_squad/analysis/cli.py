"""Command-line pieces shared by the analysis and conversion tools."""
import argparse

from mod_squad.moe import ExpertSelection


def add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    """``--threshold T | --keep-ratio R | --keep N`` (at most one), read back by
    :func:`selection_from_args`."""
    select = parser.add_mutually_exclusive_group()
    select.add_argument('--threshold', type=float,
                        help='keep an expert whose share of picks (%%) exceeds '
                        'THRESHOLD / k (default: 3, the authors\')')
    select.add_argument('--keep-ratio', type=float,
                        help='keep this ratio of each layer\'s experts, most used first')
    select.add_argument('--keep', type=int, help='keep N experts per layer')


def selection_from_args(args: argparse.Namespace) -> ExpertSelection:
    return ExpertSelection(args.threshold, args.keep_ratio, args.keep)
