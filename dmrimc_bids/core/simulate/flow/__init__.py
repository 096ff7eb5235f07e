"""Blood flow in capillary networks (SpinFlowSim physics): network I/O, Kirchhoff solve, spins, metrics."""
