"""minillava: a small, exact, teachable re-implementation of LLaVA-1.5."""
