"""`python -m adaq_lora.cli` is the `adaq-lora` command (grid/cli.py), for launchers that start a module:

    torchrun --nproc_per_node=8 -m adaq_lora.cli run --method adaq_lora --dataset ... --profile paper --out DIR
"""
import sys

from .grid.cli import main

if __name__ == "__main__":
    sys.exit(main())
