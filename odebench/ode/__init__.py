"""PF-ODE machinery: solver specs, the drift, the reference solver, noise bank and cache."""
