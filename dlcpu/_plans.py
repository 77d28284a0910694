"""Plans: one typed object per plan family, backed by the C struct its driver reads.

A planner (dlcpu.conv.choose_conv_blocking, choose_weight_grad_blocking, choose_winograd_blocking,
dlcpu.gemm.choose_gemm_split, dlcpu.rnn.choose_recurrent_tiles) computes every field of its
family's struct, declared once in pyx/kernels/plans.h, and the rules that fired, then makes the
plan object.  Making it builds the struct inside the driver module's small Cython class (named in
each family's class statement), which refuses a missing field and checks every tile the driver will ask for against
the compiled tile table, so a plan the build cannot run fails here, with the tile named, and
never as an "internal error" in a kernel.  The driver reads the struct directly (no dicts).

Python reads every field back from the struct, so Python and C agree by construction;
attributes are read-only.  Each plan keeps `rules`: short "rule: reason" strings naming the
measured rule behind each choice, which `describe()` and `dlcpu bench conv --show-plan` print.
"""

from . import cpu


class Plan:
    """Base of the plan families.  A family names its Cython struct class and its title in the
    class statement: `class GemmPlan(Plan, struct=_brgemm.GemmPlanStruct, family="gemm")`."""

    struct = None
    family = "plan"
    __slots__ = ("_fields", "c", "rules")

    def __init_subclass__(cls, *, struct, family, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.struct = struct
        cls.family = family

    def __init__(self, rules=(), **fields):
        c = self.struct(fields)            # ValueError: missing field, or a tile the build lacks
        got = c.fields()
        extra = sorted(set(fields) - set(got))
        if extra:
            raise TypeError(f"{type(self).__name__}: unknown plan field(s) {', '.join(extra)} "
                            "(the struct in pyx/kernels/plans.h defines the fields)")
        object.__setattr__(self, "c", c)
        object.__setattr__(self, "rules", tuple(rules))
        object.__setattr__(self, "_fields", got)

    def __getattr__(self, name):
        try:
            return object.__getattribute__(self, "_fields")[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}") from None

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is read-only (plans are made by their choose_* function)")

    def __eq__(self, other):
        return type(self) is type(other) and self._fields == other._fields

    def __hash__(self):
        return hash((type(self).__name__, repr(sorted(self._fields.items()))))

    def as_dict(self):
        """Every field (the shape as a nested dict `s`), for JSON and tests."""
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self._fields.items()}

    @property
    def isa_name(self):
        return cpu.ISA_BY_CODE[self._fields["isa"]]

    def summary(self):
        """One line of the family's main choices (overridden per family)."""
        return ", ".join(f"{k}={v}" for k, v in self._fields.items() if k != "s")

    def describe(self):
        """The plan and the rules that fired, one line each (for --show-plan)."""
        return "\n".join([f"{self.family}: {self.summary()}"] + [f"  - {r}" for r in self.rules])

    def __repr__(self):
        return f"{type(self).__name__}({self.summary()})"
