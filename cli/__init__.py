"""The dlcpu command (installed as dlcpu.cli)."""
