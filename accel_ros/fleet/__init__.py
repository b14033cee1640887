"""Segmenting a fleet's recordings on a Ray cluster: one output bag per input bag, a manifest
of finished work and a Parquet scene index (`accel-ros fleet`)."""
