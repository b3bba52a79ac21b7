"""`odebench report`: runs side by side, ODE error set against quality (tables, plots, md/html/json).

Reports read only run directories (result.json, per_sample.safetensors, samples.png)."""
