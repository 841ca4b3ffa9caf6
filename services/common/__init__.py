"""Shared bootstrap of every Rapport service: settings, logging, errors, interceptors, health."""
