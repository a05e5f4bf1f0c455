"""Per-expert cost tables as an engine cost model, the NeuPIMs importer and the four modes.

See docs/cost-tables.md.
"""

from __future__ import annotations

from sim.costs.table import CostTable, TableCost

__all__ = ["CostTable", "TableCost"]
