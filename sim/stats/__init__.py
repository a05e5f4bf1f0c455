"""Seed-parity trace statistics: per (position, layer, top-k) expert counts, the seed's gating
rule, the notebook's file tree, and the notebook's layer extension."""

# Written next to a notebook tree whose layer folders include copies (seed cell 2).
EXTENDED_MANIFEST = "extended_layers.json"
