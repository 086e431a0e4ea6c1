"""The application layer's shared pieces: command-line options and the programs' model loader
(`options`), and how an error becomes one line (`errors`). The programs (`surgsam2.cli`,
`surgsam2.commands`, `surgsam2.pipelines`, `surgsam2.bench`) build on it; the library never
imports it."""
