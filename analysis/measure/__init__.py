"""Flatness measurements of a model: functions of (model, batches) that know nothing of run directories.

`hessian` (top eigenvalues, trace, eigenvalue density), `landscape` (1D/2D filter-normalised loss
surfaces, the line between two models), and `restore` (handing the model back exactly as found).
analysis.flatness applies them to a run's stored model and writes their files.
"""
