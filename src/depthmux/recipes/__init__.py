"""End-to-end jobs (level 6): they compose components and training loops; components never import them.

* :mod:`depthmux.recipes.mux`: the RevMUX grid experiment (``depthmux mux run / train / eval / bench``);
* :mod:`depthmux.recipes.reports`: RevMUX result tables, markdown and plots;
* :mod:`depthmux.recipes.lm`: language-model train / eval / convert jobs (``depthmux lm ...``).
"""
