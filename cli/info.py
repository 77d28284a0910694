"""`dlcpu info`: version, build, OpenMP, threads, CPU features and the ISA path in use."""
from rich.table import Table

from .. import cpu
from ._output import JsonFlag, emit_json, out


def info(as_json: JsonFlag = False):
    """Version, build, OpenMP, threads, CPU features and the ISA path in use."""
    data = cpu.info()
    if as_json:
        emit_json(data)
        return
    table = Table(show_header=False, title="dlcpu info")
    for key, value in data.items():
        if key == "features":
            value = " ".join(f"{k}{'' if v else '(no)'}" for k, v in value.items())
        elif key == "format_kernels":
            value = "; ".join(f"{k}: {v or 'no kernel yet'}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(value)
        table.add_row(key, str(value))
    out.print(table)

