"""Shared bootstrap of every Rapport service: settings, logging, errors, the handler guard, health."""
