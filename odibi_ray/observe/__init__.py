"""Watching runs: metrics (:mod:`.metrics`, exact and mergeable; :mod:`.run_metrics` derives a run's figures and
keeps the Ray metrics actor), the live terminal progress (:mod:`.progress`) and the HTML run report (:mod:`.report`)."""
