"""The paper's α/λ grid search (Fig. 7, the appendix learning curves and heatmaps).

    curvbench gridsearch --help

Modules: ``grid`` (runs and their ids, the paper's grids), ``store`` (the run store, locks,
status, best-setting selection), ``train`` (one resumable training run), ``jobs`` (the unit of
work every executor runs), ``executors`` (in-process, local pool), ``slurm`` (SLURM arrays via
submitit), ``figures`` (heatmaps, learning curves, REPORT.md), ``smoke`` (the end-to-end check
with a kill -9), ``steptime`` and ``augment_cost`` (per-step costs), ``deepobs_io`` (DeepOBS
result files in and out). Command lines: ``cli`` (``curvbench gridsearch``) with ``cli_slurm``
(its ``--slurm-*`` options), ``cli_augment_cost`` (``python -m bench.gridsearch.cli_augment_cost``).
"""
