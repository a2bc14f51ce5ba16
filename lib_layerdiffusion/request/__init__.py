"""What the user asks for: arguments, the method table, settings, checks, infotext, UI, API args."""
