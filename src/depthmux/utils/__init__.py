"""Small shared utilities (level 0): atomic checkpoints (:mod:`~depthmux.utils.checkpoint`), the run-folder
layout of both training loops (:mod:`~depthmux.utils.run_folder`), seeding and RNG state
(:mod:`~depthmux.utils.seed`), declared FLOP accounting (:mod:`~depthmux.utils.flops`), checks of
numeric settings (:mod:`~depthmux.utils.checks`), progress bars of long commands (:mod:`~depthmux.utils.progress`)."""
