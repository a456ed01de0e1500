"""The ``--slurm-*`` options of ``curvbench gridsearch run --executor slurm``.

They map onto the keywords of :class:`bench.gridsearch.slurm.SlurmExecutor`; kept apart from
``slurm.py`` so that parsing needs neither submitit nor a cluster.
"""

from __future__ import annotations

from typing import Any

from bench import options as opt


def add_slurm_arguments(parser) -> None:
    """Add the ``--slurm-*`` options of :class:`SlurmExecutor` to an argparse parser."""
    group = parser.add_argument_group("SLURM (with --executor slurm)")
    group.add_argument("--slurm-partition", default=None, help="partition (default: the cluster's)")
    group.add_argument(
        "--slurm-time",
        type=opt.positive_int,
        default=240,
        metavar="MIN",
        help="time limit per run in minutes; runs reaching it are requeued and resume (240)",
    )
    group.add_argument("--slurm-cpus", type=opt.positive_int, default=2, help="CPUs per run (2)")
    group.add_argument(
        "--slurm-gpus",
        type=opt.nonnegative_int,
        default=0,
        help="GPUs per run (0); > 0 trains on CUDA on the node (--device must agree)",
    )
    group.add_argument(
        "--slurm-mem-gb", type=opt.positive_float, default=None, help="memory per run in GB"
    )
    group.add_argument(
        "--slurm-parallel",
        type=opt.positive_int,
        default=16,
        metavar="N",
        help="at most N runs of the job array at once (16)",
    )
    group.add_argument(
        "--slurm-setup",
        action="append",
        default=[],
        metavar="LINE",
        help="shell line run before each run, e.g. 'module load cuda' (repeatable)",
    )
    group.add_argument(
        "--slurm-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra sbatch option, e.g. qos=low or account=lab (repeatable)",
    )


def slurm_options_from_args(args) -> dict[str, Any]:
    """Return :class:`SlurmExecutor` keywords from :func:`add_slurm_arguments`'s options."""
    extra = {}
    for item in args.slurm_arg:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--slurm-arg wants KEY=VALUE, got {item!r}")
        extra[key.strip().lstrip("-")] = value
    return {
        "partition": args.slurm_partition,
        "time_min": args.slurm_time,
        "cpus_per_task": args.slurm_cpus,
        "gpus_per_node": args.slurm_gpus,
        "mem_gb": args.slurm_mem_gb,
        "array_parallelism": args.slurm_parallel,
        "setup": args.slurm_setup,
        "slurm_args": extra,
    }
