"""Where the workspace's shared real data lives, if anywhere (not part of the repository).

CI clones the repository next to a copy of ``shared/``; a developer's checkout has it at
``/work/shared``. Tests that need it skip with a reason when neither is there.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_CANDIDATES = (REPO.parent / "shared" / "data", Path("/work/shared/data"))
SHARED_DATA = next((p for p in _CANDIDATES if p.is_dir()), _CANDIDATES[0])
CUTS = SHARED_DATA / "flame-moe-290m-cuts"
NEUPIMS = REPO / "traces" / "neupims-decoder-bs16"  # shipped with the repository
