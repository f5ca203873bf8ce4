"""``fploopd run --http``: the web page, its JSON API, /healthz and /metrics, served by uvicorn in a
thread of the supervisor's process. It reads the journal with connections of its own and changes
jobs through the same code as the commands (``fploopd.daemon.control``, ``fploopd.daemon.submit``),
so it never blocks the supervisor's loop, and the loop never waits for it."""
