"""Where the code runs: the torch device and the processes of a multi-process run (library room)."""
