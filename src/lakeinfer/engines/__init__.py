"""Engines that run a pipeline over a data set: ``local`` (embedded, the default)."""
