"""provision: provision machines for local LLM inference."""

__version__ = "0.1.0"
