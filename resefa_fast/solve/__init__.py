"""The solver paths of DESIGN.md §2 in torch ops: ``general`` (one region, any background), ``bulk`` (many regions,
complement background, shared eigenbasis) and their shared pieces in ``common``. The float64 oracle is
:mod:`resefa_fast.reference`."""
