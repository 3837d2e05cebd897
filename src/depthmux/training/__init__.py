"""Training loops only (level 4): :mod:`depthmux.training.lm` (causal LMs: ``train_lm``),
:mod:`depthmux.training.mux` (RevMUX adapters on cached features: ``train_mux``) and
:mod:`depthmux.training.schedules` (WSD). Both loops write the same run-folder layout
(:class:`depthmux.utils.run_folder.RunFolder`) and resume exactly; end-to-end jobs are in
:mod:`depthmux.recipes`."""
