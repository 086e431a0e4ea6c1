"""One module per ``surgsam2`` command. Its docstring is what ``surgsam2 NAME --help`` says; it
holds ``NAME`` and ``HELP`` (its line in ``surgsam2 --help``), ``add_arguments(parser)`` (its
arguments, the shared ones from `surgsam2.app.options`) and ``run(args) -> exit code`` (calls the
library or a pipeline and reports). `surgsam2.cli` puts them together."""

from surgsam2.commands import (
    average_checkpoints,
    bench,
    convert_endovis,
    demo,
    evaluate,
    export,
    segment,
    serve,
    synth,
    train,
    vos_inference,
)

# In the order `surgsam2 --help` lists them.
COMMANDS = (train, average_checkpoints, demo, bench, convert_endovis, segment, evaluate, synth, vos_inference, serve, export)
