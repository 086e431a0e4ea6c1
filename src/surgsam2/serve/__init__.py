"""`surgsam2 serve`: the interactive web app (application layer). A local FastAPI server with one
isolated session per browser tab: open a clip, prompt objects with clicks and boxes, propagate
them with the library's tracker, export masks and prompts. The library never imports this room."""
