"""Sweeps: many debates from one YAML file, run concurrently against one engine (or several), resumable,
rated with Bradley-Terry and bootstrap intervals."""
