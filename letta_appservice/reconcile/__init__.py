"""Timer → Letta's agent list → Matrix: the scheduler runs passes, the reconciler plans them
(plan, pure) and applies them (apply: puppets, rooms, invites; space: the space; drift: what
people changed in Matrix that the next pass must repair)."""
