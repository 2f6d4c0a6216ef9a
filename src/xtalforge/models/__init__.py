"""Generative and predictive models built on the backbones (thin wrappers that own the losses)."""
