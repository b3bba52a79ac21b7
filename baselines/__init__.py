"""Reference trainers: CM and Direct CM distillation in one loop (baselines.distill), plus the
scripts that trained the shipped digits teacher and classifier. They build on odebench rather
than copy it."""
