"""Students: few-step generators scored against the teacher's reference ODE solution."""
