"""ray_conductor: a learned conductor that writes LLM workflows, served and trained on Ray."""

__version__ = "0.1.0"
