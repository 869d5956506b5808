"""Flatness measurements (Hessian spectrum, loss landscapes) and the report built from stored results."""
