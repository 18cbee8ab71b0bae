"""backdoorlab: inject, detect and remove backdoors in non-classification vision models."""

__version__ = "0.1.0"
