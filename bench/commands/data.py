"""``curvbench data``: download, verify and cache the data sets; show what is cached.

curvbench data download cifar10                # cifar100, mnist, fmnist, or a problem name
curvbench data download mnist --data-dir D     # another directory (also: $CURVBENCH_DATA)
curvbench data status                          # what is cached where
"""

from __future__ import annotations

import argparse
import sys


def _download(args: argparse.Namespace) -> int:
    from problems.data import datasets
    from problems.data.errors import DataError

    status = 0
    names: list[str] = []
    for name in args.names:
        try:
            info = datasets.dataset_info(name)
        except DataError as err:
            print(f"curvbench data: error: {err}", file=sys.stderr)
            return 2
        if info.name not in names:
            names.append(info.name)
    for name in names:
        try:
            path = datasets.download(
                name, args.data_dir, force=args.force, base_url=args.url, progress=not args.quiet
            )
        except DataError as err:
            print(f"curvbench data: error: {name}: {err}", file=sys.stderr)
            status = 1
            continue
        info = _marker(name, args.data_dir) or {}
        print(
            f"{name}: cached {info.get('n_train')} train + {info.get('n_test')} test images "
            f"in {path} ({_checksums(info)})"
        )
    return status


def _marker(name: str, data_dir: str | None) -> dict | None:
    from problems.data import fetch

    return fetch.read_marker(name, data_dir)


def _checksums(info: dict) -> str:
    """Describe the verified md5(s) a cache marker records."""
    if "archive_md5" in info:
        return f"archive md5 {info['archive_md5']}"
    return "md5 " + ", ".join(f"{f} {m}" for f, m in sorted(info.get("file_md5s", {}).items()))


def _official(name: str, info: dict) -> bool:
    from problems.data import cifar, mnist

    if name in cifar.DATASETS:
        return info.get("archive_md5") == cifar.DATASETS[name].md5
    spec = mnist.DATASETS[name]
    return info.get("file_md5s") == dict(zip(mnist.FILES, spec.md5s))


def _status(args: argparse.Namespace) -> int:
    from problems.data import datasets, fetch

    print(f"data directory: {fetch.data_dir(args.data_dir)}")
    for name in datasets.DATASETS:
        info = _marker(name, args.data_dir)
        if info is None:
            print(f"  {name:9s} missing   (get it: curvbench data download {name})")
            continue
        official = "official" if _official(name, info) else "NOT the official files"
        print(
            f"  {name:9s} cached    {info['n_train']} train + {info['n_test']} test, "
            f"{info['cache_bytes'] / 2**20:.0f} MiB, {_checksums(info)} ({official})"
        )
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``curvbench data`` and its subcommands."""
    parser = subparsers.add_parser(
        "data",
        help="download, verify and cache CIFAR-10/100, MNIST, Fashion-MNIST; show the cache",
        description=(
            "Manage the data sets (cifar10, cifar100, mnist, fmnist). The data directory is "
            "--data-dir, else $CURVBENCH_DATA, else $XDG_CACHE_HOME/curvbench (default "
            "~/.cache/curvbench)."
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
            "Download the official files (CIFAR's python-version archive, MNIST's four IDX "
            "files), verify their md5, parse them into uint8 tensors and cache them as one file "
            "per data set. Files already in the data directory under their official names are "
            "verified and used offline."
        ),
    )
    dl.add_argument(
        "names",
        nargs="+",
        metavar="NAME",
        help="cifar10, cifar100, mnist, fmnist, or a problem name such as mnist_logreg",
    )
    dl.add_argument("--force", action="store_true", help="rebuild even if a valid cache exists")
    dl.add_argument(
        "--url",
        default=None,
        help="base URL of the files (default $CURVBENCH_CIFAR_URL / $CURVBENCH_MNIST_URL / "
        "$CURVBENCH_FMNIST_URL or the official one)",
    )
    dl.add_argument("--quiet", action="store_true", help="no progress bar")
    dl.set_defaults(func=_download)

    st = sub.add_parser("status", parents=[common], help="show which data sets are cached")
    st.set_defaults(func=_status)

    parser.set_defaults(func=lambda _args: (parser.print_help(), 2)[1])
    return parser
