"""Running a DAG: :func:`~.runner.run` plans the run and drives :class:`~.scheduler.Scheduler` (the driver
loop, one state machine per node) over a backend (:mod:`.backends`: Ray tasks or local threads); each attempt
runs in a worker through :mod:`.attempt`, and the outcome is a :class:`~.result.RunResult`."""
