"""Metrics (DAVIS J/F, Dice, EndoVis IoUs) and evaluation protocols."""
