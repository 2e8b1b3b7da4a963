"""Persona YAML files shipped with bonsai (loaded by :mod:`bonsai.personas`)."""
