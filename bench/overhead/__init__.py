"""The overhead benchmark (the paper's Fig. 6 and Fig. 3): a step with a quantity vs. a gradient.

    curvbench overhead --help      # or python -m bench.overhead

Modules: ``plan`` (what to time, the device's defaults), ``problem_setup`` (model, loss, batches),
``backends`` (ours and the peers), ``timing`` (interleaved timer, peak memory), ``run`` (a whole
run, resumable), ``figures`` and ``report`` (plots and REPORT.md from the CSVs), ``compare_table``
(ours vs BackPACK at N=128), ``gate`` (the CI timing gate), ``profile_step`` (where a step's time
goes), ``cli`` (``curvbench overhead``), ``presets`` (``--preset fig8|fig9``),
``paper_figures`` (Fig. 8 and Fig. 9 from the presets' CSVs), ``figure_map`` (REPORT.md's
paper-figure -> file/command map).
"""
