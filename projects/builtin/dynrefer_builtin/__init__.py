"""The built-in model's research, on top of the core library (``dynrefer``; never the reverse, SPEC §3).

* :mod:`dynrefer_builtin.synthetic` (with ``scene_shapes``, ``scene_background``, ``scene_captions``): the
  generated-scene benchmark (SPEC §4), ``dynrefer synth`` (:mod:`dynrefer_builtin.command`, registered as a
  ``dynrefer.commands`` entry point);
* :mod:`dynrefer_builtin.scene_eval` / :mod:`dynrefer_builtin.scene_benchmark`: scoring a model on generated
  scenes (``eval/synthetic.py``);
* beside this package in ``projects/builtin/``: the training pipeline (``train_builtin.py``), the paper's ablation
  (``ablation_synthetic.py``) and the probes (``probes/``).
"""
