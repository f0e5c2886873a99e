"""Linear probing: how linearly separable the classes are in a feature space (Fig. 6, Table 5a's Acc.).

- :mod:`.settings`: :class:`ProbeSettings`, every knob of a probe run (recorded in ``probe.json``).
- :mod:`.solver`: MAE's probe (BatchNorm without affine + linear) fitted full-batch or by SGD.
- :mod:`.lbfgs`: the batched L-BFGS that solves many small probes at once.
- :mod:`.protocol`: weight decay chosen on a stratified validation split, refit, mean ± std over seeds.
- :mod:`.run`: every checkpoint x inference mask ratio x depth, ``probe.json`` and ``probe.csv``;
  :mod:`.plot`: Figure 6.
"""
from .lbfgs import batched_lbfgs
from .plot import plot_probe
from .protocol import ProbeResult, check_labels, linear_probe, linear_probes, stratified_split
from .run import checkpoint_record, pixel_probe, probe_checkpoints, write_probe_results
from .settings import ProbeSettings
from .solver import LinearProbe, Problem, accuracy, fit_probes

__all__ = ["LinearProbe", "Problem", "ProbeResult", "ProbeSettings", "accuracy", "batched_lbfgs", "check_labels",
           "checkpoint_record", "fit_probes", "linear_probe", "linear_probes", "pixel_probe", "plot_probe",
           "probe_checkpoints", "stratified_split", "write_probe_results"]
