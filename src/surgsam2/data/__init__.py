"""Datasets on disk (VOS layout), video readers/writers, synthetic surgical video, EndoVis converter."""
