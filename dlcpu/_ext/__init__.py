"""Compiled extensions (pyx/<name>.pyx).  Only dlcpu/<name>.py imports dlcpu._ext.<name>."""
