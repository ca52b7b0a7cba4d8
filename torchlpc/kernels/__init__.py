"""Per-backend kernels. Each module is imported lazily by :mod:`torchlpc._dispatch`."""
