"""The overhead benchmark (the paper's Fig. 6 and Fig. 3): a step with a quantity vs. a gradient.

    curvbench overhead --help      # or python -m bench.overhead

Modules: ``plan`` (what to time, the device's defaults), ``problem_setup`` (model, loss, batches),
``step_base`` (a timed step, the backends' base), ``backends`` (ours and BackPACK), ``peers``
(the other libraries), ``numerics`` (the numeric flags every variant runs under), ``timing``
(interleaved timer), ``memory`` (peak-memory probes), ``run`` (a whole run, resumable),
``presets`` (``--preset fig8|fig9``), ``figures`` and ``report`` (plots and REPORT.md from the
CSVs), ``paper_figures`` (Fig. 8 and Fig. 9 from the presets' CSVs), ``figure_map`` (REPORT.md's
paper-figure -> file/command map), ``support_matrix`` (which backend has which quantity),
``compare_table`` (ours vs BackPACK at N=128), ``gate`` (the CI timing gate), ``profile_step``
(where a step's time goes), ``gpu_check`` (``make gpu-check``).

Command lines (the only modules that parse arguments): ``cli`` (``curvbench overhead``) and one
``cli_<tool>`` per ``python -m`` tool: ``cli_compare_table``, ``cli_gate``, ``cli_profile_step``,
``cli_figures``, ``cli_report``, ``cli_paper_figures``.
"""
