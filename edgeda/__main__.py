"""``python -m edgeda`` (also what ``torchrun -m edgeda train ...`` runs)."""
from .cli import main

main()
