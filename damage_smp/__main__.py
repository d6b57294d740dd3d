"""`python -m damage_smp ...` (used by torchrun: `torchrun --nproc-per-node N -m damage_smp train ...`)."""

from .cli import app

app(prog_name="damage-smp")
