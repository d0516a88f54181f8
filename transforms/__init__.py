"""Reusable PTransforms and DoFns of the slide and text inference pipelines."""
