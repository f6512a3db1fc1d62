"""Shared test support: builders, process helpers, attack apps, DICOM factories."""
