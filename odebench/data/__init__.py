"""Real data sets the embedded domains are built on (shipped with dependencies, never downloaded)."""
