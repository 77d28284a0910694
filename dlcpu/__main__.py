"""`python -m dlcpu ...`: the `dlcpu` command (cli/main.py, installed as dlcpu.cli)."""
from dlcpu.cli.main import main

if __name__ == "__main__":
    main()
