"""damage-smp: find and name damage in images of analogue media, pixel by pixel."""

__version__ = "0.1.0"
