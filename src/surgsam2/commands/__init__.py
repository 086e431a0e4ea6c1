"""One module per ``surgsam2`` command: ``add_parser(commands)`` declares its arguments (shared
ones from `surgsam2.app.options`), ``run(args) -> exit code`` calls the library or a pipeline and
reports. `surgsam2.cli` puts them together."""

from surgsam2.commands import bench, convert_endovis, demo, evaluate, segment, synth, train, vos_inference

# In the order `surgsam2 --help` lists them.
COMMANDS = (train, demo, bench, convert_endovis, segment, evaluate, synth, vos_inference)
