"""Jobs that combine the model, the tracker and files, for the commands and the web app:
`segment` (one video, file/folder/camera/stream), `vos_inference` (a VOS dataset, sharded over
processes, then evaluated), `demo` (the embedded end-to-end run); `prompts` derives the
tracker's prompts from first-appearance masks."""
