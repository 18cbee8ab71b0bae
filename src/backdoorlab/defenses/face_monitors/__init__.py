"""Run-time monitors for face detectors: they score what a deployed detector sees and says."""
