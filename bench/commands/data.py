"""``curvbench data``: download, verify and cache CIFAR; show what is cached.

curvbench data download cifar10                # or cifar100, or a problem name (cifar10_3c3d)
curvbench data download cifar100 --data-dir D  # another directory (also: $CURVBENCH_DATA)
curvbench data status                          # what is cached where
"""

from __future__ import annotations

import argparse
import sys


def _download(args: argparse.Namespace) -> int:
    from problems.data import cifar
    from problems.data.errors import DataError

    status = 0
    names: list[str] = []
    for name in args.names:
        try:
            spec = cifar.resolve_dataset(name)
        except DataError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if spec.name not in names:
            names.append(spec.name)
    for name in names:
        try:
            path = cifar.download(
                name, args.data_dir, force=args.force, base_url=args.url, progress=not args.quiet
            )
        except DataError as err:
            print(f"error: {name}: {err}", file=sys.stderr)
            status = 1
            continue
        info = cifar.read_marker(name, args.data_dir) or {}
        print(
            f"{name}: cached {info.get('n_train')} train + {info.get('n_test')} test images "
            f"in {path} (archive md5 {info.get('archive_md5')})"
        )
    return status


def _status(args: argparse.Namespace) -> int:
    from problems.data import cifar

    directory = cifar.data_dir(args.data_dir)
    print(f"data directory: {directory}")
    for name, spec in cifar.DATASETS.items():
        info = cifar.read_marker(name, args.data_dir)
        if info is None:
            print(f"  {name:9s} missing   (get it: curvbench data download {name})")
            continue
        official = "official" if info["archive_md5"] == spec.md5 else "NOT the official archive"
        print(
            f"  {name:9s} cached    {info['n_train']} train + {info['n_test']} test, "
            f"{info['cache_bytes'] / 2**20:.0f} MiB, md5 {info['archive_md5']} ({official})"
        )
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``curvbench data`` and its subcommands."""
    parser = subparsers.add_parser(
        "data",
        help="download, verify and cache CIFAR-10/100; show the cache",
        description=(
            "Manage the CIFAR data. The data directory is --data-dir, else $CURVBENCH_DATA, "
            "else $XDG_CACHE_HOME/curvbench (default ~/.cache/curvbench)."
        ),
    )
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir", default=None, metavar="DIR", help="data directory (default: see above)"
    )

    dl = sub.add_parser(
        "download",
        parents=[common],
        help="fetch, md5-verify, parse and cache data sets",
        description=(
            "Download the official python-version archive, verify its md5, parse it into uint8 "
            "tensors and cache them as one file per data set. An archive already in the data "
            "directory under its official name is verified and used offline."
        ),
    )
    dl.add_argument(
        "names",
        nargs="+",
        metavar="NAME",
        help="cifar10, cifar100, or a problem name such as cifar10_3c3d",
    )
    dl.add_argument("--force", action="store_true", help="rebuild even if a valid cache exists")
    dl.add_argument(
        "--url",
        default=None,
        help="base URL of the archives (default $CURVBENCH_CIFAR_URL or the official one)",
    )
    dl.add_argument("--quiet", action="store_true", help="no progress bar")
    dl.set_defaults(func=_download)

    st = sub.add_parser("status", parents=[common], help="show which data sets are cached")
    st.set_defaults(func=_status)

    parser.set_defaults(func=lambda _args: (parser.print_help(), 2)[1])
    return parser
