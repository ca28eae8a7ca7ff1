"""Execution backends behind one interface (:class:`~.base.Backend`): Ray tasks (:mod:`.ray_tasks`) and local
threads (:mod:`.local`). Pick one by name with :class:`~odibi_ray.execution.runner.ExecutionBackend`."""
